import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * True when an Authorization header carries `Bearer <secret>`. Both sides are hashed first so the comparison
 * takes the same time whatever the header's length or content (timingSafeEqual needs equal lengths).
 */
export function bearerMatches(header: string | undefined, secret: string): boolean {
  const want = createHash('sha256').update(`Bearer ${secret}`).digest();
  const got = createHash('sha256').update(header ?? '').digest();
  return timingSafeEqual(want, got);
}

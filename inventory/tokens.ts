import { createHash, randomBytes } from 'node:crypto';

/**
 * Tenant bearer tokens. The token is shown once, when the tenant is created; the database keeps only its sha256.
 * 256 random bits cannot be brute-forced from a plain sha256, so no slow KDF is needed.
 */
export function newTenantToken(): string {
  return `dhm_${randomBytes(32).toString('base64url')}`;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

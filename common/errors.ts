/**
 * A configuration or input problem that the user can fix. Entry points print `message` as one line and exit
 * non-zero instead of a stack trace.
 */
export class UserFacingError extends Error {
  constructor(
    message: string,
    readonly field?: string,
  ) {
    super(message);
    this.name = 'UserFacingError';
  }
}

/** A zod error as one line that names the offending field: `policy.maxParallel: Number must be ≥ 1`. */
export function describeZodError(err: { issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }> }, prefix = ''): string {
  return err.issues
    .map((i) => {
      const path = [prefix, ...i.path.map(String)].filter((p) => p !== '').join('.');
      return path ? `${path}: ${i.message}` : i.message;
    })
    .join('; ');
}

/** The first field a zod error points at, dotted. */
export function zodErrorField(err: { issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey> }> }, prefix = ''): string | undefined {
  const first = err.issues[0];
  if (!first) return undefined;
  const path = [prefix, ...first.path.map(String)].filter((p) => p !== '').join('.');
  return path || undefined;
}

/**
 * Why a request was refused: one casing (SCREAMING_SNAKE), one list. The inventory throws these, the activities pass
 * them on as failure types (`FailureTypes` in common/migration.ts), the API puts them in its error bodies.
 */
export const REFUSAL_CODES = [
  'NOT_FOUND',
  'INSUFFICIENT_CAPACITY',
  'NO_MATCHING_SERVER',
  'CONFLICT',
  'WRONG_STATE',
  'INVALID_INPUT',
  /** A dedicated host still has VMs (running or lost), so it cannot be deleted. */
  'HOST_HAS_VMS',
  /** A dedicated host is migrating, so it cannot be deleted. */
  'HOST_MIGRATING',
  /** A tenant's quota (hosts per zone and class, VMs per host) is reached; the details name it, its limit and use. */
  'QUOTA_EXCEEDED',
] as const;
export type RefusalCode = (typeof REFUSAL_CODES)[number];
export const Refusal = Object.freeze(Object.fromEntries(REFUSAL_CODES.map((c) => [c, c]))) as { readonly [C in RefusalCode]: C };

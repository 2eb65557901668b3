import { UserFacingError, describeZodError, zodErrorField } from '../common/errors';

export const INVENTORY_ERROR_CODES = [
  'NOT_FOUND',
  'INSUFFICIENT_CAPACITY',
  'NO_MATCHING_SERVER',
  'CONFLICT',
  'WRONG_STATE',
  'INVALID_INPUT',
] as const;
export type InventoryErrorCode = (typeof INVENTORY_ERROR_CODES)[number];

/**
 * Every refusal of the inventory. `field` names the input field at fault, as a dotted path into the method's
 * input (`targetServerId`, `spec.memoryMiB`); for INSUFFICIENT_CAPACITY it is the short resource
 * (`vcpus | memoryMiB | diskGiB`, the names of the API's VM body) and `details` has `{ resource, needed, available }`.
 * Nothing was changed when one of these is thrown (the transaction rolled back).
 */
export class InventoryError extends UserFacingError {
  constructor(
    readonly code: InventoryErrorCode,
    message: string,
    field?: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message, field);
    this.name = 'InventoryError';
  }

  /** Plain data, e.g. for an ApplicationFailure's details or an HTTP error body. */
  toJSON(): { code: InventoryErrorCode; message: string; field?: string; details?: Record<string, unknown> } {
    return {
      code: this.code,
      message: this.message,
      ...(this.field !== undefined ? { field: this.field } : {}),
      ...(this.details !== undefined ? { details: this.details } : {}),
    };
  }
}

export function isInventoryError(err: unknown, code?: InventoryErrorCode): err is InventoryError {
  return err instanceof InventoryError && (code === undefined || err.code === code);
}

/** A zod failure on a method's input as INVALID_INPUT naming the first bad field. */
export function invalidInput(err: {
  issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }>;
}): InventoryError {
  return new InventoryError('INVALID_INPUT', describeZodError(err), zodErrorField(err));
}

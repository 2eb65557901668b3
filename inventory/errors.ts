import { REFUSAL_CODES, UserFacingError, describeZodError, zodErrorField, type RefusalCode } from '../common/errors';

/** The inventory refuses with the codes of common/errors.ts (one list for the inventory, the workflow and the API). */
export const INVENTORY_ERROR_CODES = REFUSAL_CODES;
export type InventoryErrorCode = RefusalCode;

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
export function invalidInput(err: { issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }> }): InventoryError {
  return new InventoryError('INVALID_INPUT', describeZodError(err), zodErrorField(err));
}

/** An unknown id (or another tenant's: see tenant-visibility.ts), naming the input field that carried it. */
export function notFound(what: string, id: string, field: string): InventoryError {
  return new InventoryError('NOT_FOUND', `${field}: no ${what} ${id}`, field);
}

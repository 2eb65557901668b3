import { isGrpcServiceError, ServiceError } from '@temporalio/client';
import { WorkflowNotFoundError } from '@temporalio/common';
import type { z } from 'zod';
import { UserFacingError } from '../common/errors';
import { InventoryError } from '../inventory/errors';
import { MigrationAlreadyRunningError, MigrationRequestRefused } from '../client/migrations';

/** The body of every error answer: `{"error": {"code", "message", "field"?}}`. */
export interface ErrorBody {
  error: { code: string; message: string; field?: string; details?: Record<string, unknown> };
}

/** A refusal decided by the API itself, with its HTTP status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

const body = (code: string, message: string, field?: string, details?: Record<string, unknown>): ErrorBody => ({
  error: { code, message, ...(field !== undefined ? { field } : {}), ...(details !== undefined ? { details } : {}) },
});

/**
 * A zod failure as one INVALID_INPUT naming the first bad field, dotted and prefixed with where it was
 * (`memoryMiB`, `policy.maxParallel`, `params.id`, `query.limit`). Unknown keys name the key itself.
 */
export function invalidInput(err: z.ZodError, where: 'body' | 'params' | 'query' | 'header'): ApiError {
  const issue = err.issues[0]!;
  const path = issue.path.map(String);
  if (issue.code === 'unrecognized_keys' && issue.keys.length > 0) path.push(issue.keys[0]!);
  const prefix = where === 'body' ? [] : [where];
  const field = [...prefix, ...path].join('.') || where;
  const message = err.issues
    .slice(0, 3)
    .map((i) => {
      const p = [...prefix, ...i.path.map(String), ...(i.code === 'unrecognized_keys' ? [i.keys.join(', ')] : [])].join('.') || where;
      return `${p}: ${i.message}`;
    })
    .join('; ');
  return new ApiError(400, 'INVALID_INPUT', message, field);
}

const INVENTORY_STATUS: Record<InventoryError['code'], number> = {
  NOT_FOUND: 404,
  INVALID_INPUT: 400,
  CONFLICT: 409,
  INSUFFICIENT_CAPACITY: 409,
  WRONG_STATE: 409,
  NO_MATCHING_SERVER: 409,
  // Refusals of deleting a dedicated host: the code in the body names the reason.
  HOST_HAS_VMS: 409,
  HOST_MIGRATING: 409,
  // A tenant's quota: the details name it (quota, limit, used); the operator raises it (PUT /v1/tenants/:id/quotas).
  QUOTA_EXCEEDED: 409,
};

/** Refusals of the migration workflow's updates, by their failure type. */
const REFUSAL_STATUS: Record<string, { status: number; code: string }> = {
  INSUFFICIENT_CAPACITY: { status: 409, code: 'INSUFFICIENT_CAPACITY' },
  NOT_FOUND: { status: 404, code: 'NOT_FOUND' },
  INVALID_INPUT: { status: 400, code: 'INVALID_INPUT' },
  CONFLICT: { status: 409, code: 'CONFLICT' },
  WRONG_STATE: { status: 409, code: 'WRONG_STATE' },
  QUOTA_EXCEEDED: { status: 409, code: 'QUOTA_EXCEEDED' },
  MIGRATION_ENDED: { status: 409, code: 'WRONG_STATE' },
  // Only after the client's own retries ran out: the migration did not come back from its hand-over in time.
  MIGRATION_CONTINUING: { status: 503, code: 'UNAVAILABLE' },
};

/** Connection-level failures of Postgres or Temporal: the service is degraded, not the request wrong. */
const UNAVAILABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', '57P01', '57P02', '57P03', '53300']);
const GRPC_UNAVAILABLE = 14;
const GRPC_DEADLINE_EXCEEDED = 4;
const GRPC_RESOURCE_EXHAUSTED = 8;

/**
 * The HTTP answer for an error, or null when the error is unexpected (a bug or an outage without a known shape),
 * which the caller answers with a generic 500 and logs in full.
 */
export function toErrorResponse(err: unknown): { status: number; body: ErrorBody } | null {
  if (err instanceof ApiError) return { status: err.status, body: body(err.code, err.message, err.field, err.details) };
  if (err instanceof InventoryError) {
    // Only the capacity and quota refusals have details worth showing (resource, needed, available; quota, limit,
    // used); others may name ids.
    const details = err.code === 'INSUFFICIENT_CAPACITY' || err.code === 'QUOTA_EXCEEDED' ? err.details : undefined;
    return { status: INVENTORY_STATUS[err.code], body: body(err.code, err.message, err.field, details) };
  }
  if (err instanceof MigrationAlreadyRunningError) return { status: 409, body: body('ALREADY_MIGRATING', err.message, 'id') };
  if (err instanceof MigrationRequestRefused) {
    const m = REFUSAL_STATUS[err.type];
    if (!m) return null;
    const field =
      err.type === 'INSUFFICIENT_CAPACITY'
        ? /\b(vcpus|memoryMiB|diskGiB)\b/.exec(err.message)?.[1]
        : err.type === 'NOT_FOUND'
          ? 'id'
          : err.type === 'QUOTA_EXCEEDED'
            ? /^(\w+):/.exec(err.message)?.[1]
            : undefined;
    return { status: m.status, body: body(m.code, err.message, field) };
  }
  if (err instanceof UserFacingError) return { status: 400, body: body('INVALID_INPUT', err.message, err.field) };
  if (err instanceof WorkflowNotFoundError) return { status: 404, body: body('NOT_FOUND', 'no such migration', 'id') };

  const e = err as { statusCode?: unknown; code?: unknown; message?: unknown };
  // Fastify's own refusals (body too large, unsupported media type, ...).
  if (typeof e.code === 'string' && e.code.startsWith('FST_') && typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    if (e.statusCode === 413) return { status: 413, body: body('PAYLOAD_TOO_LARGE', 'body: request body is larger than allowed', 'body') };
    if (e.statusCode === 415) return { status: 415, body: body('UNSUPPORTED_MEDIA_TYPE', 'body: send JSON with Content-Type: application/json', 'body') };
    return { status: e.statusCode, body: body(e.statusCode === 400 ? 'INVALID_INPUT' : 'BAD_REQUEST', String(e.message ?? 'bad request')) };
  }
  const grpc = isGrpcServiceError(err) ? err : err instanceof ServiceError && isGrpcServiceError(err.cause) ? err.cause : undefined;
  // Temporal's own limits (updates in flight or in total per workflow, rate limits of the namespace): the request was
  // not taken; the client should slow down and send it again, not see a server error.
  if (grpc?.code === GRPC_RESOURCE_EXHAUSTED)
    return {
      status: 429,
      body: body('TOO_MANY_REQUESTS', 'the migration is taking too many requests at once; retry shortly', undefined, { retryAfterSeconds: 1 }),
    };
  if ((typeof e.code === 'string' && UNAVAILABLE_CODES.has(e.code)) || grpc?.code === GRPC_UNAVAILABLE || grpc?.code === GRPC_DEADLINE_EXCEEDED)
    return { status: 503, body: body('UNAVAILABLE', 'a backing service is unavailable; try again') };
  return null;
}

export function internalError(): { status: number; body: ErrorBody } {
  return { status: 500, body: body('INTERNAL', 'internal error; it has been logged') };
}

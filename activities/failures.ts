import { ApplicationFailure } from '@temporalio/activity';
import { FailureTypes } from '../common/migration';
import { AgentError } from '../compute/agent-client';
import { InventoryError } from '../inventory/errors';

const INVENTORY_TYPES: Record<string, string> = {
  NO_MATCHING_SERVER: FailureTypes.NoCapacity,
  INSUFFICIENT_CAPACITY: FailureTypes.InsufficientCapacity,
  NOT_FOUND: FailureTypes.NotFound,
  INVALID_INPUT: FailureTypes.InvalidInput,
  CONFLICT: FailureTypes.Conflict,
  WRONG_STATE: FailureTypes.WrongState,
};

/**
 * Turns what the inventory and the agents throw into failures the workflow branches on. A refusal that a retry
 * cannot change is non-retryable; a network error or an unreachable agent is left to the retry policy.
 */
export function asActivityFailure(err: unknown): unknown {
  if (err instanceof InventoryError) {
    const type = INVENTORY_TYPES[err.code] ?? err.code;
    return ApplicationFailure.create({ type, message: err.message, nonRetryable: true, details: [{ code: err.code, field: err.field }] });
  }
  if (err instanceof AgentError) {
    const e: AgentError = err;
    if (e.retryable) return ApplicationFailure.create({ type: FailureTypes.AgentUnavailable, message: e.message, nonRetryable: false });
    return ApplicationFailure.create({ type: `Agent:${e.code}`, message: e.message, nonRetryable: true, details: [{ code: e.code, field: e.field }] });
  }
  return err;
}

/** Wraps every activity so its failures are classified the same way. */
export function classified<T extends Record<string, (...args: any[]) => Promise<unknown>>>(activities: T): T {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(activities)) {
    out[name] = async (...args: unknown[]) => {
      try {
        return await fn(...args);
      } catch (err) {
        throw asActivityFailure(err);
      }
    };
  }
  return out as T;
}

/** A lookup that answers "not there" with null instead of NOT_FOUND, for steps where absence is a normal outcome. */
export async function orNull<T>(lookup: Promise<T>): Promise<T | null> {
  try {
    return await lookup;
  } catch (err) {
    if (err instanceof InventoryError && err.code === 'NOT_FOUND') return null;
    throw err;
  }
}

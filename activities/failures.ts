import { ApplicationFailure } from '@temporalio/activity';
import { FailureTypes, type FailureType } from '../common/migration';
import { AgentError } from '../compute/agent-client';
import { InventoryError } from '../inventory/errors';

/**
 * Turns what the inventory and the agents throw into failures the workflow branches on. A refusal that a retry
 * cannot change is non-retryable; a network error or an unreachable agent is left to the retry policy.
 */
export function asActivityFailure(err: unknown): unknown {
  if (err instanceof InventoryError) {
    // The inventory's codes are failure types as they are (NO_MATCHING_SERVER, INSUFFICIENT_CAPACITY, ...): the
    // assignment fails to compile if the inventory ever gets a code that is not one.
    const type: FailureType = err.code;
    return ApplicationFailure.create({ type, message: err.message, nonRetryable: true, details: [{ code: err.code, field: err.field }] });
  }
  if (err instanceof AgentError) {
    const e: AgentError = err;
    if (e.retryable) return ApplicationFailure.create({ type: FailureTypes.AgentUnavailable, message: e.message, nonRetryable: false });
    return ApplicationFailure.create({
      type: FailureTypes.AgentRefused,
      message: `${e.code}: ${e.message}`,
      nonRetryable: true,
      details: [{ code: e.code, field: e.field }],
    });
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

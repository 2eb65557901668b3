import { ApplicationFailure } from '@temporalio/workflow';
import { FailureTypes, currentFailureType, type FailureType } from '../common/migration';

/** What an activity's failure says, read in one place: the type in today's spelling and the message. */
export interface Failure {
  type: string;
  message: string;
  is(name: keyof typeof FailureTypes): boolean;
}

/** The failure behind an activity call's error (an `ActivityFailure` wraps the activity's `ApplicationFailure`). */
export function failureOf(err: unknown): Failure {
  const cause = (err as { cause?: ApplicationFailure }).cause;
  // 'Error': the SDK's name for a failure that carries no type.
  const type = cause?.type ? currentFailureType(cause.type) : 'Error';
  return { type, message: cause?.message ?? (err as Error).message, is: (name) => type === FailureTypes[name] };
}

/** Why something failed, in words: the failure itself when the workflow threw it, else what the activity said. */
export function reasonOf(err: unknown): string {
  const failure = err instanceof ApplicationFailure ? err : (err as { cause?: ApplicationFailure }).cause;
  return failure?.message ?? (err as Error).message;
}

/** A failure the workflow throws (the migration's end, or a refused request): typed, never retried. */
export function nonRetryable(type: FailureType, message: string, details?: unknown[]): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true, details });
}

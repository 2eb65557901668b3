import { ActivityCancellationType, proxyActivities, proxyLocalActivities, type RetryPolicy } from '@temporalio/workflow';
import type { MigrationActivities } from '../activities';
import { FailureTypes } from '../common/migration';

const NON_RETRYABLE = [
  FailureTypes.NoMatchingServer,
  FailureTypes.InsufficientCapacity,
  FailureTypes.NotConverging,
  FailureTypes.InvalidInput,
  FailureTypes.NotFound,
  FailureTypes.WrongState,
  FailureTypes.Conflict,
  FailureTypes.MoveFailed,
  FailureTypes.TargetUnavailable,
];

const retry: RetryPolicy = { initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '20s', nonRetryableErrorTypes: NON_RETRYABLE };

/**
 * Short inventory/agent steps. Retried until they succeed unless the error says a retry cannot help. They do not
 * heartbeat, so the timeout is what notices a worker that died mid-step: keep it short (fault tests saw 2 minutes lost
 * per kill with a 2-minute timeout); every step is idempotent, so a retry after a slow success is harmless.
 */
export const steps = proxyActivities<MigrationActivities>({ startToCloseTimeout: '30 seconds', retry });

/**
 * Tenant requests' steps as local activities, only for runs that recorded the 'tenant-requests-as-local-activities'
 * marker before 'tenant-requests-as-activities' (tenant-requests.ts says why new runs use `steps`): a local activity
 * ran inside the workflow task that accepted the request, one workflow task per answer instead of an activity task
 * and a second workflow task. Same timeout and retries as `steps`.
 */
export const localSteps = proxyLocalActivities<MigrationActivities>({ startToCloseTimeout: '30 seconds', retry });

/**
 * One VM's live migration: long, heartbeating (so a lost worker is noticed in seconds and the move resumes on another
 * worker from the agent's job), and cancellable: the workflow waits until the agent has really stopped the move.
 */
export const moveSteps = proxyActivities<MigrationActivities>({
  startToCloseTimeout: '12 hours',
  heartbeatTimeout: '15 seconds',
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry,
});

/** An activity of one of the proxies above (regular or local): what `call` needs of it. */
interface Callable<A extends unknown[], R> {
  executeWithOptions(options: { summary?: string }, args: A): Promise<R>;
}

/**
 * Runs one activity with the one-line summary the Web UI shows for it; everything else comes from its proxy.
 * It returns the SDK's own promise, unwrapped: the workflow resumes at the same point as a direct call would, so the
 * commands of concurrent handlers keep their order (recorded histories replay).
 */
export function call<A extends unknown[], R>(activity: Callable<A, R>, summary: string, ...args: A): Promise<R> {
  return activity.executeWithOptions({ summary }, args);
}

import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { createActivities, type ActivityDeps } from '../activities';

export interface MigrationWorkerOptions extends ActivityDeps {
  connection: NativeConnection;
  namespace?: string;
  taskQueue: string;
  /** A pre-built bundle (tests build one for the suite); default: bundle `workflows/` at start. */
  workflowBundle?: { codePath: string };
  identity?: string;
  /** How long SIGTERM waits for running activities before handing them over to another worker. */
  shutdownGraceTime?: WorkerOptions['shutdownGraceTime'];
}

/**
 * A worker of the `dh-migrations` task queue: the migration workflow and its activities. Any number of these can serve
 * one queue; a move whose worker dies resumes on another from the agent's job.
 */
export async function createMigrationWorker(opts: MigrationWorkerOptions): Promise<Worker> {
  return Worker.create({
    connection: opts.connection,
    namespace: opts.namespace ?? 'default',
    taskQueue: opts.taskQueue,
    ...(opts.workflowBundle ? { workflowBundle: opts.workflowBundle } : { workflowsPath: require.resolve('../workflows') }),
    activities: createActivities({ inventory: opts.inventory, agents: opts.agents }),
    ...(opts.identity ? { identity: opts.identity } : {}),
    // Moves mostly wait on agents; many fit in one worker.
    maxConcurrentActivityTaskExecutions: 200,
    // Cancellation reaches an activity only through a heartbeat reply: keep that latency low.
    maxHeartbeatThrottleInterval: '500ms',
    defaultHeartbeatThrottleInterval: '500ms',
    shutdownGraceTime: opts.shutdownGraceTime ?? '10s',
  });
}

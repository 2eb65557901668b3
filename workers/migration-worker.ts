import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { createActivities, type ActivityDeps, type MigrationActivities } from '../activities';
import type { Metrics } from '../common/metrics';

export interface MigrationWorkerOptions extends ActivityDeps {
  connection: NativeConnection;
  namespace?: string;
  taskQueue: string;
  /** A pre-built bundle (tests build one for the suite); default: bundle `workflows/` at start. */
  workflowBundle?: { codePath: string };
  identity?: string;
  /** How long SIGTERM waits for running activities before handing them over to another worker. */
  shutdownGraceTime?: WorkerOptions['shutdownGraceTime'];
  /** Migration outcomes and per-VM figures are counted here when given. */
  metrics?: Metrics;
}

/** Activity slots of one worker: moves mostly wait on agents, so many fit (docs/operations.md: limits). */
export const MAX_CONCURRENT_ACTIVITIES = 200;

/**
 * A worker of the `dh-migrations` task queue: the migration workflow and its activities. Any number of these can serve
 * one queue; a move whose worker dies resumes on another from the agent's job.
 */
export async function createMigrationWorker(opts: MigrationWorkerOptions): Promise<Worker> {
  const activities = createActivities({ inventory: opts.inventory, agents: opts.agents });
  return Worker.create({
    connection: opts.connection,
    namespace: opts.namespace ?? 'default',
    taskQueue: opts.taskQueue,
    ...(opts.workflowBundle ? { workflowBundle: opts.workflowBundle } : { workflowsPath: require.resolve('../workflows') }),
    activities: opts.metrics ? instrumentActivities(activities, opts.metrics) : activities,
    ...(opts.identity ? { identity: opts.identity } : {}),
    maxConcurrentActivityTaskExecutions: MAX_CONCURRENT_ACTIVITIES,
    // Cancellation reaches an activity only through a heartbeat reply: keep that latency low.
    maxHeartbeatThrottleInterval: '500ms',
    defaultHeartbeatThrottleInterval: '500ms',
    shutdownGraceTime: opts.shutdownGraceTime ?? '10s',
  });
}

/**
 * Counts what the worker sees succeed: `finalizeMigration` (a migration completed: the point of no return passed),
 * `rollbackMigration` (one rolled back) and each `liveMigrateVm` (its downtime and duration, by direction, from the
 * job id's `out`/`back`). A failed attempt counts nothing; a retried one counts once, when it succeeds.
 */
export function instrumentActivities(activities: MigrationActivities, metrics: Metrics): MigrationActivities {
  return {
    ...activities,
    async finalizeMigration(input) {
      const r = await activities.finalizeMigration(input);
      metrics.migrationsCompleted.inc();
      return r;
    },
    async rollbackMigration(input) {
      const r = await activities.rollbackMigration(input);
      metrics.migrationsRolledBack.inc();
      return r;
    },
    async liveMigrateVm(input) {
      const figures = await activities.liveMigrateVm(input);
      const direction = /-back-\d+$/.test(input.jobId) ? 'back' : 'out';
      metrics.vmMoves.inc({ direction });
      metrics.vmDowntime.observe({ direction }, figures.downtimeMs / 1000);
      metrics.vmMoveDuration.observe({ direction }, figures.totalTimeMs / 1000);
      return figures;
    },
  };
}

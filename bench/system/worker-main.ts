/**
 * A migration worker in its own process, for the system benchmarks (benchmark 4 runs two). It is the product's worker
 * (`createMigrationWorker`) on the bench's task queue with the bundle the runner built once. The only addition is a
 * stopwatch around the worker's dependencies — each inventory (Postgres) call and each agent (HTTP) call — so the
 * bench can say where a move's time goes; the parent asks for the figures over IPC. Prints `ready` on stdout once
 * polling, stops on SIGTERM.
 */
import { NativeConnection } from '@temporalio/worker';
import pino from 'pino';
import { Pool } from 'pg';
import { createAgentDirectory, type AgentDirectory } from '../../activities/agent-directory';
import { installTemporalRuntime } from '../../common/temporal-runtime';
import { createInventory, type Inventory } from '../../inventory';
import { createMigrationWorker } from '../../workers/migration-worker';
import { Stopwatch } from './stopwatch';

async function main(): Promise<void> {
  const env = (name: string) => {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set`);
    return v;
  };
  const logger = pino({ name: 'dhm-bench-worker', level: process.env.BENCH_LOG_LEVEL ?? 'error' }, pino.destination(2));
  installTemporalRuntime(logger);
  const watch = new Stopwatch();
  const pool = new Pool({ connectionString: env('BENCH_DATABASE_URL'), max: 20 });
  pool.on('error', () => undefined);
  const inventory = watch.wrap<Inventory>('inventory', createInventory(pool));
  const directory = createAgentDirectory({ lookupAgentUrl: async (id) => (await inventory.getServer(id)).agentUrl });
  const agents: AgentDirectory = { forServer: async (id) => watch.wrap('agent', await directory.forServer(id)) };
  const connection = await NativeConnection.connect({ address: env('BENCH_TEMPORAL_ADDRESS') });
  const worker = await createMigrationWorker({
    connection,
    taskQueue: env('BENCH_TASK_QUEUE'),
    workflowBundle: { codePath: env('BENCH_WORKFLOW_BUNDLE') },
    identity: `bench-worker-${process.pid}`,
    inventory,
    agents,
    shutdownGraceTime: '2s',
  });
  const running = worker.run();
  process.once('SIGTERM', () => worker.shutdown());
  process.on('message', (m: unknown) => {
    if (m === 'stats') process.send?.({ stats: watch.snapshot() });
    if (m === 'reset') watch.reset();
  });
  process.stdout.write('ready\n');
  await running;
  await connection.close();
  await pool.end();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench worker failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);

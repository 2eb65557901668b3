/**
 * A migration worker in its own process, for the system benchmarks (benchmark 4 runs two). It is the product's worker
 * (`createMigrationWorker`) on the bench's task queue with the bundle the runner built once. The only addition is a
 * stopwatch around the worker's dependencies — each inventory (Postgres) call and each agent (HTTP) call — so the
 * bench can say where a move's time goes; the parent asks for the figures over IPC. Prints `ready` on stdout once
 * polling, stops on SIGTERM.
 */
import pino from 'pino';
import type { AgentDirectory } from '../../compute/agent-directory';
import { loadEnv } from '../../common/config';
import { installTemporalRuntime } from '../../common/temporal-runtime';
import type { Inventory } from '../../inventory';
import { agentDirectoryFor, openInventoryStore, startControlPlane } from '../../stack/control-plane';
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
  const databaseUrl = env('BENCH_DATABASE_URL');
  const opened = await openInventoryStore({ databaseUrl, poolSize: 20, logger });
  const store = { ...opened, inventory: watch.wrap<Inventory>('inventory', opened.inventory) };
  const directory = agentDirectoryFor(store.inventory, {});
  const agents: AgentDirectory = { forServer: async (id) => watch.wrap('agent', await directory.forServer(id)) };
  const plane = await startControlPlane({
    env: loadEnv(process.env),
    logger,
    store,
    agentCredentials: {},
    agents,
    temporal: { address: env('BENCH_TEMPORAL_ADDRESS'), namespace: 'default', taskQueue: env('BENCH_TASK_QUEUE') },
    worker: { workflowBundle: { codePath: env('BENCH_WORKFLOW_BUNDLE') }, identity: `bench-worker-${process.pid}`, shutdownGraceTime: '2s' },
  });
  const stopped = new Promise<void>((resolve) => process.once('SIGTERM', resolve));
  process.on('message', (m: unknown) => {
    if (m === 'stats') process.send?.({ stats: watch.snapshot() });
    if (m === 'reset') watch.reset();
  });
  process.stdout.write('ready\n');
  await stopped;
  await plane.stop();
  await store.close();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench worker failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);

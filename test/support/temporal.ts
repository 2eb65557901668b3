import { randomBytes } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Runtime, Worker, DefaultLogger, type WorkerOptions } from '@temporalio/worker';

let runtimeInstalled = false;

/** Keep the SDK's own logs out of test output unless asked for. */
function quietRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  try {
    Runtime.install({ logger: new DefaultLogger((process.env.DHM_TEST_LOG_LEVEL?.toUpperCase() as 'WARN') ?? 'WARN') });
  } catch {
    // already installed in this module registry's process
  }
}

export interface TestTemporal {
  address: string;
  client: Client;
  connection: Connection;
  nativeConnection: NativeConnection;
  taskQueue: string;
  /** A worker on this file's task queue running the suite's workflow bundle; runs until `close()`. */
  startWorker(opts: Partial<WorkerOptions> & { activities: object }): Promise<RunningWorker>;
  close(): Promise<void>;
}

export interface RunningWorker {
  worker: Worker;
  stop(): Promise<void>;
}

/** The suite's Temporal, or another one at `address` (the cluster tests start their own). */
export async function connectTestTemporal(address = process.env.DHM_TEST_TEMPORAL_ADDRESS): Promise<TestTemporal> {
  quietRuntime();
  const bundlePath = process.env.DHM_TEST_WORKFLOW_BUNDLE;
  if (!address || !bundlePath) throw new Error('DHM_TEST_TEMPORAL_ADDRESS is not set: run tests through jest');
  const connection = await Connection.connect({ address });
  const nativeConnection = await NativeConnection.connect({ address });
  const client = new Client({ connection });
  const taskQueue = `test-${randomBytes(4).toString('hex')}`;
  const running: RunningWorker[] = [];
  return {
    address,
    client,
    connection,
    nativeConnection,
    taskQueue,
    async startWorker(opts) {
      const worker = await Worker.create({
        connection: nativeConnection,
        taskQueue,
        workflowBundle: { codePath: bundlePath },
        ...opts,
      });
      const done = worker.run();
      const handle: RunningWorker = {
        worker,
        stop: async () => {
          if (worker.getState() === 'RUNNING') worker.shutdown();
          await done;
        },
      };
      running.push(handle);
      return handle;
    },
    async close() {
      for (const w of running.splice(0)) await w.stop();
      await nativeConnection.close();
      await connection.close();
    },
  };
}

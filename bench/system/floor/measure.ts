import { NativeConnection, Worker } from '@temporalio/worker';
import type { Client } from '@temporalio/client';
import { quantile } from '../history';
import { floorActivities } from './activities';
import { floorDone, floorUpdate } from './workflow';

export interface UpdateFloor {
  requests: number;
  /** An update whose handler does nothing: client → server → worker → server → client. */
  bare: { p50Ms: number; p95Ms: number; p99Ms: number };
  /** The same with a local activity that returns at once (dhm's handlers run one). */
  withLocalActivity: { p50Ms: number; p95Ms: number; p99Ms: number };
}

const stats = (ms: number[]) => ({ p50Ms: quantile(ms, 0.5), p95Ms: quantile(ms, 0.95), p99Ms: quantile(ms, 0.99) });

/**
 * The Temporal update round trip on this dev server with nothing of dhm in it: `requests` updates one after another to
 * a trivial workflow on its own task queue, served by a worker in this process.
 */
export async function measureUpdateFloor(o: { client: Client; temporalAddress: string; requests: number }): Promise<UpdateFloor> {
  const taskQueue = `bench-update-floor-${process.pid}`;
  const connection = await NativeConnection.connect({ address: o.temporalAddress });
  const worker = await Worker.create({ connection, taskQueue, workflowsPath: require.resolve('./workflow'), activities: floorActivities });
  const running = worker.run();
  try {
    const handle = await o.client.workflow.start('updateFloor', { taskQueue, workflowId: `${taskQueue}-${Date.now()}` });
    const series = async (withLocalActivity: boolean) => {
      await handle.executeUpdate(floorUpdate, { args: [{ withLocalActivity }] }); // warm-up, not counted
      const ms: number[] = [];
      for (let i = 0; i < o.requests; i++) {
        const t0 = performance.now();
        await handle.executeUpdate(floorUpdate, { args: [{ withLocalActivity }] });
        ms.push(performance.now() - t0);
      }
      return stats(ms);
    };
    const bare = await series(false);
    const withLocalActivity = await series(true);
    await handle.signal(floorDone);
    await handle.result();
    return { requests: o.requests, bare, withLocalActivity };
  } finally {
    worker.shutdown();
    await running;
    await connection.close();
  }
}

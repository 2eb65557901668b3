/**
 * The smallest workflow that serves an update, for benchmark 3's floor: what a Temporal update costs on this dev
 * server and machine before dhm does anything. With `withLocalActivity` the handler also runs a local activity that
 * returns at once, as dhm's request handlers run theirs.
 */
import { condition, defineSignal, defineUpdate, proxyLocalActivities, setHandler } from '@temporalio/workflow';
import type { floorActivities } from './activities';

const { noop } = proxyLocalActivities<typeof floorActivities>({ startToCloseTimeout: '10 seconds' });

export const floorUpdate = defineUpdate<number, [{ withLocalActivity: boolean }]>('floor');
export const floorDone = defineSignal('floorDone');

export async function updateFloor(): Promise<void> {
  let served = 0;
  let done = false;
  setHandler(floorUpdate, async ({ withLocalActivity }) => {
    if (withLocalActivity) await noop();
    return ++served;
  });
  setHandler(floorDone, () => void (done = true));
  await condition(() => done);
}

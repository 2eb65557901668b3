import { proxyActivities } from '@temporalio/workflow';
import type { ProbeActivities } from './probe-activities';

const { countRows } = proxyActivities<ProbeActivities>({ startToCloseTimeout: '10 seconds' });

/** Smallest end-to-end check of the stack: a workflow on the dev server runs an activity that reads Postgres. */
export async function probeInventory(table: string): Promise<number> {
  return countRows(table);
}

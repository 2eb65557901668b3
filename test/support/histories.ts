import * as fs from 'node:fs';
import * as path from 'node:path';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import type { TestSystem } from './system';

export const HISTORY_FIXTURES = path.join(__dirname, '..', 'fixtures', 'histories');

/**
 * Records a migration's history for the replay test when asked (DHM_TEST_RECORD_HISTORIES=1). Recorded histories are
 * committed and replayed by later code, so a run must not overwrite them with histories of the code under test.
 */
export async function saveHistory(sys: TestSystem, hostId: string, name: string): Promise<void> {
  if (!process.env.DHM_TEST_RECORD_HISTORIES) return;
  const history = await sys.temporal.client.workflow.getHandle(`migration-${hostId}`).fetchHistory();
  fs.mkdirSync(HISTORY_FIXTURES, { recursive: true });
  const json = temporal.api.history.v1.History.toObject(history as temporal.api.history.v1.History, {
    longs: String,
    enums: String,
    bytes: String,
    defaults: false,
  });
  fs.writeFileSync(path.join(HISTORY_FIXTURES, `${name}.json`), JSON.stringify(json));
}

/** One activity of a workflow's history: its type, its input, and the event ids that scheduled and closed it (ids order a history). */
export interface HistoryActivity<I = Record<string, unknown>> {
  name: string;
  input: I;
  scheduledId: number;
  closedId: number | undefined;
}

/** The activities a workflow's history scheduled, in order, with their inputs as the workflow passed them. */
export function historyActivities<I = Record<string, unknown>>(history: temporal.api.history.v1.IHistory): HistoryActivity<I>[] {
  const byScheduledId = new Map<number, HistoryActivity<I>>();
  for (const e of history.events ?? []) {
    const s = e.activityTaskScheduledEventAttributes;
    if (s) {
      const input = defaultPayloadConverter.fromPayload<I>(s.input!.payloads![0] as Payload);
      byScheduledId.set(Number(e.eventId), { name: s.activityType!.name!, input, scheduledId: Number(e.eventId), closedId: undefined });
    }
    const closed = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes ?? e.activityTaskCanceledEventAttributes;
    if (closed) byScheduledId.get(Number(closed.scheduledEventId))!.closedId = Number(e.eventId);
  }
  return [...byScheduledId.values()];
}

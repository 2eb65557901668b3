import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';

const EventType = temporal.api.enums.v1.EventType;
type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

export interface HistoryFigures {
  runs: number;
  events: number;
  workflowTasks: number;
  activities: number;
  /** Activity task scheduled → started (waiting for a worker), ms: median and 95th percentile. */
  activityScheduleToStartMs: { p50: number; p95: number };
  /** Activity task started → completed (the move itself, as the worker ran it), ms. */
  activityStartToCloseMs: { p50: number; p95: number };
  /** Workflow task scheduled → completed, ms. */
  workflowTaskMs: { p50: number; p95: number };
}

export function quantile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
}

const timeOf = (e: HistoryEvent) => Number(e.eventTime?.seconds ?? 0) * 1000 + (e.eventTime?.nanos ?? 0) / 1e6;

/** Every event of a workflow across its runs (continue-as-new), following the chain from its first run. */
export async function historyFigures(client: Client, workflowId: string, firstRunId: string): Promise<HistoryFigures> {
  const all: HistoryEvent[][] = [];
  let runId: string | undefined = firstRunId;
  while (runId) {
    const history: temporal.api.history.v1.IHistory = await client.workflow.getHandle(workflowId, runId).fetchHistory();
    const events: HistoryEvent[] = history.events ?? [];
    all.push(events);
    runId = undefined;
    for (const e of events)
      if (e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW)
        runId = e.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId ?? undefined;
  }
  const s2s: number[] = [];
  const s2c: number[] = [];
  const wft: number[] = [];
  let workflowTasks = 0;
  let activities = 0;
  for (const events of all) {
    const at = new Map<number, number>();
    for (const e of events) {
      const id = Number(e.eventId);
      at.set(id, timeOf(e));
      switch (e.eventType) {
        case EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
          activities += 1;
          break;
        case EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
          s2s.push(timeOf(e) - (at.get(Number(e.activityTaskStartedEventAttributes?.scheduledEventId)) ?? timeOf(e)));
          break;
        case EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
          s2c.push(timeOf(e) - (at.get(Number(e.activityTaskCompletedEventAttributes?.startedEventId)) ?? timeOf(e)));
          break;
        case EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
          workflowTasks += 1;
          wft.push(timeOf(e) - (at.get(Number(e.workflowTaskCompletedEventAttributes?.scheduledEventId)) ?? timeOf(e)));
          break;
      }
    }
  }
  const pq = (v: number[]) => ({ p50: quantile(v, 0.5), p95: quantile(v, 0.95) });
  return {
    runs: all.length,
    events: all.reduce((s, e) => s + e.length, 0),
    workflowTasks,
    activities,
    activityScheduleToStartMs: pq(s2s),
    activityStartToCloseMs: pq(s2c),
    workflowTaskMs: pq(wft),
  };
}

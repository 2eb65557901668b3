import { randomUUID } from 'node:crypto';
import type { ApiClient } from '../cli/api-client';
import { TERMINAL_PHASES, type MigrationStatus } from '../common/migration';
import type { AgentClient } from '../compute/agent-client';
import type { MigrationJob } from '../compute/agent-api';
import { moveOf, type Move } from './testbed-figures';

/**
 * The testbed evacuation's dhm arm: dhm itself moves the host. An operator's migration request through the API with
 * only the downtime target given, so the policy is dhm's default (`policyForHost`: measured link and dirty rates,
 * workflows/scheduler.ts deciding streams, channels and auto-converge); the workflow runs on the embedded control
 * plane (Temporal dev server, dhm's worker) against the testbed's agents. This bench only watches: the migration's
 * status, and each VM's agent job on the source (read while it exists; the source's jobs go with its de-provisioned
 * incarnation), for the same per-move figures the baselines report.
 */

const FOLLOW_MS = 250;
const MAX_MS = 20 * 60_000;

export interface DhmArm {
  name: string;
  concurrency: string;
  makespanMs: number;
  moves: Move[];
  workflow: {
    migrationId: string;
    phase: string;
    /** From the request to the migration's end (clone made, link measured, moves, cut-over, de-provisioning). */
    wholeMs: number;
    /** The policy the workflow ran with (what `policyForHost` gave it). */
    policy: unknown;
    /** Most agent jobs in flight at once, as the workflow's scheduler launched them. */
    maxInFlight: number;
    /** From the request to the first move's start (clone incarnation, link measurement, the first dirty-rate sample). */
    beforeFirstMoveMs: number;
    /** Between one move's end and the next one's start, in start order (negative: they overlapped). */
    gapsMs: number[];
    /** From the last move's end to the migration's end (cut-over, de-provisioning). */
    afterLastMoveMs: number;
    lastError?: string;
  };
}

export async function runDhmArm(o: {
  operator: ApiClient;
  hostId: string;
  /** The workflow's own status query (the API's view leaves out the agent job ids). */
  status: (migrationId: string) => Promise<MigrationStatus>;
  /** The source server's agent (where the host is now). */
  agent: AgentClient;
  /** Each VM's local disk data on the source (allocated bytes), measured before the move. */
  diskData: ReadonlyMap<string, number>;
  downtimeMs: number;
  log: (msg: string) => void;
}): Promise<DhmArm> {
  const requested = Date.now();
  const started = await o.operator.request<{ id: string }>(
    'POST',
    `/v1/dedicated-hosts/${o.hostId}/migrations`,
    { policy: { maxDowntimeMs: o.downtimeMs } },
    { 'idempotency-key': randomUUID() },
  );
  const jobs = new Map<string, MigrationJob>();
  let view: MigrationStatus;
  for (;;) {
    view = await o.status(started.id);
    for (const v of view.vms) {
      if (!v.jobId || jobs.get(v.jobId)?.state === 'completed') continue;
      const j = await o.agent.getMigration(v.jobId).catch(() => null);
      if (j) jobs.set(v.jobId, j);
    }
    if (TERMINAL_PHASES.has(view.phase)) break;
    if (Date.now() - requested > MAX_MS) throw new Error(`dhm arm: migration ${started.id} not finished within ${MAX_MS} ms (phase ${view.phase})`);
    await new Promise((r) => setTimeout(r, FOLLOW_MS)); // follow interval within the deadline
  }
  const ended = view.finishedAt ? Date.parse(view.finishedAt) : Date.now();
  const list = [...jobs.values()].sort((a, b) => Date.parse(a.startedAt) - Date.parse(b.startedAt));
  if (!list.length) throw new Error(`dhm arm: migration ${started.id} ended ${view.phase} without a move (${view.lastError ?? 'no error'})`);
  const startOf = (j: MigrationJob) => Date.parse(j.startedAt);
  const endOf = (j: MigrationJob) => (j.finishedAt ? Date.parse(j.finishedAt) : ended);
  const t0 = startOf(list[0]!);
  const tEnd = Math.max(...list.map(endOf));
  const moves = list.map((j) => moveOf(j, o.diskData.get(j.vmId) ?? 0, startOf(j) - t0, endOf(j) - t0));
  let maxInFlight = 0;
  for (const j of list) maxInFlight = Math.max(maxInFlight, list.filter((x) => startOf(x) <= startOf(j) && endOf(x) > startOf(j)).length);
  const policy = view.policy as { maxParallel?: number; channels?: number };
  return {
    name: 'dhm (its workflow, default policy)',
    concurrency: `workflow: maxParallel ${policy.maxParallel ?? '?'}, channels ${policy.channels ?? 1}, ${maxInFlight} at most in flight`,
    makespanMs: tEnd - t0,
    moves,
    workflow: {
      migrationId: started.id,
      phase: view.phase,
      wholeMs: ended - requested,
      policy: view.policy,
      maxInFlight,
      beforeFirstMoveMs: t0 - requested,
      gapsMs: list.slice(1).map((j, i) => startOf(j) - endOf(list[i]!)),
      afterLastMoveMs: ended - tEnd,
      ...(view.lastError ? { lastError: view.lastError } : {}),
    },
  };
}

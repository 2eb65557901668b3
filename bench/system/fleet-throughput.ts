import type { WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { startMigration } from '../../client/migrations';
import type { Fleet } from '../../common/fleet';
import { autoSchedulePolicy } from '../../workflows/vm-order';
import { cpuMeter, type CpuFigures } from './cpu';
import { historyFigures, quantile } from './history';
import type { BenchStack } from './stack';
import type { CallStats } from './stopwatch';
import { metricsUrl, persistenceBetween, scrape, type PersistenceFigures } from './temporal-metrics';

/**
 * Benchmark 4: N hosts of 10 VMs each start migrating at the same moment, on one Temporal dev server and two worker
 * processes; N doubles until a step has an error (a migration that does not complete) or takes longer than the time
 * limit. Reports each step's hosts per minute and, to say where it saturates and why, the CPU each part used, how long
 * activity and workflow tasks waited for a worker, and how long the workers' Postgres calls took.
 */
export interface FleetStep {
  hosts: number;
  vmsPerHost: number;
  wallMs: number;
  hostsPerMinute: number;
  completed: number;
  errors: string[];
  hostDurationMs: { p50: number; max: number };
  /** Medians over the step's workflows of each workflow's median (ms). */
  activityScheduleToStartMs: number;
  activityStartToCloseMs: number;
  workflowTaskMs: number;
  cpu: CpuFigures;
  /** Mean latency of the workers' heaviest Postgres call (placing a moved VM, under the host's row lock). */
  moveVmPlacementMs: number;
  calls: Record<string, CallStats>;
  /** The Temporal dev server's persistence (SQLite) calls during the step. */
  temporalPersistence: PersistenceFigures;
}

export interface FleetThroughputFigures {
  steps: FleetStep[];
  /** Largest N whose step completed without errors. */
  largestCleanN: number;
  bestHostsPerMinute: number;
  /** First N at which doubling the hosts added less than 15 % throughput (null: still growing at the last step). */
  saturatesAtN: number | null;
  why: string;
}

const CLASS = 's';
const CAPACITY = { vcpus: 64, memoryMiB: 64 * 1024, diskGiB: 1000 };
export const FLEET_TIME_SCALE = 100;
const VMS_PER_HOST = 10;

function fleetFor(n: number): Fleet {
  const zone = `bench-fleet-${n}`;
  return {
    zones: [zone],
    resourceClasses: { [CLASS]: CAPACITY },
    servers: Array.from({ length: 2 * n }, (_, i) => ({
      id: `fl-${n}-${i}`,
      zone,
      resourceClass: CLASS,
      capacity: CAPACITY,
      nicBandwidthBps: 10e9,
      agentPort: 0,
      backend: 'sim' as const,
    })),
  };
}

async function step(stack: BenchStack, n: number, timeLimitMs: number): Promise<FleetStep> {
  await stack.addFleet(fleetFor(n), FLEET_TIME_SCALE);
  const zone = `bench-fleet-${n}`;
  const vms = Array.from({ length: VMS_PER_HOST }, (_, i) => ({ memoryMiB: 1024, dirtyRateMiBps: (i % 5) * 4, workingSetMiB: 64 }));
  const hosts: Array<{ hostId: string }> = [];
  const queue = Array.from({ length: n }, (_, i) => i);
  await Promise.all(
    Array.from({ length: Math.min(4, n) }, async () => {
      while (queue.shift() !== undefined) hosts.push(await stack.createHost({ zone, resourceClass: CLASS, vms }));
    }),
  );
  const policy = autoSchedulePolicy({ nicBandwidthBps: 10e9, streamCapFraction: 0.4 });
  await stack.workerStats({ reset: true });
  const metrics = metricsUrl(stack.serverPids().temporal[0]);
  const metricsBefore = await scrape(metrics);
  const cpu = cpuMeter(stack);
  const started = performance.now();
  const handles = await Promise.all(
    hosts.map(
      (h) =>
        startMigration(stack.client, stack.taskQueue, {
          dedicatedHostId: h.hostId,
          policy,
          requestedBy: 'bench',
        }) as Promise<WorkflowHandleWithFirstExecutionRunId>,
    ),
  );
  const errors: string[] = [];
  const durations: number[] = [];
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeLimitMs)));
  const outcomes = await Promise.all(
    handles.map(async (h) => {
      const r = await Promise.race([
        h.result().then(
          (v) => ({ v }),
          (err: unknown) => ({ err }),
        ),
        limit,
      ]);
      if (r === 'timeout') return 'timeout';
      durations.push(performance.now() - started);
      // A WorkflowFailedError says only "Workflow execution failed"; its cause is the workflow's own failure.
      if ('err' in r) return `failed: ${failureChain(r.err)}`;
      if (r.v.phase !== 'completed' || r.v.counts.moved !== VMS_PER_HOST) return `ended ${r.v.phase} with ${r.v.counts.moved} moved`;
      return 'ok';
    }),
  );
  clearTimeout(timer);
  const wallMs = performance.now() - started;
  const cpuFigures = cpu();
  const calls = await stack.workerStats({ reset: true });
  const temporalPersistence = persistenceBetween(metricsBefore, await scrape(metrics), wallMs);
  for (const o of outcomes) if (o !== 'ok') errors.push(o);
  if (errors.includes('timeout')) {
    // Whatever is still running would skew the next step: stop it.
    await Promise.all(handles.map((h) => h.terminate('benchmark step timed out').catch(() => undefined)));
  }
  const figures = await Promise.all(handles.map((h) => historyFigures(stack.client, h.workflowId, h.firstExecutionRunId).catch(() => undefined)));
  const med = (f: (x: NonNullable<(typeof figures)[number]>) => number) =>
    quantile(
      figures.flatMap((x) => (x ? [f(x)] : [])),
      0.5,
    );
  const completed = outcomes.filter((o) => o === 'ok').length;
  return {
    hosts: n,
    vmsPerHost: VMS_PER_HOST,
    wallMs,
    hostsPerMinute: (completed * 60_000) / wallMs,
    completed,
    errors: [...new Set(errors)].slice(0, 5),
    hostDurationMs: { p50: quantile(durations, 0.5), max: durations.length ? Math.max(...durations) : NaN },
    activityScheduleToStartMs: med((x) => x.activityScheduleToStartMs.p50),
    activityStartToCloseMs: med((x) => x.activityStartToCloseMs.p50),
    workflowTaskMs: med((x) => x.workflowTaskMs.p50),
    cpu: cpuFigures,
    moveVmPlacementMs: calls['inventory.moveVmPlacement']?.meanMs ?? NaN,
    calls,
    temporalPersistence,
  };
}

export async function benchFleetThroughput(
  stack: BenchStack,
  opts: { sweep: number[]; timeLimitMs: number },
  log: (line: string) => void,
): Promise<FleetThroughputFigures> {
  const steps: FleetStep[] = [];
  for (const n of opts.sweep) {
    const s = await step(stack, n, opts.timeLimitMs);
    steps.push(s);
    log(
      `  N=${n}: ${s.completed}/${n} in ${(s.wallMs / 1000).toFixed(1)} s, ${s.hostsPerMinute.toFixed(1)} hosts/min; CPU % temporal ${s.cpu.temporal.toFixed(0)}, workers ${s.cpu.workers.toFixed(0)}, postgres ${s.cpu.postgres.toFixed(0)}, agents+bench ${s.cpu.agentsAndBench.toFixed(0)}, machine ${s.cpu.machine.toFixed(0)}/${100 * s.cpu.cores}`,
    );
    if (s.errors.length) break;
  }
  const clean = steps.filter((s) => s.errors.length === 0);
  const largestCleanN = clean.length ? Math.max(...clean.map((s) => s.hosts)) : 0;
  const bestHostsPerMinute = clean.length ? Math.max(...clean.map((s) => s.hostsPerMinute)) : 0;
  // Saturated at N: no later step is more than 15 % faster (hosts/min) than N's — doubling N stopped paying.
  let saturatesAtN: number | null = null;
  for (let i = 0; i < clean.length - 1; i++)
    if (clean.slice(i + 1).every((s) => s.hostsPerMinute < 1.15 * clean[i]!.hostsPerMinute)) {
      saturatesAtN = clean[i]!.hosts;
      break;
    }
  return { steps, largestCleanN, bestHostsPerMinute, saturatesAtN, why: explain(steps, saturatesAtN) };
}

/** A one-paragraph reading of the figures: which resource ran out first. */
function explain(steps: FleetStep[], saturatesAtN: number | null): string {
  if (steps.length === 0) return 'no step ran';
  const first = steps[0]!;
  const last = steps[steps.length - 1]!;
  const at = steps.find((s) => s.hosts === saturatesAtN) ?? last;
  const ours = (s: FleetStep) => s.cpu.temporal + s.cpu.workers + s.cpu.postgres + s.cpu.agentsAndBench;
  const parts = (s: FleetStep) =>
    (
      [
        ['Temporal dev server (SQLite)', s.cpu.temporal],
        ['the two workers', s.cpu.workers],
        ['Postgres', s.cpu.postgres],
        ['agents + bench', s.cpu.agentsAndBench],
      ] as Array<[string, number]>
    ).sort((a, b) => b[1] - a[1]);
  const [top, second] = parts(at);
  const machineFull = at.cpu.machine >= 0.85 * 100 * at.cpu.cores;
  const others = at.cpu.machine - ours(at);
  const lines = [
    saturatesAtN === null
      ? `Throughput was still growing at N=${last.hosts} (${last.hostsPerMinute.toFixed(1)} hosts/min).`
      : `Throughput stops growing at N=${saturatesAtN} (${at.hostsPerMinute.toFixed(1)} hosts/min; no larger N was more than 15 % faster).`,
    `At N=${at.hosts} the machine's ${at.cpu.cores} cores were ${machineFull ? 'saturated' : 'not saturated'} (${at.cpu.machine.toFixed(0)} % of ${100 * at.cpu.cores} %): ${top![0]} used ${top![1].toFixed(0)} %, ${second![0]} ${second![1].toFixed(0)} %, all of dhm's processes ${ours(at).toFixed(0)} %${others > 0.25 * at.cpu.machine ? `, other work on the machine ${others.toFixed(0)} % (a shared machine: absolute figures are pessimistic)` : ''}.`,
    `From N=${first.hosts} to N=${at.hosts}, an activity waited ${first.activityScheduleToStartMs.toFixed(0)} → ${at.activityScheduleToStartMs.toFixed(0)} ms for a worker (median), a move took ${first.activityStartToCloseMs.toFixed(0)} → ${at.activityStartToCloseMs.toFixed(0)} ms, a workflow task ${first.workflowTaskMs.toFixed(0)} → ${at.workflowTaskMs.toFixed(0)} ms, a call to Temporal's SQLite store ${first.temporalPersistence.meanMs.toFixed(1)} → ${at.temporalPersistence.meanMs.toFixed(1)} ms (writing ${first.temporalPersistence.writeBusyPct.toFixed(0)} → ${at.temporalPersistence.writeBusyPct.toFixed(0)} % of the time), and recording a moved VM in Postgres ${first.moveVmPlacementMs.toFixed(0)} → ${at.moveVmPlacementMs.toFixed(0)} ms.`,
  ];
  if (last !== at)
    lines.push(
      `At N=${last.hosts}: ${last.hostsPerMinute.toFixed(1)} hosts/min, workflow tasks ${last.workflowTaskMs.toFixed(0)} ms, SQLite calls ${last.temporalPersistence.meanMs.toFixed(1)} ms, writing ${last.temporalPersistence.writeBusyPct.toFixed(0)} % of the time (slowest in total: ${last.temporalPersistence.top.map((o) => `${o.operation} ${o.meanMs.toFixed(1)} ms × ${o.calls}`).join(', ')}), the machine ${last.cpu.machine.toFixed(0)} % busy.`,
    );
  if (last.errors.length) lines.push(`N=${last.hosts} failed: ${last.errors.join('; ')}.`);
  return lines.join(' ');
}

/** An error's message and its causes', outermost first ("Workflow execution failed: <the workflow's failure>: …"). */
function failureChain(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err; e !== undefined && parts.length < 5; e = (e as { cause?: unknown }).cause) parts.push(e instanceof Error ? e.message : String(e));
  return parts.join(': ');
}

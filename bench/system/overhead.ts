import type { WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { startMigration } from '../../client/migrations';
import type { Fleet } from '../../common/fleet';
import { cpuMeter, type CpuFigures } from './cpu';
import { historyFigures, type HistoryFigures } from './history';
import type { BenchStack } from './stack';
import type { CallStats } from './stopwatch';
import { metricsUrl, persistenceBetween, scrape, type PersistenceFigures } from './temporal-metrics';

/**
 * Benchmark 2: what the orchestration itself costs. Hosts whose VMs are tiny (16 MiB, idle) on agents running the sim
 * a million times faster than real time, so a move's transfer takes microseconds of wall time and what is measured is
 * everything else: the workflow's phases, one activity per move (start the agent's job, follow it by long-poll,
 * record the arrival in Postgres), workflow tasks, history. Moves run 64 at a time (the policy's maximum), so the
 * figure is the orchestration's throughput rather than the latency of a few moves in a row.
 */
export interface OverheadFigures {
  vms: number;
  maxParallel: number;
  wallMs: number;
  msPerVm: number;
  eventsPerVm: number;
  history: HistoryFigures;
  cpu: CpuFigures;
  /** The workers' Postgres and agent calls during this migration. */
  calls: Record<string, CallStats>;
  /** The Temporal dev server's persistence (SQLite) calls during the migration. */
  temporalPersistence: PersistenceFigures;
  phase: string;
}

export const OVERHEAD_ZONE = 'bench-overhead';
const CLASS = 'xl';
const CAPACITY = { vcpus: 1024, memoryMiB: 1024 * 1024, diskGiB: 100_000 };
export const OVERHEAD_TIME_SCALE = 1_000_000;
export const OVERHEAD_MAX_PARALLEL = 64;

export function overheadFleet(sizes: number[]): Fleet {
  return {
    zones: [OVERHEAD_ZONE],
    resourceClasses: { [CLASS]: CAPACITY },
    servers: sizes.flatMap((_, i) =>
      ['src', 'dst'].map((role) => ({
        id: `ovh-${i}-${role}`,
        zone: OVERHEAD_ZONE,
        resourceClass: CLASS,
        capacity: CAPACITY,
        nicBandwidthBps: 10e9,
        agentPort: 0,
        backend: 'sim' as const,
      })),
    ),
  };
}

export async function benchOverhead(stack: BenchStack, sizes: number[], log: (line: string) => void): Promise<OverheadFigures[]> {
  await stack.addFleet(overheadFleet(sizes), OVERHEAD_TIME_SCALE);
  const out: OverheadFigures[] = [];
  for (const vms of sizes) {
    const host = await stack.createHost({ zone: OVERHEAD_ZONE, resourceClass: CLASS, vms: Array.from({ length: vms }, () => ({ memoryMiB: 16 })) });
    await stack.workerStats({ reset: true });
    const metrics = metricsUrl(stack.serverPids().temporal[0]);
    const metricsBefore = await scrape(metrics);
    const cpu = cpuMeter(stack);
    const started = performance.now();
    const handle = (await startMigration(stack.client, stack.taskQueue, {
      dedicatedHostId: host.hostId,
      policy: { maxParallel: OVERHEAD_MAX_PARALLEL, order: 'largest-first' },
      requestedBy: 'bench',
    })) as WorkflowHandleWithFirstExecutionRunId;
    const result = await handle.result();
    const wallMs = performance.now() - started;
    const cpuFigures = cpu();
    const calls = await stack.workerStats({ reset: true });
    const temporalPersistence = persistenceBetween(metricsBefore, await scrape(metrics), wallMs);
    if (result.phase !== 'completed' || result.counts.moved !== vms)
      throw new Error(`overhead host of ${vms} VMs ended ${result.phase} with ${result.counts.moved} moved`);
    const history = await historyFigures(stack.client, handle.workflowId, handle.firstExecutionRunId);
    const figures: OverheadFigures = {
      vms,
      maxParallel: OVERHEAD_MAX_PARALLEL,
      wallMs,
      msPerVm: wallMs / vms,
      eventsPerVm: history.events / vms,
      history,
      cpu: cpuFigures,
      calls,
      temporalPersistence,
      phase: result.phase,
    };
    log(`  ${vms} VMs: ${wallMs.toFixed(0)} ms, ${figures.msPerVm.toFixed(1)} ms/VM, ${figures.eventsPerVm.toFixed(1)} events/VM`);
    out.push(figures);
  }
  return out;
}

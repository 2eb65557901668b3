import type { WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import type { Via } from '../../api/host-service';
import { startMigration } from '../../client/migrations';
import type { Fleet } from '../../common/fleet';
import { statusQuery } from '../../workflows/messages';
import { autoSchedulePolicy } from '../../workflows/vm-order';
import { cpuMeter, type CpuFigures } from './cpu';
import { measureUpdateFloor, type UpdateFloor } from './floor/measure';
import { quantile } from './history';
import type { BenchStack } from './stack';

/**
 * Benchmark 3: how quickly tenants get answers while their host migrates. A 100-VM host migrates under dhm's policy
 * while a tenant sends `provisionVm`/`deleteVm` requests to it at a steady rate (a new VM, then the oldest one it
 * created, and so on), and another tenant sends the same requests at the same rate to a host that is not migrating
 * (the normal path: inventory + agent). Both go through the host service — the code the HTTP API calls — which routes a
 * migrating host's requests to the workflow's updates. Both streams run side by side, so they share the machine's load.
 * Requests are open-loop: each starts on its tick whether or not the previous one has answered.
 */
export interface LatencyStats {
  requests: number;
  errors: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  maxMs: number;
  /** How many were served by each path (a request that met the migration's end is served by the normal path after it). */
  via: Partial<Record<Via, number>>;
}

export interface TenantLatencyFigures {
  vms: number;
  ratePerSecond: number;
  migrationWallMs: number;
  migrating: LatencyStats;
  normal: LatencyStats;
  /** migrating p99 / normal p99. */
  p99Ratio: number;
  /** The first request on each path, sent before the timed streams and left out of their figures (cold caches, connections). */
  warmUpMs: { migrating: number; normal: number };
  /** Temporal's own update round trip on the same dev server (a trivial workflow), measured before the migration. */
  updateFloor: UpdateFloor;
  cpu: CpuFigures;
  errorMessages: string[];
}

export const LATENCY_ZONE = 'bench-latency';
const CLASS = 'l';
const CAPACITY = { vcpus: 512, memoryMiB: 512 * 1024, diskGiB: 100_000 };

export function latencyFleet(): Fleet {
  return {
    zones: [LATENCY_ZONE],
    resourceClasses: { [CLASS]: CAPACITY },
    servers: [1, 2, 3].map((i) => ({
      id: `lat-${i}`,
      zone: LATENCY_ZONE,
      resourceClass: CLASS,
      capacity: CAPACITY,
      nicBandwidthBps: 10e9,
      agentPort: 0,
      backend: 'sim' as const,
    })),
  };
}

interface Sample {
  ms: number;
  ok: boolean;
  via?: Via;
  error?: string;
}

function stats(samples: Sample[]): LatencyStats {
  const ok = samples.filter((s) => s.ok).map((s) => s.ms);
  const via: Partial<Record<Via, number>> = {};
  for (const s of samples) if (s.via) via[s.via] = (via[s.via] ?? 0) + 1;
  return {
    requests: samples.length,
    errors: samples.filter((s) => !s.ok).length,
    p50Ms: quantile(ok, 0.5),
    p95Ms: quantile(ok, 0.95),
    p99Ms: quantile(ok, 0.99),
    maxMs: ok.length ? Math.max(...ok) : NaN,
    via,
  };
}

/** A tenant's steady stream of requests to one host: even ticks create a VM, odd ticks delete its oldest one. */
function requestStream(stack: BenchStack, host: { hostId: string; tenantId: string }, tag: string, ratePerSecond: number) {
  const samples: Sample[] = [];
  const inFlight = new Set<Promise<void>>();
  const created: string[] = [];
  let tick = 0;
  let timer: NodeJS.Timeout | undefined;
  const timed = async (fn: () => Promise<{ via: Via }>) => {
    const started = performance.now();
    try {
      const { via } = await fn();
      samples.push({ ms: performance.now() - started, ok: true, via });
    } catch (err) {
      const type = (err as { type?: string; code?: string }).type ?? (err as { code?: string }).code;
      const cause = (err as { cause?: { message?: string } }).cause?.message;
      const message = err instanceof Error ? err.message : String(err);
      samples.push({ ms: performance.now() - started, ok: false, error: [type, message, cause].filter(Boolean).join(': ') });
    }
  };
  const fire = () => {
    const i = tick++;
    const victim = i % 2 === 1 ? created.shift() : undefined;
    const p = victim
      ? timed(() => stack.hostService.deleteVm({ vmId: victim, tenantId: host.tenantId, requestId: `${tag}-del-${i}`, actor: `tenant:${host.tenantId}` }))
      : timed(async () => {
          const vmId = `${tag}-${i}`;
          const r = await stack.hostService.createVm({
            dedicatedHostId: host.hostId,
            tenantId: host.tenantId,
            vmId,
            name: vmId,
            spec: { vcpus: 1, memoryMiB: 256, diskGiB: 1 },
            requestId: `${tag}-new-${i}`,
            actor: `tenant:${host.tenantId}`,
          });
          created.push(vmId);
          return r;
        });
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
  };
  return {
    start() {
      const period = 1000 / ratePerSecond;
      const t0 = performance.now();
      const next = () => {
        fire();
        // Steady rate: the next tick is scheduled from the stream's start, not from this one (no drift).
        timer = setTimeout(next, Math.max(0, t0 + tick * period - performance.now()));
      };
      next();
    },
    async stop(): Promise<Sample[]> {
      clearTimeout(timer);
      await Promise.all([...inFlight]);
      return samples;
    },
  };
}

export async function benchTenantLatency(
  stack: BenchStack,
  opts: { vms: number; ratePerSecond: number; timeScale: number },
  log: (line: string) => void,
): Promise<TenantLatencyFigures> {
  await stack.addFleet(latencyFleet(), opts.timeScale);
  // Mostly idle guests of 1 GiB: the migration lasts ΣM/B ≈ 86 simulated seconds for 100 VMs.
  const vms = Array.from({ length: opts.vms }, (_, i) => ({ memoryMiB: 1024, dirtyRateMiBps: (i % 5) * 4, workingSetMiB: 64 }));
  const migratingHost = await stack.createHost({ zone: LATENCY_ZONE, resourceClass: CLASS, vms });
  const normalHost = await stack.createHost({ zone: LATENCY_ZONE, resourceClass: CLASS, vms: vms.slice(0, 10) });
  const policy = autoSchedulePolicy({ nicBandwidthBps: 10e9, streamCapFraction: 0.4 });
  // What any update costs here, before dhm adds its work: the part of the migrating path no dhm change can remove.
  const updateFloor = await measureUpdateFloor({ client: stack.client, temporalAddress: stack.dev.temporalAddress, requests: 60 });
  log(
    `  Temporal update floor (quiet, trivial workflow): p50 ${updateFloor.bare.p50Ms.toFixed(0)} ms bare, ${updateFloor.withLocalActivity.p50Ms.toFixed(0)} ms with a no-op local activity`,
  );
  const cpu = cpuMeter(stack);
  const started = performance.now();
  const handle = (await startMigration(stack.client, stack.taskQueue, {
    dedicatedHostId: migratingHost.hostId,
    policy,
    requestedBy: 'bench',
  })) as WorkflowHandleWithFirstExecutionRunId;
  // Tenants' requests start once VMs are moving (before that, updates wait for the clone to be ready).
  for (;;) {
    const st = await handle.query(statusQuery);
    if (st.phase === 'migrating-vms' || st.phase === 'finalizing' || st.phase === 'completed') break;
    if (st.phase === 'failed' || st.phase === 'rolled-back') throw new Error(`latency host migration ended ${st.phase}: ${st.lastError}`);
    await new Promise((r) => setTimeout(r, 100)); // poll until the phase changes
  }
  // One untimed request on each path first: the first update a migration serves and the first placement on a host
  // pay for cold connections and code paths once (the first update took ~180 ms against ~60 after it), which would
  // otherwise be the p99 of a 50-request sample. Steady-state latency is what the figures are about.
  const warmUp = async (host: { hostId: string; tenantId: string }, tag: string) => {
    const t0 = performance.now();
    const vmId = `${tag}-warm-up`;
    const spec = { vcpus: 1, memoryMiB: 256, diskGiB: 1 };
    await stack.hostService.createVm({
      dedicatedHostId: host.hostId,
      tenantId: host.tenantId,
      vmId,
      name: vmId,
      spec,
      requestId: `${tag}-warm-up`,
      actor: `tenant:${host.tenantId}`,
    });
    return performance.now() - t0;
  };
  const [warmM, warmN] = await Promise.all([warmUp(migratingHost, 'lm'), warmUp(normalHost, 'ln')]);
  const migrating = requestStream(stack, migratingHost, 'lm', opts.ratePerSecond);
  const normal = requestStream(stack, normalHost, 'ln', opts.ratePerSecond);
  migrating.start();
  normal.start();
  const result = await handle.result();
  const migrationWallMs = performance.now() - started;
  const cpuFigures = cpu();
  const [m, n] = await Promise.all([migrating.stop(), normal.stop()]);
  if (result.phase !== 'completed') throw new Error(`latency host migration ended ${result.phase}`);
  const ms = stats(m);
  const ns = stats(n);
  log(
    `  migrating host: p50 ${ms.p50Ms.toFixed(0)} / p95 ${ms.p95Ms.toFixed(0)} / p99 ${ms.p99Ms.toFixed(0)} ms over ${ms.requests}; normal path: p50 ${ns.p50Ms.toFixed(0)} / p95 ${ns.p95Ms.toFixed(0)} / p99 ${ns.p99Ms.toFixed(0)} ms over ${ns.requests}`,
  );
  return {
    vms: opts.vms,
    ratePerSecond: opts.ratePerSecond,
    migrationWallMs,
    migrating: ms,
    normal: ns,
    p99Ratio: ms.p99Ms / ns.p99Ms,
    warmUpMs: { migrating: warmM, normal: warmN },
    updateFloor,
    cpu: cpuFigures,
    errorMessages: [...new Set([...m, ...n].flatMap((s) => (s.error ? [s.error] : [])))].slice(0, 5),
  };
}

import { SimClock } from '../../compute/sim/clock';
import { SimLink } from '../../compute/sim/link';
import { DEFAULT_MAX_ROUNDS, SWITCHOVER_COST_MS } from '../../compute/sim/precopy';
import { SimVmMove } from '../../compute/sim/vm-move';
import type { BenchVm } from './host-mix';

/**
 * Benchmark 1's engine: the `sim` backend's own move model (`SimVmMove`: the local-disk mirror, then the memory
 * pre-copy alongside its writes) on its own NIC model (`SimLink`: max-min
 * fair sharing recomputed at every event, per-stream cap S), driven in-process on a virtual clock that jumps from
 * event to event instead of following the wall clock — no agents, no HTTP — so a 128-VM host that takes half an hour
 * of simulated time runs in milliseconds. Every schedule goes through this one function; schedules differ only in
 * how many streams they run, in what order, which VMs get auto-converge and each move's bandwidth cap — the knobs of
 * the workflow's policy.
 *
 * Like the workflow, a slot frees when a move has ended (switchover included) and the next VM in the schedule's order
 * starts at once; a VM that does not converge is either retried with auto-converge after every other VM (the policy's
 * `retry-with-auto-converge`) or left on the source.
 */

/** Simulated time that only moves when the driver says so; the link's own wall-clock timer never fires. */
class VirtualClock extends SimClock {
  t = 0;
  constructor() {
    super(1);
  }
  override now(): number {
    return this.t;
  }
  override wallDelayUntil(): number {
    return 2 ** 30; // the driver advances the link itself
  }
}

export interface Schedule {
  name: string;
  /** Concurrent streams; Infinity for all at once. */
  maxParallel: number;
  /** The VMs in the order they start. */
  order(vms: BenchVm[]): BenchVm[];
  /** Auto-converge on the VM's first attempt. */
  autoConverge(vm: BenchVm): boolean;
  /** The downtime the agent aims for (the policy's `maxDowntimeMs`). */
  maxDowntimeMs: number;
  /**
   * The bandwidth cap (bytes/s; undefined: none) of `vm`'s move as it starts, given where the host's other VMs are
   * (the workflow's `bandwidthCapFor` on the policy; without a critical-path VM, its `bandwidthCapBps`).
   */
  bandwidthCapBps(vm: BenchVm, host: { moving: BenchVm[]; waiting: BenchVm[]; moved: BenchVm[] }): number | undefined;
  /** `retry-with-auto-converge`: a VM that did not converge goes again after every other VM, with auto-converge on. */
  onNotConverging: 'retry-with-auto-converge' | 'give-up';
}

export interface LinkSpec {
  /** NIC bandwidth B, bytes/s. */
  bytesPerSec: number;
  /** Per-stream cap S as a fraction of B. */
  streamCapFraction: number;
}

export interface VmOutcome {
  vmId: string;
  /** `stayed`: it never converged and the schedule gave up on it (the host is not empty). */
  outcome: 'moved' | 'stayed';
  attempts: number;
  firstTryConverged: boolean;
  /** First attempt's start, last attempt's end (simulated ms). */
  startMs: number;
  endMs: number;
  downtimeMs: number | null;
  bytesSent: number;
  rounds: number;
  /** Auto-converge throttle the guest ended with, %. */
  throttlePct: number;
  /** The last attempt's own stream cap, bytes/s: min(S, the move's bandwidth cap). */
  capBps: number;
}

export interface EvacuationResult {
  schedule: string;
  vms: number;
  makespanS: number;
  /** Σ(M + D)/B: every byte of memory and of local-disk data crosses the link at least once. */
  lowerBoundS: number;
  /** makespan / (Σ(M + D)/B). */
  ratio: number;
  /** max(Σ(M + D)/B, max (M + D)/S): also no VM can move faster than one stream's cap. */
  streamBoundS: number;
  ratioToStreamBound: number;
  maxDowntimeMs: number;
  p95DowntimeMs: number;
  bytesSent: number;
  /** bytes sent / Σ(memory + disk data). */
  bytesRatio: number;
  /** VMs whose first attempt did not converge. */
  nonConverged: number;
  /** VMs left on the source at the end (only when the schedule gives up on them). */
  stayed: number;
  /** VMs whose guest auto-converge slowed down (throttle > 0). */
  throttled: number;
  /** VMs whose (last) move ran with a bandwidth cap below one stream's cap S. */
  capped: number;
  /** How full the link was on average until the makespan. */
  linkUtilisation: number;
  perVm: VmOutcome[];
}

/** Nearest-rank percentile (the value at rank ⌈p·n⌉): for 8 VMs the p95 is the worst one. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length))) - 1]!;
}

/** What a VM's move sends at least once: its memory and the data on its local disks. */
const moveBytes = (v: BenchVm) => v.memoryBytes + v.diskBytes;

export function lowerBoundS(vms: BenchVm[], link: LinkSpec): number {
  return vms.reduce((s, v) => s + moveBytes(v), 0) / link.bytesPerSec;
}

export function streamBoundS(vms: BenchVm[], link: LinkSpec): number {
  const largest = Math.max(0, ...vms.map(moveBytes));
  return Math.max(lowerBoundS(vms, link), largest / (link.streamCapFraction * link.bytesPerSec));
}

interface Attempt {
  vm: BenchVm;
  move: SimVmMove;
  capBps: number;
  autoConverge: boolean;
  startMs: number;
  pausedAt?: number;
  copiedAt?: number;
  /** When the slot frees: the switchover has ended, or the stream gave up. */
  releaseAt?: number;
}

/** Evacuates one host under one schedule; deterministic for the same inputs. */
export function simulateEvacuation(vmsIn: BenchVm[], schedule: Schedule, link: LinkSpec): EvacuationResult {
  if (vmsIn.length === 0) throw new Error('a host to evacuate needs at least one VM');
  const clock = new VirtualClock();
  const simLink = new SimLink(link.bytesPerSec, clock, (err) => {
    throw err;
  });
  const queue = schedule.order(vmsIn).map((vm) => ({ vm, retry: false }));
  if (queue.length !== vmsIn.length || new Set(queue.map((q) => q.vm.vmId)).size !== vmsIn.length)
    throw new Error(`schedule ${schedule.name} lost or repeated VMs`);
  const streamCap = link.streamCapFraction * link.bytesPerSec;
  const running: Attempt[] = [];
  const moved: BenchVm[] = [];
  const attempts = new Map<string, Attempt[]>();
  let busyIntegral = 0; // ∫ used bandwidth dt, bytes

  const launch = () => {
    while (running.length < schedule.maxParallel && queue.length > 0) {
      const { vm, retry } = queue.shift()!;
      const autoConverge = retry || schedule.autoConverge(vm);
      const a = { vm, autoConverge, startMs: clock.t } as Attempt;
      // The moves in flight (those started just before in this same loop included) and the VMs still to go.
      const cap = schedule.bandwidthCapBps(vm, { moving: running.map((r) => r.vm), waiting: queue.map((q) => q.vm), moved: [...moved] });
      a.capBps = Math.min(streamCap, cap ?? Infinity);
      a.move = new SimVmMove(
        simLink,
        {
          memoryBytes: vm.memoryBytes,
          dirtyRateBps: vm.dirtyRateBps,
          workingSetBytes: vm.workingSetBytes,
          diskBytes: vm.diskBytes,
          diskWriteBps: vm.diskWriteBps,
          maxDowntimeMs: schedule.maxDowntimeMs,
          autoConverge,
          maxRounds: DEFAULT_MAX_ROUNDS,
          // As the sim backend computes it: min(S, the migration's bandwidthCapBps).
          capBps: a.capBps,
          failAtRound: null,
        },
        {
          onPause: (t) => (a.pausedAt = t),
          onCopied: (t) => {
            a.copiedAt = t;
            a.releaseAt = t + SWITCHOVER_COST_MS;
          },
          onGiveUp: (t) => {
            a.releaseAt = t;
            a.move.stop();
          },
        },
      );
      a.move.start();
      running.push(a);
      attempts.set(vm.vmId, [...(attempts.get(vm.vmId) ?? []), a]);
    }
  };

  try {
    launch();
    for (let guard = 0; running.length > 0; guard++) {
      if (guard > 10_000_000) throw new Error(`schedule ${schedule.name}: the simulation does not end`);
      // Next event: a chunk ending on the link, or a slot freeing after a switchover.
      let next = Infinity;
      let used = 0;
      for (const a of running) {
        if (a.releaseAt !== undefined) next = Math.min(next, a.releaseAt);
        else {
          next = Math.min(next, a.move.nextChunkEndMs(clock.t));
          used += a.move.rateBps();
        }
      }
      if (!Number.isFinite(next)) throw new Error(`schedule ${schedule.name}: streams on the link but none is moving`);
      // A chunk so small that its end rounds to "now": step a hair forward so the link's float slack finishes it.
      if (next <= clock.t) next = clock.t + Math.max(1e-9, clock.t * 1e-14);
      busyIntegral += (used * (next - clock.t)) / 1000;
      clock.t = next;
      simLink.sync();
      for (let i = running.length - 1; i >= 0; i--) {
        const a = running[i]!;
        if (a.releaseAt === undefined || a.releaseAt > clock.t) continue;
        running.splice(i, 1);
        if (a.copiedAt !== undefined) moved.push(a.vm);
        if (a.copiedAt === undefined && !a.autoConverge && schedule.onNotConverging === 'retry-with-auto-converge') queue.push({ vm: a.vm, retry: true });
      }
      launch();
    }
  } finally {
    simLink.close();
  }

  const perVm: VmOutcome[] = [...attempts.values()].map((tries) => {
    const first = tries[0]!;
    const last = tries[tries.length - 1]!;
    return {
      vmId: last.vm.vmId,
      outcome: last.copiedAt !== undefined ? 'moved' : 'stayed',
      attempts: tries.length,
      firstTryConverged: first.copiedAt !== undefined,
      startMs: first.startMs,
      endMs: last.releaseAt!,
      downtimeMs: last.copiedAt !== undefined ? last.copiedAt - last.pausedAt! + SWITCHOVER_COST_MS : null,
      bytesSent: tries.reduce((s, a) => s + a.move.bytesSent, 0),
      rounds: tries.reduce((s, a) => s + a.move.precopy.round + 1, 0),
      throttlePct: last.move.precopy.throttlePct,
      capBps: last.capBps,
    };
  });
  perVm.sort((a, b) => (a.vmId < b.vmId ? -1 : a.vmId > b.vmId ? 1 : 0));
  const makespanMs = Math.max(...perVm.map((v) => v.endMs));
  const downtimes = perVm.flatMap((v) => (v.downtimeMs === null ? [] : [v.downtimeMs]));
  const bytesSent = perVm.reduce((s, v) => s + v.bytesSent, 0);
  const memory = vmsIn.reduce((s, v) => s + moveBytes(v), 0);
  const lb = lowerBoundS(vmsIn, link);
  const sb = streamBoundS(vmsIn, link);
  const makespanS = makespanMs / 1000;
  return {
    schedule: schedule.name,
    vms: vmsIn.length,
    makespanS,
    lowerBoundS: lb,
    ratio: makespanS / lb,
    streamBoundS: sb,
    ratioToStreamBound: makespanS / sb,
    maxDowntimeMs: downtimes.length ? Math.max(...downtimes) : NaN,
    p95DowntimeMs: percentile(downtimes, 0.95),
    bytesSent,
    bytesRatio: bytesSent / memory,
    nonConverged: perVm.filter((v) => !v.firstTryConverged).length,
    stayed: perVm.filter((v) => v.outcome === 'stayed').length,
    throttled: perVm.filter((v) => v.throttlePct > 0).length,
    capped: perVm.filter((v) => v.capBps < streamCap).length,
    linkUtilisation: makespanMs > 0 ? busyIntegral / ((link.bytesPerSec * makespanMs) / 1000) : NaN,
    perVm,
  };
}

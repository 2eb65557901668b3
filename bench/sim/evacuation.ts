import { SimClock } from '../../compute/sim/clock';
import { SimLink } from '../../compute/sim/link';
import { CALIBRATED_SWITCHOVER_COST_MS, MOVE_SETUP_MS, ZERO_PAGE_WIRE_BYTES } from '../../compute/sim/calibration';
import { DEFAULT_MAX_ROUNDS } from '../../compute/sim/precopy';
import { SimVmMove } from '../../compute/sim/vm-move';
import type { MoveController } from '../../compute/sim/precopy';
import type { VmMigrationStatus } from '../../common/migration';
import type { BenchVm } from './host-mix';
import { statusOf } from './status';

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
 *
 * What every move pays, whatever the schedule (compute/sim/calibration.ts, measured on the testbed): a fixed set-up of
 * `moveSetupMs` before its first byte, off the link (moves in flight together overlap it); round 0 sends the guest's
 * non-zero memory and a flag per zero page; the switchover is QEMU's rule, and its fixed part is added to the downtime.
 */

/** The simulated world's per-move costs (the testbed's, by default). */
export interface SimWorld {
  /** Set-up of every move before its first byte, off the link, ms. */
  moveSetupMs: number;
  switchoverCostMs: number;
  zeroPageWireBytes: number;
  switchover: 'pass-end' | 'qemu';
}
export const CALIBRATED_WORLD: SimWorld = {
  moveSetupMs: MOVE_SETUP_MS,
  switchoverCostMs: CALIBRATED_SWITCHOVER_COST_MS,
  zeroPageWireBytes: ZERO_PAGE_WIRE_BYTES,
  switchover: 'qemu',
};

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

/** How one move runs: what the schedule decided for it as it starts. */
export interface MoveOptions {
  autoConverge: boolean;
  /** The move's bandwidth cap, bytes/s (undefined: none). */
  bandwidthCapBps: number | undefined;
  /** Migration channels (multifd): the move's cap is min(B, channels × S). */
  channels: number;
  /** The downtime the move aims for at first (a controller may raise it). */
  maxDowntimeMs: number;
  /** The rules of a controller watching the move (downtime ramps, timeouts); fresh for every move. */
  controller?: MoveController;
  /** xbzrle: re-sent pages cost this share. */
  resendFactor?: number;
  /** Post-copy instead of giving up. */
  postCopyOnGiveUp?: boolean;
  /** The agent's own give-up rules apply (default true); off for baselines whose controller decides. */
  agentGivesUp?: boolean;
}

/** The host as a schedule sees it: the workflow's view of every VM (state pending, moving or moved) and the VMs to retry. */
export interface HostView {
  vms: VmMigrationStatus[];
  /** VMs that did not converge once (retried with auto-converge, after the others). */
  forced: ReadonlySet<string>;
}

export interface Schedule {
  name: string;
  /** How many moves may run at once (Infinity: all), or asked before every launch (dhm's: from its moves' figures). */
  streams: number | ((host: HostView) => number);
  /**
   * Which VMs start now to fill `free` slots (ids, in order), or an empty list; `running` are the moves in flight.
   * dhm's is the workflow's `launchOrder`; a cost-based one (vSphere) may start fewer.
   */
  launch(host: HostView, free: number, running: readonly string[]): string[];
  /** The move's settings as it starts (dhm's: the workflow's `moveSettingsFor` on measured inputs). */
  settings(vmId: string, host: HostView): MoveOptions;
  /** `retry-with-auto-converge`: a VM that did not converge goes again after every other VM, with auto-converge on. */
  onNotConverging: 'retry-with-auto-converge' | 'give-up';
  /** The channels per move its bound is computed with (the per-VM bound (M+D)/min(B, channels·S)). Default 1. */
  boundChannels?: number;
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
  /** Guest vCPU-seconds lost to the throttle over the move (throttle share × time): what throttling cost the guest. */
  throttleCpuS: number;
  /** The move ended in post-copy. */
  postCopy: boolean;
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
  /** Guest vCPU-seconds lost to auto-converge over the evacuation. */
  throttleCpuS: number;
  /** Moves that ended in post-copy (the VM's memory split over two servers for a while: the risk). */
  postCopies: number;
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

/** What a VM's move sends at least once: its non-zero memory and the data on its local disks. */
const moveBytes = (v: BenchVm) => v.nonZeroBytes + v.diskBytes;

/**
 * F + Σ(M+D)/B, M the non-zero memory: every such byte crosses the link at least once, and nothing crosses before the
 * first move's set-up F has passed.
 */
export function lowerBoundS(vms: BenchVm[], link: LinkSpec, world: SimWorld = CALIBRATED_WORLD): number {
  return world.moveSetupMs / 1000 + vms.reduce((s, v) => s + moveBytes(v), 0) / link.bytesPerSec;
}

/** max(F + Σ(M+D)/B, F + largest (M+D) / min(B, channels·S)): no VM moves faster than its move's cap. */
export function streamBoundS(vms: BenchVm[], link: LinkSpec, channels = 1, world: SimWorld = CALIBRATED_WORLD): number {
  const largest = Math.max(0, ...vms.map(moveBytes));
  return Math.max(
    lowerBoundS(vms, link, world),
    world.moveSetupMs / 1000 + largest / Math.min(link.bytesPerSec, channels * link.streamCapFraction * link.bytesPerSec),
  );
}

interface Attempt {
  vm: BenchVm;
  move: SimVmMove;
  capBps: number;
  autoConverge: boolean;
  startMs: number;
  /** Its set-up ends then: the move joins the link. */
  onLinkAt: number;
  onLink: boolean;
  /** ∫ throttle dt so far, %·ms (sampled at every event). */
  throttleIntegral: number;
  pausedAt?: number;
  copiedAt?: number;
  /** When the slot frees: the switchover has ended, or the stream gave up. */
  releaseAt?: number;
}

/**
 * Evacuates one host under one schedule; deterministic for the same inputs. The schedule picks the VMs (for dhm: the
 * workflow's `launchOrder`) and each move's settings (the workflow's `moveSettingsFor`); this loop only plays the
 * agents and the clock: it starts what the schedule picks when a slot is free and tells it when a move ends.
 */
export function simulateEvacuation(vmsIn: BenchVm[], schedule: Schedule, link: LinkSpec, world: SimWorld = CALIBRATED_WORLD): EvacuationResult {
  if (vmsIn.length === 0) throw new Error('a host to evacuate needs at least one VM');
  const clock = new VirtualClock();
  const simLink = new SimLink(link.bytesPerSec, clock, (err) => {
    throw err;
  });
  const byId = new Map(vmsIn.map((v) => [v.vmId, v]));
  if (byId.size !== vmsIn.length) throw new Error('VM ids repeat');
  const host: HostView & { forced: Set<string> } = { vms: vmsIn.map((v) => statusOf(v)), forced: new Set() };
  const status = new Map(host.vms.map((v) => [v.vmId, v]));
  const streamCap = link.streamCapFraction * link.bytesPerSec;
  const running: Attempt[] = [];
  const attempts = new Map<string, Attempt[]>();
  let busyIntegral = 0; // ∫ used bandwidth dt, bytes

  const launch = () => {
    const streams = typeof schedule.streams === 'function' ? schedule.streams(host) : schedule.streams;
    const free = streams - running.length;
    if (!(free > 0)) return;
    for (const vmId of schedule.launch(
      host,
      free,
      running.map((r) => r.vm.vmId),
    )) {
      const vm = byId.get(vmId);
      const st = status.get(vmId);
      if (!vm || !st || st.state !== 'pending') throw new Error(`schedule ${schedule.name} started ${vmId}, which is not waiting`);
      const o = schedule.settings(vmId, host);
      st.state = 'moving';
      const a = { vm, autoConverge: o.autoConverge, startMs: clock.t, onLinkAt: clock.t + world.moveSetupMs, onLink: false, throttleIntegral: 0 } as Attempt;
      // As the sim backend computes it: min(B, channels × S, the migration's bandwidthCapBps).
      a.capBps = Math.min(link.bytesPerSec, o.channels * streamCap, o.bandwidthCapBps ?? Infinity);
      a.move = new SimVmMove(
        simLink,
        {
          memoryBytes: vm.memoryBytes,
          nonZeroBytes: vm.nonZeroBytes,
          zeroPageWireBytes: world.zeroPageWireBytes,
          switchover: world.switchover,
          switchoverCostMs: world.switchoverCostMs,
          dirtyRateBps: vm.dirtyRateBps,
          workingSetBytes: vm.workingSetBytes,
          coldDirtyRateBps: vm.coldDirtyRateBps,
          diskBytes: vm.diskBytes,
          diskWriteBps: vm.diskWriteBps,
          maxDowntimeMs: o.maxDowntimeMs,
          autoConverge: o.autoConverge,
          maxRounds: DEFAULT_MAX_ROUNDS,
          capBps: a.capBps,
          failAtRound: null,
          controller: o.controller,
          resendFactor: o.resendFactor,
          postCopyOnGiveUp: o.postCopyOnGiveUp,
          agentGivesUp: o.agentGivesUp,
        },
        {
          onPause: (t) => (a.pausedAt = t),
          onCopied: (t) => {
            a.copiedAt = t;
            a.releaseAt = t + world.switchoverCostMs;
          },
          onGiveUp: (t) => {
            a.releaseAt = t;
            a.move.stop();
          },
        },
      );
      // The set-up (destination started, VM accepted) comes first, off the link.
      if (world.moveSetupMs <= 0) {
        a.move.start();
        a.onLink = true;
      }
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
        else if (!a.onLink) next = Math.min(next, a.onLinkAt);
        else {
          next = Math.min(next, a.move.nextChunkEndMs(clock.t));
          used += a.move.rateBps();
        }
      }
      if (!Number.isFinite(next)) throw new Error(`schedule ${schedule.name}: streams on the link but none is moving`);
      // A chunk so small that its end rounds to "now": step a hair forward so the link's float slack finishes it.
      if (next <= clock.t) next = clock.t + Math.max(1e-9, clock.t * 1e-14);
      busyIntegral += (used * (next - clock.t)) / 1000;
      for (const a of running) if (a.releaseAt === undefined) a.throttleIntegral += a.move.precopy.throttlePct * (next - clock.t);
      clock.t = next;
      simLink.sync();
      for (const a of running)
        if (!a.onLink && a.releaseAt === undefined && a.onLinkAt <= clock.t) {
          a.onLink = true;
          a.move.start();
        }
      for (let i = running.length - 1; i >= 0; i--) {
        const a = running[i]!;
        if (a.releaseAt === undefined || a.releaseAt > clock.t) continue;
        running.splice(i, 1);
        const st = status.get(a.vm.vmId)!;
        if (a.copiedAt !== undefined) {
          st.state = 'moved';
          // What the agent reports, as the workflow keeps it: the move's time on the link and its set-up.
          st.figures = {
            rounds: a.move.precopy.round + 1,
            bytesSent: a.move.bytesSent,
            memoryBytes: a.vm.memoryBytes,
            downtimeMs: a.copiedAt - a.pausedAt! + world.switchoverCostMs,
            totalTimeMs: a.releaseAt - a.onLinkAt,
            setupMs: a.onLinkAt - a.startMs,
          };
        } else {
          const tries = attempts.get(a.vm.vmId)!.length;
          const retry = schedule.onNotConverging === 'retry-with-auto-converge' && !a.autoConverge;
          // Given up: back in the queue to retry (the workflow's retry-with-auto-converge), else it stays on the source.
          if (retry && tries < 2) {
            st.state = 'pending';
            host.forced.add(a.vm.vmId);
          } else st.state = 'failed';
        }
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
      downtimeMs:
        last.copiedAt === undefined
          ? null
          : last.move.precopy.postCopyAtMs !== undefined
            ? world.switchoverCostMs
            : last.copiedAt - last.pausedAt! + world.switchoverCostMs,
      bytesSent: tries.reduce((s, a) => s + a.move.bytesSent, 0),
      rounds: tries.reduce((s, a) => s + a.move.precopy.round + 1, 0),
      throttlePct: last.move.precopy.throttlePct,
      throttleCpuS: tries.reduce((s, a) => s + a.throttleIntegral / 100 / 1000, 0),
      postCopy: last.move.precopy.postCopyAtMs !== undefined,
      capBps: last.capBps,
    };
  });
  perVm.sort((a, b) => (a.vmId < b.vmId ? -1 : a.vmId > b.vmId ? 1 : 0));
  const makespanMs = Math.max(...perVm.map((v) => v.endMs));
  const downtimes = perVm.flatMap((v) => (v.downtimeMs === null ? [] : [v.downtimeMs]));
  const bytesSent = perVm.reduce((s, v) => s + v.bytesSent, 0);
  const memory = vmsIn.reduce((s, v) => s + moveBytes(v), 0);
  const lb = lowerBoundS(vmsIn, link, world);
  const sb = streamBoundS(vmsIn, link, schedule.boundChannels ?? 1, world);
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
    throttleCpuS: perVm.reduce((s, v) => s + v.throttleCpuS, 0),
    postCopies: perVm.filter((v) => v.postCopy).length,
    linkUtilisation: makespanMs > 0 ? busyIntegral / ((link.bytesPerSec * makespanMs) / 1000) : NaN,
    perVm,
  };
}

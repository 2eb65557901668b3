import { dirtiedBytes, type DirtyModel } from './dirty-model';
import type { Flow } from './link';

/**
 * The pre-copy model of one migration stream (see DESIGN.md, "The `sim` backend's pre-copy model"), as a flow on the
 * source server's link. Pure and synchronous: the link tells it when each chunk ends, it decides what comes next.
 *
 * Round 0 sends all memory M. Round i sends what the guest dirtied during round i−1: D·duration, at most the
 * writable working set W. When a round ends and what is dirty could be sent within `maxDowntimeMs` at the stream's
 * current rate, the VM pauses and that rest is sent (the stop-and-copy); downtime = rest / rate + SWITCHOVER_COST_MS.
 * Without auto-converge the stream gives up (`NotConverging`) once `maxRounds` rounds have not converged or more
 * than 3·M has been sent (Xen's rules). With auto-converge it keeps going, throttling the guest instead.
 * "Rate" is the stream's share of the NIC at that instant; the stop-and-copy is itself sent on the link, so if the
 * sharing changes during it (another migration ends), the downtime is the time it really took.
 */

/** Fixed cost of a switchover (stop the vCPUs, move device state, start on the target), simulated ms. */
export const SWITCHOVER_COST_MS = 5;
export const DEFAULT_MAX_ROUNDS = 30;
/** Give up once more than this many times the VM's memory has been sent (without auto-converge). */
export const MAX_SENT_FACTOR = 3;
/**
 * QEMU's auto-converge: the first throttle step is 20 %, then +10 % per step, at most 99 %. A step happens after a
 * round that is not converging — QEMU's trigger: the guest dirtied more than half of what the round sent.
 */
export const AUTO_CONVERGE = { initialPct: 20, stepPct: 10, maxPct: 99, triggerRatio: 0.5 } as const;
/** Even auto-converge gives up eventually (a 99 %-throttled guest that still out-dirties the link). */
export const AUTO_CONVERGE_ROUND_LIMIT = 1000;

export interface PrecopyParams {
  memoryBytes: number;
  /** Unthrottled dirty rate D of the hot set, bytes/s. */
  dirtyRateBps: number;
  /** The hot set W, bytes. */
  workingSetBytes: number;
  /** The cold set's writes, bytes/s (dirty-model.ts; 0 or omitted: no cold writes, the model min(W, D·t)). */
  coldDirtyRateBps?: number;
  /** The cold set C, bytes (default: memory − W). */
  coldBytes?: number;
  maxDowntimeMs: number;
  autoConverge: boolean;
  maxRounds: number;
  /** This stream's own cap, bytes/s: min(per-stream cap S, the migration's bandwidthCapBps). */
  capBps: number;
  /** Injected fault: fail when this round begins. */
  failAtRound: number | null;
}

export interface PrecopyEvents {
  /** The rest fits the downtime limit: pause the VM now (the stop-and-copy starts at `tMs`). */
  onPause(tMs: number): void;
  /** Everything has been sent at `tMs`; the VM may start on the target once the switchover cost has passed. */
  onCopied(tMs: number): void;
  onGiveUp(tMs: number, code: 'NotConverging' | 'InjectedFault', message: string): void;
}

export type PrecopyPhase = 'precopy' | 'stop-copy' | 'copied' | 'gave-up';

export class PrecopyFlow implements Flow {
  readonly capBps: number;
  pending: number;
  rateBps = 0;
  phase: PrecopyPhase = 'precopy';
  round = 0;
  bytesSent = 0;
  throttlePct = 0;
  pausedAtMs: number | undefined;
  copiedAtMs: number | undefined;
  /** Last non-zero rate: what the stream was getting when it stopped. */
  lastRateBps = 0;
  /** Simulated time the first byte went out; set by `start`. */
  startMs: number | undefined;
  private roundStartMs = 0;
  private roundBytes: number;
  readonly dirtyModel: DirtyModel;

  constructor(
    private readonly p: PrecopyParams,
    private readonly events: PrecopyEvents,
  ) {
    this.capBps = p.capBps;
    this.pending = p.memoryBytes;
    this.roundBytes = p.memoryBytes;
    this.dirtyModel = {
      hotBytes: p.workingSetBytes,
      hotRateBps: p.dirtyRateBps,
      coldBytes: p.coldBytes ?? Math.max(0, p.memoryBytes - p.workingSetBytes),
      coldRateBps: p.coldDirtyRateBps ?? 0,
    };
  }

  get memoryBytes(): number {
    return this.p.memoryBytes;
  }

  /** Call with the simulated time the flow joined the link (what `SimLink.add` returns). */
  start(tMs: number): void {
    this.startMs = tMs;
    this.roundStartMs = tMs;
  }

  /** The guest's write rate (hot and cold) after auto-converge throttling, bytes/s. */
  dirtyRateBps(): number {
    return ((this.p.dirtyRateBps + this.dirtyModel.coldRateBps) * (100 - this.throttlePct)) / 100;
  }

  /** What the guest has dirtied since the current round began, at `tMs`. */
  dirtiedAt(tMs: number): number {
    if (this.phase !== 'precopy' || this.startMs === undefined) return 0;
    return dirtiedBytes(this.dirtyModel, tMs - this.roundStartMs, this.throttlePct);
  }

  /** What still has to be sent, as of `tMs`. */
  remainingAt(tMs: number): number {
    return this.pending + this.dirtiedAt(tMs);
  }

  onSent(bytes: number): void {
    this.bytesSent += bytes;
    if (this.rateBps > 0) this.lastRateBps = this.rateBps;
  }

  onChunkDone(tMs: number): boolean {
    if (this.phase === 'stop-copy') return this.copied(tMs);
    const rest = this.dirtiedAt(tMs);
    const rate = this.rateBps > 0 ? this.rateBps : this.lastRateBps;
    if ((rest / rate) * 1000 <= this.p.maxDowntimeMs) {
      this.phase = 'stop-copy';
      this.pausedAtMs = tMs;
      this.events.onPause(tMs);
      if (rest <= 0) return this.copied(tMs);
      this.pending = rest;
      return true;
    }
    if (this.p.autoConverge) {
      if (rest > AUTO_CONVERGE.triggerRatio * this.roundBytes)
        this.throttlePct = this.throttlePct === 0 ? AUTO_CONVERGE.initialPct : Math.min(AUTO_CONVERGE.maxPct, this.throttlePct + AUTO_CONVERGE.stepPct);
      if (this.round + 1 >= AUTO_CONVERGE_ROUND_LIMIT)
        return this.giveUp(tMs, 'NotConverging', `not converging after ${this.round + 1} rounds even with auto-converge`);
    } else if (this.round + 1 >= this.p.maxRounds) {
      return this.giveUp(tMs, 'NotConverging', `not converging after ${this.round + 1} rounds (maxRounds ${this.p.maxRounds})`);
    } else if (this.bytesSent > MAX_SENT_FACTOR * this.p.memoryBytes) {
      return this.giveUp(tMs, 'NotConverging', `sent ${this.bytesSent} bytes, more than ${MAX_SENT_FACTOR}× the VM's memory`);
    }
    this.round += 1;
    this.roundStartMs = tMs;
    this.roundBytes = rest;
    this.pending = rest;
    if (this.p.failAtRound === this.round) return this.giveUp(tMs, 'InjectedFault', `injected failure at round ${this.round}`);
    return true;
  }

  private copied(tMs: number): boolean {
    this.phase = 'copied';
    this.copiedAtMs = tMs;
    this.pending = 0;
    this.events.onCopied(tMs);
    return false;
  }

  private giveUp(tMs: number, code: 'NotConverging' | 'InjectedFault', message: string): boolean {
    this.phase = 'gave-up';
    this.pending = 0;
    this.events.onGiveUp(tMs, code, message);
    return false;
  }
}

import { dirtiedBytes, type DirtyModel } from './dirty-model';
import type { Flow } from './link';
import { MAX_SENT_FACTOR, sentTooMuch } from '../migration-job';

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

/**
 * Fixed cost of a switchover (stop the vCPUs, move device state, start on the target), simulated ms: the `sim`
 * backend's default. Benchmark 1 runs the testbed's figure instead (calibration.ts, CALIBRATED_SWITCHOVER_COST_MS).
 */
export const SWITCHOVER_COST_MS = 5;
/** Bytes a zero page costs on the wire: QEMU sends a flag and the page's offset, not the page (calibration.ts). */
export const PAGE_BYTES = 4096;
export { DEFAULT_MAX_ROUNDS } from '../migration-job';
/** QEMU sends for at most this long per iteration of its migration thread, then checks (migration/ram.c MAX_WAIT). */
export const QEMU_ITERATION_MS = 50;
/**
 * QEMU's auto-converge: the first throttle step is 20 %, then +10 % per step, at most 99 %. A step happens after a
 * round that is not converging — QEMU's trigger: the guest dirtied more than half of what the round sent.
 */
export const AUTO_CONVERGE = { initialPct: 20, stepPct: 10, maxPct: 99, triggerRatio: 0.5 } as const;
/** Even auto-converge gives up eventually (a 99 %-throttled guest that still out-dirties the link). */
export const AUTO_CONVERGE_ROUND_LIMIT = 1000;
/** Without the agent's give-up rules (a controller's timeouts decide), the simulation still ends after this many rounds. */
export const CONTROLLED_ROUND_LIMIT = 1_000_000;

export interface PrecopyParams {
  memoryBytes: number;
  /**
   * The guest's non-zero memory, bytes (default: all of it). Round 0 sends these pages; the rest are zero pages, which
   * QEMU sends as a flag (`zeroPageWireBytes` each, calibration.ts), and the guest's writes land in this part.
   */
  nonZeroBytes?: number;
  /** Wire bytes per zero page (default 0: the earlier model, where every page was sent whole). */
  zeroPageWireBytes?: number;
  /**
   * When the move switches over. 'pass-end' (default, the sim backend's model its tests check): at the end of a full
   * pass, if what the guest dirtied meanwhile fits the limit. 'qemu': QEMU's own rule (calibration.ts,
   * QEMU_SWITCHOVER): once the pass's unsent pages fall under bandwidth × limit, re-sync the dirty bitmap and switch
   * if unsent + newly dirtied still fits; else that sync starts the next round.
   */
  switchover?: 'pass-end' | 'qemu';
  /** The switchover's fixed part, ms (default SWITCHOVER_COST_MS). */
  switchoverCostMs?: number;
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
  /**
   * Rules of a controller that watches the move (benchmark 1's baselines: Nova's downtime ramp and completion timeout,
   * KubeVirt's progress and completion timeouts, Proxmox's downtime doubling), asked at the end of every round that
   * has not converged. Omitted: the agent's own rules only (below).
   */
  controller?: MoveController;
  /** Re-sent pages cost this share of their size (xbzrle's delta encoding); default 1 (no xbzrle). */
  resendFactor?: number;
  /** Switch to post-copy instead of giving up when the give-up rules trigger (QEMU's migrate-start-postcopy). */
  postCopyOnGiveUp?: boolean;
  /**
   * The agent's own give-up rules (maxRounds, 3·M sent) apply. Default true. A baseline whose controller has its own
   * timeouts (Nova, KubeVirt, Proxmox: QEMU itself never gives up) turns them off.
   */
  agentGivesUp?: boolean;
}

/** What a controller sees at the end of a round that did not converge. */
export interface RoundView {
  /** Since the move's memory stream started, ms. */
  elapsedMs: number;
  /** The round that just ended (0: the first full pass). */
  round: number;
  /** Dirty now: what the next round would send, bytes. */
  dirtyBytes: number;
  /** Sent so far, bytes. */
  bytesSent: number;
  /** The downtime limit in force, ms. */
  downtimeLimitMs: number;
}

/**
 * A controller's verdict on a round: keep going (with a new downtime limit, if given), `abort` (the move fails, the
 * VM stays), `pause` (stop the guest and send the rest: Nova's force_complete without post-copy) or `postcopy`.
 */
export type RoundVerdict =
  { action: 'continue'; downtimeLimitMs?: number } | { action: 'abort'; reason: string } | { action: 'pause' } | { action: 'postcopy' };

export interface MoveController {
  onRound(view: RoundView): RoundVerdict;
}

export interface PrecopyEvents {
  /** The rest fits the downtime limit: pause the VM now (the stop-and-copy starts at `tMs`). */
  onPause(tMs: number): void;
  /** Everything has been sent at `tMs`; the VM may start on the target once the switchover cost has passed. */
  onCopied(tMs: number): void;
  onGiveUp(tMs: number, code: 'NotConverging' | 'InjectedFault', message: string): void;
}

export type PrecopyPhase = 'precopy' | 'stop-copy' | 'postcopy' | 'copied' | 'gave-up';

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
  /** When the move switched to post-copy (the VM then runs on the target; its downtime is the switchover only). */
  postCopyAtMs: number | undefined;
  /** The downtime limit in force (a controller may change it). */
  downtimeLimitMs: number;
  /** Last non-zero rate: what the stream was getting when it stopped. */
  lastRateBps = 0;
  /** Simulated time the first byte went out; set by `start`. */
  startMs: number | undefined;
  /** Bytes of the current pass sent so far ('qemu' rule). */
  private roundSent = 0;
  private roundStartMs = 0;
  private roundBytes: number;
  /** 'qemu' rule: bytes of the current pass not yet sent (QEMU's migration_dirty_pages); `pending` is the next chunk. */
  private passLeft: number;
  readonly dirtyModel: DirtyModel;
  /** The switchover's fixed part this move pays, ms (added to the stop-and-copy time for its downtime). */
  readonly switchoverCostMs: number;

  constructor(
    private readonly p: PrecopyParams,
    private readonly events: PrecopyEvents,
  ) {
    this.capBps = p.capBps;
    this.downtimeLimitMs = p.maxDowntimeMs;
    this.switchoverCostMs = p.switchoverCostMs ?? SWITCHOVER_COST_MS;
    const nonZero = Math.min(p.memoryBytes, p.nonZeroBytes ?? p.memoryBytes);
    const zeroPages = Math.max(0, p.memoryBytes - nonZero) / PAGE_BYTES;
    // Round 0: every non-zero page whole, every zero page as its flag.
    this.pending = nonZero + zeroPages * (p.zeroPageWireBytes ?? 0);
    this.roundBytes = this.pending;
    this.passLeft = this.pending;
    this.dirtyModel = {
      hotBytes: Math.min(p.workingSetBytes, nonZero),
      hotRateBps: p.dirtyRateBps,
      coldBytes: p.coldBytes ?? Math.max(0, nonZero - p.workingSetBytes),
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
    if (this.p.switchover === 'qemu') this.planChunk();
  }

  /**
   * 'qemu' rule: the next chunk sends the pass down to where QEMU next looks at it. QEMU's migration thread checks
   * after every iteration of at most QEMU_ITERATION_MS of sending (migration/ram.c MAX_WAIT), so it first sees the
   * unsent part under the threshold B·limit somewhere in the last iteration's worth: half of one on average.
   */
  private planChunk(): void {
    const rate = this.rateBps > 0 ? this.rateBps : this.lastRateBps > 0 ? this.lastRateBps : this.capBps;
    const threshold = (rate * this.downtimeLimitMs) / 1000;
    const checkAt = Math.max(0, threshold - (rate * QEMU_ITERATION_MS) / 2 / 1000);
    // At least a byte, so the link has a chunk to end (a pass already under the check level is checked at once).
    this.pending = Math.max(this.passLeft - checkAt, Math.min(this.passLeft, 1));
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
    const unsent = this.p.switchover === 'qemu' && this.phase === 'precopy' ? this.passLeft - this.roundSent : this.pending;
    return unsent + this.dirtiedAt(tMs);
  }

  onSent(bytes: number): void {
    this.bytesSent += bytes;
    if (this.phase === 'precopy') this.roundSent += bytes;
    if (this.rateBps > 0) this.lastRateBps = this.rateBps;
  }

  onChunkDone(tMs: number): boolean {
    if (this.phase === 'stop-copy' || this.phase === 'postcopy') return this.copied(tMs);
    let periodSent = this.roundBytes;
    if (this.p.switchover === 'qemu') {
      // The pass is down to where QEMU looks: what it has not sent yet, plus what the bitmap sync adds.
      this.passLeft -= this.roundSent;
      periodSent = this.roundSent;
      this.roundSent = 0;
    }
    const left = this.p.switchover === 'qemu' ? Math.max(0, this.passLeft) : 0;
    const rest = left + this.dirtiedAt(tMs);
    // What the rest costs on the wire: re-sent pages are delta-encoded with xbzrle.
    const wire = left + (rest - left) * (this.p.resendFactor ?? 1);
    const rate = this.rateBps > 0 ? this.rateBps : this.lastRateBps;
    if ((wire / rate) * 1000 <= this.downtimeLimitMs) return this.stopAndCopy(tMs, wire);
    const verdict = this.p.controller?.onRound({
      elapsedMs: tMs - (this.startMs ?? tMs),
      round: this.round,
      dirtyBytes: rest,
      bytesSent: this.bytesSent,
      downtimeLimitMs: this.downtimeLimitMs,
    });
    if (verdict?.action === 'abort') return this.giveUp(tMs, 'NotConverging', verdict.reason);
    if (verdict?.action === 'pause') return this.stopAndCopy(tMs, wire);
    if (verdict?.action === 'postcopy') return this.postCopy(tMs, rest);
    if (verdict?.downtimeLimitMs !== undefined) {
      this.downtimeLimitMs = verdict.downtimeLimitMs;
      if ((wire / rate) * 1000 <= this.downtimeLimitMs) return this.stopAndCopy(tMs, wire);
    }
    const giveUp = (message: string) => (this.p.postCopyOnGiveUp ? this.postCopy(tMs, rest) : this.giveUp(tMs, 'NotConverging', message));
    if (this.p.autoConverge) {
      // QEMU compares the pages dirtied since the last sync with the bytes sent over the same period.
      if (rest - left > AUTO_CONVERGE.triggerRatio * periodSent)
        this.throttlePct = this.throttlePct === 0 ? AUTO_CONVERGE.initialPct : Math.min(AUTO_CONVERGE.maxPct, this.throttlePct + AUTO_CONVERGE.stepPct);
      if (this.round + 1 >= AUTO_CONVERGE_ROUND_LIMIT) return giveUp(`not converging after ${this.round + 1} rounds even with auto-converge`);
    } else if (this.p.agentGivesUp === false) {
      // QEMU itself never gives up: only a bound on the simulation's own work.
      if (this.round + 1 >= CONTROLLED_ROUND_LIMIT) return giveUp(`not converging after ${this.round + 1} rounds`);
    } else if (this.round + 1 >= this.p.maxRounds) {
      return giveUp(`not converging after ${this.round + 1} rounds (maxRounds ${this.p.maxRounds})`);
    } else if (sentTooMuch(this.bytesSent, this.p.memoryBytes)) {
      return giveUp(`sent ${this.bytesSent} bytes, more than ${MAX_SENT_FACTOR}× the VM's memory`);
    }
    this.round += 1;
    this.roundStartMs = tMs;
    this.roundBytes = rest;
    this.pending = wire;
    this.passLeft = wire;
    if (this.p.failAtRound === this.round) return this.giveUp(tMs, 'InjectedFault', `injected failure at round ${this.round}`);
    if (this.p.switchover === 'qemu') {
      this.planChunk();
      // Already under where QEMU looks (the rate rose): the next check is at once.
      if (!(this.pending > 0)) return this.onChunkDone(tMs);
    }
    return true;
  }

  /** The rest fits (or a controller forces it): pause the guest and send the rest, `wire` bytes. */
  private stopAndCopy(tMs: number, wire: number): boolean {
    this.phase = 'stop-copy';
    this.pausedAtMs = tMs;
    this.events.onPause(tMs);
    if (wire <= 0) return this.copied(tMs);
    this.pending = wire;
    return true;
  }

  /**
   * Post-copy: the VM starts on the target now (after the switchover) and pulls the pages still dirty, `rest` bytes,
   * which the stream sends once each; no page is sent twice from here on. Its downtime is the switchover alone; until
   * the last page has arrived its memory is split over both servers (the risk the policy states).
   */
  private postCopy(tMs: number, rest: number): boolean {
    this.phase = 'postcopy';
    this.postCopyAtMs = tMs;
    if (rest <= 0) return this.copied(tMs);
    this.pending = rest;
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

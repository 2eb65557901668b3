import type { Flow } from './link';

/**
 * The `sim` backend's model of a VM's local-disk mirror, as libvirt and Proxmox run QEMU's `blockdev-mirror` ahead
 * of the RAM migration (full sync, zero detection): a flow on the source server's link, next to the memory streams.
 *
 * The bulk copy sends the data the guest has written to its local disks (`diskBytes`; blocks never written read as
 * zeros and are skipped). Meanwhile the guest keeps writing at `writeBps`, so each pass is followed by one that
 * re-sends the blocks written during it (at most the whole data). Once a pass leaves less than `READY_BACKLOG_MS` of
 * re-sending, the mirror switches to actively-synced (write-blocking) mode, sends that backlog and is READY: from
 * then on every guest write crosses the link as it happens — a stream of `writeBps` that shares the NIC with the
 * memory stream until the switchover completes the mirror. A guest writing as fast as its share of the link never
 * gets there: after `maxPasses` the mirror gives up.
 */

/** The mirror is READY when the blocks dirtied during a pass can be re-sent within this long at the current rate. */
export const READY_BACKLOG_MS = 1_000;
/** Bytes per chunk of the active mirror's write stream (the link wants chunk ends; any size gives the same rates). */
const ACTIVE_CHUNK_MS = 1_000;

export interface DiskMirrorParams {
  /** Data on the VM's local disks, bytes: what the bulk copy sends. */
  diskBytes: number;
  /** The guest's disk write rate, bytes/s. */
  writeBps: number;
  /** This stream's own cap, bytes/s (as the memory stream's: min(S, the migration's bandwidth cap)). */
  capBps: number;
  maxPasses: number;
}

export interface DiskMirrorEvents {
  /** The mirror is actively synced from `tMs` on: the RAM migration may start. */
  onReady(tMs: number): void;
  onGiveUp(tMs: number, message: string): void;
}

export type MirrorPhase = 'copying' | 'active' | 'gave-up' | 'done';

export class DiskMirrorFlow implements Flow {
  pending: number;
  rateBps = 0;
  phase: MirrorPhase = 'copying';
  /** Passes over the dirty blocks so far (0: the bulk copy). */
  pass = 0;
  /** Bytes sent: the bulk copy, re-sent blocks and, once active, the mirrored writes. */
  bytesCopied = 0;
  private passStartMs = 0;
  private lastRateBps = 0;
  /** In active mode: what is still dirty from before READY (sent first, at the stream's rate). */
  private backlog = 0;
  /** The backlog is across and `onReady` has fired. */
  private ready = false;

  constructor(
    private readonly p: DiskMirrorParams,
    private readonly events: DiskMirrorEvents,
  ) {
    this.pending = p.diskBytes;
  }

  get diskBytes(): number {
    return this.p.diskBytes;
  }

  /** Once in sync the stream carries the guest's writes, at most their rate. */
  get capBps(): number {
    return this.phase === 'active' && this.ready ? Math.min(this.p.capBps, this.p.writeBps) : this.p.capBps;
  }

  start(tMs: number): void {
    this.passStartMs = tMs;
  }

  /** Blocks written since the current pass began, at `tMs` (at most the whole data). */
  private dirtiedAt(tMs: number): number {
    if (this.phase !== 'copying') return 0;
    return Math.min(this.p.diskBytes, (this.p.writeBps * Math.max(0, tMs - this.passStartMs)) / 1000);
  }

  /** What is still to be copied before the mirror is in sync, at `tMs`. */
  remainingAt(tMs: number): number {
    if (this.phase === 'active') return this.backlog;
    if (this.phase !== 'copying') return 0;
    return this.pending + this.dirtiedAt(tMs);
  }

  onSent(bytes: number): void {
    this.bytesCopied += bytes;
    if (this.phase === 'active' && !this.ready) this.backlog = Math.max(0, this.backlog - bytes);
    if (this.rateBps > 0) this.lastRateBps = this.rateBps;
  }

  onChunkDone(tMs: number): boolean {
    if (this.phase === 'done' || this.phase === 'gave-up') return false;
    if (this.phase === 'active') {
      // The backlog is across: the mirror is in sync, and the memory may go while it mirrors the writes.
      if (!this.ready) {
        this.ready = true;
        this.backlog = 0;
        this.events.onReady(tMs);
      }
      if (this.p.writeBps <= 0) return false; // in sync and nothing written: the stream leaves the link until completed
      this.pending = (this.p.writeBps * ACTIVE_CHUNK_MS) / 1000;
      return true;
    }
    const dirty = this.dirtiedAt(tMs);
    const rate = this.rateBps > 0 ? this.rateBps : this.lastRateBps;
    if (rate > 0 && (dirty / rate) * 1000 <= READY_BACKLOG_MS) {
      // Actively synced from here: the last dirty blocks go at the stream's rate, then only the writes as they happen.
      this.phase = 'active';
      this.backlog = dirty;
      this.pending = dirty;
      if (dirty > 0) return true;
      return this.onChunkDone(tMs);
    }
    if (this.pass + 1 >= this.p.maxPasses) {
      this.phase = 'gave-up';
      this.pending = 0;
      this.events.onGiveUp(tMs, `disk mirror not converging after ${this.pass + 1} passes (the guest writes ${Math.round(this.p.writeBps / 2 ** 20)} MiB/s)`);
      return false;
    }
    this.pass += 1;
    this.passStartMs = tMs;
    this.pending = dirty;
    return true;
  }

  /** The switchover completed the mirror (or the move ended): nothing more to send. */
  finish(): void {
    if (this.phase === 'copying' || this.phase === 'active') this.phase = 'done';
    this.pending = 0;
    this.backlog = 0;
  }
}

import { DiskMirrorFlow, type DiskMirrorParams } from './disk-mirror';
import type { SimLink } from './link';
import { PrecopyFlow, type PrecopyEvents, type PrecopyParams } from './precopy';

/**
 * One VM's move on the source server's link, as the `sim` backend runs it and benchmark 1 replays it: the local-disk
 * mirror first (disk-mirror.ts) when the VM has local data, then — once the mirror is READY and actively synced —
 * the RAM pre-copy (precopy.ts) while the mirror keeps sending the guest's writes; the switchover completes both.
 * A VM without local data (network disks only, or disks never written) moves its memory only.
 */
export interface VmMoveParams extends PrecopyParams {
  /** Data on the local disks, bytes (0: no mirror). */
  diskBytes: number;
  /** The guest's disk write rate, bytes/s. */
  diskWriteBps: number;
}

export interface VmMoveEvents extends PrecopyEvents {
  /** The disk mirror could not get in sync: the move has ended on the source. */
  onDiskGiveUp?(tMs: number, message: string): void;
}

export class SimVmMove {
  readonly precopy: PrecopyFlow;
  readonly mirror: DiskMirrorFlow | null;
  /** Simulated time the move started (the mirror's first byte, or the memory's). */
  startMs: number | undefined;
  private memoryOnLink = false;

  constructor(
    private readonly link: SimLink,
    p: VmMoveParams,
    private readonly events: VmMoveEvents,
  ) {
    // The move's cap S is shared: once the mirror streams the guest's writes, the memory gets what is left of it.
    const memoryCap = p.diskBytes > 0 ? Math.max(1, p.capBps - p.diskWriteBps) : p.capBps;
    this.precopy = new PrecopyFlow(
      { ...p, capBps: memoryCap },
      {
        onPause: (t) => events.onPause(t),
        onCopied: (t) => {
          this.memoryOnLink = false;
          // The guest is paused and its last writes are mirrored: the switchover completes the mirror.
          this.completeMirror();
          events.onCopied(t);
        },
        onGiveUp: (t, code, message) => {
          this.memoryOnLink = false;
          this.completeMirror();
          events.onGiveUp(t, code, message);
        },
      },
    );
    const mirror: DiskMirrorParams = { diskBytes: p.diskBytes, writeBps: p.diskWriteBps, capBps: p.capBps, maxPasses: p.maxRounds };
    this.mirror =
      p.diskBytes > 0
        ? new DiskMirrorFlow(mirror, {
            // Called from inside the link's advance, at the exact instant: the memory stream joins then.
            onReady: (t) => this.startMemory(t),
            onGiveUp: (t, message) => (events.onDiskGiveUp ?? ((tt: number, m: string) => events.onGiveUp(tt, 'NotConverging', m)))(t, message),
          })
        : null;
  }

  /** Puts the move on the link; returns the simulated time it started. */
  start(): number {
    if (this.mirror) {
      this.startMs = this.link.add(this.mirror);
      this.mirror.start(this.startMs);
      if (this.mirror.pending === 0) this.startMemory(this.startMs);
      return this.startMs;
    }
    this.startMs = this.link.add(this.precopy);
    this.precopy.start(this.startMs);
    this.memoryOnLink = true;
    return this.startMs;
  }

  /** Takes whatever is still sending off the link (cancel, failure). */
  stop(): void {
    if (this.memoryOnLink) this.link.remove(this.precopy);
    this.memoryOnLink = false;
    this.completeMirror();
  }

  /** The mirror's stream leaves the link. */
  private completeMirror(): void {
    if (!this.mirror) return;
    this.link.remove(this.mirror);
    this.mirror.finish();
  }

  private startMemory(tMs: number): void {
    if (this.memoryOnLink) return;
    this.memoryOnLink = true;
    this.link.add(this.precopy);
    this.precopy.start(tMs);
  }

  /** Bytes/s this move is using on the link now. */
  rateBps(): number {
    return (this.memoryOnLink ? this.precopy.rateBps : 0) + (this.mirror && this.mirror.pending > 0 ? this.mirror.rateBps : 0);
  }

  /** The simulated time its next chunk ends (Infinity: nothing is moving). */
  nextChunkEndMs(nowMs: number): number {
    let next = Infinity;
    for (const f of [
      this.memoryOnLink ? this.precopy : null,
      this.mirror && this.mirror.phase !== 'done' && this.mirror.phase !== 'gave-up' ? this.mirror : null,
    ])
      if (f && f.rateBps > 0 && f.pending > 0) next = Math.min(next, nowMs + (f.pending / f.rateBps) * 1000);
    return next;
  }

  /** Memory plus disk bytes sent so far. */
  get bytesSent(): number {
    return this.precopy.bytesSent + (this.mirror?.bytesCopied ?? 0);
  }
}

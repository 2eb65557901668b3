import type { SimClock } from './clock';

/**
 * One transfer sharing a server's NIC: a pre-copy memory stream or a disk mirror. The link writes `rateBps` and drains
 * `pending`; the flow decides, at the exact simulated instant a chunk ends, what to send next.
 */
export interface Flow {
  /** The most this flow may use on its own (bytes/s): the per-stream cap and any per-migration cap. */
  readonly capBps: number;
  /** Bytes left in the flow's current chunk; > 0 while the flow is on the link. */
  pending: number;
  /** Bytes/s the link currently gives this flow (written by the link). */
  rateBps: number;
  onSent(bytes: number): void;
  /**
   * The current chunk finished at simulated time `tMs`. Set a new `pending` (> 0) and return true to keep sending,
   * or return false to leave the link. It may add or remove *other* flows (they join or leave at `tMs`: a VM's memory
   * stream starts the instant its disk mirror is ready); anything else is scheduled as async work.
   */
  onChunkDone(tMs: number): boolean;
}

/**
 * A server's NIC as a fluid model: its bandwidth is shared max-min fairly (water-filling) among the flows on it,
 * each capped at its own `capBps`; an injected slowdown divides the whole link, caps included.
 *
 * Sharing is recomputed at every event — a flow joining, leaving or finishing a chunk — and between events every
 * rate is constant, so a round's duration is exact even when a concurrent migration starts or ends in the middle of
 * it. Events are found analytically (bytes left / rate), not by fixed time steps; timers only decide when the wall
 * clock catches up with them, and every read (`sync`) first advances the model to the current simulated time.
 */
export class SimLink {
  private readonly flows = new Set<Flow>();
  private t: number;
  private slowdown = 1;
  private timer: NodeJS.Timeout | undefined;
  private advancing = false;
  private closed = false;

  constructor(
    private readonly bandwidthBps: number,
    private readonly clock: SimClock,
    /** Called if advancing the model throws (a bug in a flow); the link keeps running. */
    private readonly onError: (err: unknown) => void,
  ) {
    this.t = clock.now();
  }

  /** Bytes/s the whole link can carry now. */
  capacityBps(): number {
    return this.bandwidthBps / this.slowdown;
  }

  /** Advances every flow to the current simulated time and returns it. */
  sync(): number {
    if (!this.advancing) this.advance(this.clock.now());
    return this.t;
  }

  /** Adds a flow at the current simulated time, which it returns. */
  add(flow: Flow): number {
    const now = this.sync();
    this.flows.add(flow);
    this.allocate();
    this.schedule();
    return now;
  }

  remove(flow: Flow): void {
    this.sync();
    if (!this.flows.delete(flow)) return;
    flow.rateBps = 0;
    this.allocate();
    this.schedule();
  }

  setSlowdown(factor: number): void {
    this.sync();
    this.slowdown = factor;
    this.allocate();
    this.schedule();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.flows.clear();
  }

  /** Max-min fair shares: the flows with the smallest caps are satisfied first, the rest split what is left evenly. */
  private allocate(): void {
    const sorted = [...this.flows].sort((a, b) => a.capBps - b.capBps);
    let left = this.capacityBps();
    sorted.forEach((flow, i) => {
      const fair = left / (sorted.length - i);
      flow.rateBps = Math.min(flow.capBps / this.slowdown, fair);
      left -= flow.rateBps;
    });
  }

  private advance(to: number): void {
    this.advancing = true;
    try {
      while (this.t < to && this.flows.size > 0) {
        this.allocate();
        let step = to - this.t;
        for (const f of this.flows) if (f.rateBps > 0) step = Math.min(step, (f.pending / f.rateBps) * 1000);
        const done: Flow[] = [];
        for (const f of this.flows) {
          const bytes = (f.rateBps * step) / 1000;
          // Float slack: the flow that set `step` must finish exactly, not leave a femtobyte behind.
          if (f.pending - bytes <= Math.max(1e-6, f.pending * 1e-9)) {
            f.onSent(f.pending);
            f.pending = 0;
            done.push(f);
          } else {
            f.pending -= bytes;
            f.onSent(bytes);
          }
        }
        this.t += step;
        for (const f of done) {
          if (!f.onChunkDone(this.t) || !(f.pending > 0)) {
            this.flows.delete(f);
            f.rateBps = 0;
          }
        }
      }
      if (this.t < to) this.t = to;
      this.allocate();
    } finally {
      this.advancing = false;
    }
  }

  /** Wakes up when the next chunk is due to end, so flows react (pause a VM, fail a job) close to on time. */
  private schedule(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.closed || this.flows.size === 0) return;
    let next = Infinity;
    for (const f of this.flows) if (f.rateBps > 0) next = Math.min(next, this.t + (f.pending / f.rateBps) * 1000);
    if (!Number.isFinite(next)) return;
    this.timer = setTimeout(
      () => {
        try {
          this.sync();
        } catch (err) {
          this.onError(err);
        }
        this.schedule();
      },
      Math.max(1, Math.ceil(this.clock.wallDelayUntil(next))),
    );
  }
}

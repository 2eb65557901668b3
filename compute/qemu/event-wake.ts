import type { QmpEvent } from './qmp';

/** What an EventWake listens on: a QmpClient (or a test's emitter with the same `event` signal). */
export interface EventSource {
  on(name: 'event', listener: (e: QmpEvent) => void): unknown;
  off(name: 'event', listener: (e: QmpEvent) => void): unknown;
}

/**
 * A poll interval that ends early when QEMU reports a change. A migration's status moves on by itself (to
 * `pre-switchover` with the guest already stopped, to `completed`), and every millisecond between that and the
 * agent's next query is downtime or idle link; QEMU announces each change with an event (MIGRATION, JOB_STATUS_CHANGE),
 * so the loop sleeps until the event or the interval, whichever is first. An event that arrives while the loop is
 * busy (a query in flight) is kept, and the next `sleep` returns at once: none is missed.
 */
export class EventWake {
  private pending = false;
  private wake: (() => void) | null = null;
  private readonly onEvent = (e: QmpEvent) => {
    if (!this.names.has(e.event)) return;
    this.pending = true;
    this.wake?.();
  };

  constructor(
    private readonly source: EventSource,
    private readonly names: ReadonlySet<string>,
  ) {
    source.on('event', this.onEvent);
  }

  /** Until one of the events (or one seen since the last sleep), `ms`, or the abort, whichever comes first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (this.pending || signal?.aborted) {
      this.pending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        this.wake = null;
        this.pending = false;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done;
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  close(): void {
    this.source.off('event', this.onEvent);
    this.wake?.();
  }
}

/**
 * Simulated time for one agent: simulated ms = wall ms elapsed × timeScale. Tying simulated time to the wall
 * clock (rather than jumping from event to event) keeps concurrent migrations, guest operations and pauses
 * consistent with each other: a pause of d simulated ms stalls a real client for d / timeScale wall ms.
 */
export class SimClock {
  private readonly origin = performance.now();

  constructor(readonly timeScale: number) {
    if (!(timeScale > 0) || !Number.isFinite(timeScale)) throw new Error(`timeScale must be a positive number, got ${timeScale}`);
  }

  /** Simulated milliseconds since this clock started. */
  now(): number {
    return (performance.now() - this.origin) * this.timeScale;
  }

  /** Wall milliseconds from now until simulated time `simMs` (0 if it has passed). */
  wallDelayUntil(simMs: number): number {
    return Math.max(0, (simMs - this.now()) / this.timeScale);
  }

  /** Resolves once simulated time reaches `simMs`, or rejects with the signal's reason when aborted. */
  sleepUntil(simMs: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal!.reason);
      };
      // setTimeout may fire a hair early relative to performance.now(); loop until simulated time has really passed.
      const wake = () => {
        const wait = this.wallDelayUntil(simMs);
        if (wait > 0) {
          timer = setTimeout(wake, Math.max(1, Math.ceil(wait)));
          return;
        }
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      let timer = setTimeout(wake, Math.ceil(this.wallDelayUntil(simMs)));
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

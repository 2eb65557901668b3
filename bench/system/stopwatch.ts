/** Call counts and durations of an object's async methods, by "prefix.method". */
export interface CallStats {
  calls: number;
  totalMs: number;
  meanMs: number;
  maxMs: number;
}

export class Stopwatch {
  private stats = new Map<string, { calls: number; totalMs: number; maxMs: number }>();

  /** The same object whose methods are timed (methods only; other properties pass through). */
  wrap<T extends object>(prefix: string, target: T): T {
    return new Proxy(target, {
      get: (obj, prop, receiver) => {
        const value = Reflect.get(obj, prop, receiver) as unknown;
        if (typeof value !== 'function' || typeof prop !== 'string') return value;
        return (...args: unknown[]) => {
          const started = performance.now();
          const done = () => this.record(`${prefix}.${prop}`, performance.now() - started);
          const result = (value as (...a: unknown[]) => unknown).apply(obj, args);
          if (result instanceof Promise) return result.finally(done);
          done();
          return result;
        };
      },
    });
  }

  record(key: string, ms: number): void {
    const s = this.stats.get(key) ?? { calls: 0, totalMs: 0, maxMs: 0 };
    s.calls += 1;
    s.totalMs += ms;
    s.maxMs = Math.max(s.maxMs, ms);
    this.stats.set(key, s);
  }

  reset(): void {
    this.stats.clear();
  }

  snapshot(): Record<string, CallStats> {
    return Object.fromEntries([...this.stats].map(([k, s]) => [k, { ...s, meanMs: s.totalMs / s.calls }]));
  }
}

/** Several workers' figures added up. */
export function mergeStats(all: Array<Record<string, CallStats>>): Record<string, CallStats> {
  const out: Record<string, CallStats> = {};
  for (const stats of all)
    for (const [k, s] of Object.entries(stats)) {
      const o = (out[k] ??= { calls: 0, totalMs: 0, meanMs: 0, maxMs: 0 });
      o.calls += s.calls;
      o.totalMs += s.totalMs;
      o.maxMs = Math.max(o.maxMs, s.maxMs);
      o.meanMs = o.totalMs / o.calls;
    }
  return out;
}

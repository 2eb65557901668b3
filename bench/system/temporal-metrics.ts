import * as fs from 'node:fs';

/**
 * The Temporal dev server's own Prometheus metrics (its `--metrics-port`), read before and after a step to tell how
 * long its persistence (the SQLite file) took per call: the evidence for "the store is the bottleneck".
 */
export interface PersistenceFigures {
  requests: number;
  meanMs: number;
  /** The operations that took the most time in total: name, calls, mean ms. */
  top: Array<{ operation: string; calls: number; meanMs: number }>;
  /** Shard lock waits (one shard on the dev server: every workflow update takes it). */
  shardLockMeanMs: number;
  /** Time spent in writes (SQLite has one writer), as % of the window: near 100 % the store is the bottleneck. */
  writeBusyPct: number;
}

type Sample = Map<string, { sum: number; count: number }>;

export function metricsUrl(temporalPid: number | undefined): string | null {
  if (!temporalPid) return null;
  try {
    const args = fs.readFileSync(`/proc/${temporalPid}/cmdline`, 'utf8').split('\0');
    const i = args.indexOf('--metrics-port');
    return i >= 0 && args[i + 1] ? `http://127.0.0.1:${args[i + 1]}/metrics` : null;
  } catch {
    return null;
  }
}

export async function scrape(url: string | null): Promise<Sample> {
  const out: Sample = new Map();
  if (!url) return out;
  try {
    const text = await (await fetch(url, { signal: AbortSignal.timeout(5000) })).text();
    for (const line of text.split('\n')) {
      const m = /^(persistence_latency|dd_shard_lock_latency)_(sum|count)\{([^}]*)\} ([0-9.eE+-]+)$/.exec(line);
      if (!m) continue;
      const op = m[1] === 'persistence_latency' ? (/operation="([^"]*)"/.exec(m[3]!)?.[1] ?? '?') : '__shard_lock';
      const entry = out.get(op) ?? { sum: 0, count: 0 };
      if (m[2] === 'sum') entry.sum += Number(m[4]);
      else entry.count += Number(m[4]);
      out.set(op, entry);
    }
  } catch {
    // no metrics: figures stay empty
  }
  return out;
}

const WRITE = /^(Update|Create|Delete|Complete|RangeComplete|Append|Put|Set|Insert|Conflict)/;

export function persistenceBetween(before: Sample, after: Sample, windowMs: number): PersistenceFigures {
  const ops: Array<{ operation: string; calls: number; totalMs: number }> = [];
  let shard = { calls: 0, totalMs: 0 };
  for (const [op, a] of after) {
    const b = before.get(op) ?? { sum: 0, count: 0 };
    const calls = a.count - b.count;
    const totalMs = (a.sum - b.sum) * 1000; // Prometheus durations are in seconds
    if (calls <= 0) continue;
    if (op === '__shard_lock') shard = { calls, totalMs };
    else ops.push({ operation: op, calls, totalMs });
  }
  const calls = ops.reduce((s, o) => s + o.calls, 0);
  const total = ops.reduce((s, o) => s + o.totalMs, 0);
  return {
    requests: calls,
    meanMs: calls ? total / calls : NaN,
    top: ops
      .sort((x, y) => y.totalMs - x.totalMs)
      .slice(0, 3)
      .map((o) => ({ operation: o.operation, calls: o.calls, meanMs: o.totalMs / o.calls })),
    shardLockMeanMs: shard.calls ? shard.totalMs / shard.calls : NaN,
    writeBusyPct: (100 * ops.filter((o) => WRITE.test(o.operation)).reduce((s, o) => s + o.totalMs, 0)) / windowMs,
  };
}

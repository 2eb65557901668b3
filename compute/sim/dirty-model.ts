/**
 * How a simulated guest dirties its memory: a hot/cold page split, closer to real guests than one rate into one
 * working set. The **hot set** (W bytes: a database's buffer pool, a cache's busy slabs) is rewritten fast, at D_hot,
 * so it is all dirty again after W/D_hot; the **cold set** (the rest of memory less the zero pages) is written slowly,
 * at D_cold, each write landing on a page at random, so the distinct cold pages dirtied after t are
 * C·(1 − e^(−D_cold·t/C)): nearly D_cold·t at first, never more than C. Auto-converge's throttle slows both by the
 * share of CPU time it takes away. Pure: the pre-copy model (precopy.ts), the measurements (measure.ts) and benchmark 1
 * share it. With D_cold = 0 it is the earlier model, min(W, D·t).
 */
export interface DirtyModel {
  /** Hot set W, bytes. */
  hotBytes: number;
  /** Writes into the hot set, bytes/s (unthrottled). */
  hotRateBps: number;
  /** Cold set C, bytes (0: none). */
  coldBytes: number;
  /** Writes into the cold set, bytes/s (unthrottled). */
  coldRateBps: number;
}

/** Distinct bytes dirtied in `ms` by a guest throttled by `throttlePct` %. */
export function dirtiedBytes(m: DirtyModel, ms: number, throttlePct = 0): number {
  const t = Math.max(0, ms) / 1000;
  const f = (100 - throttlePct) / 100;
  const hot = Math.min(m.hotBytes, m.hotRateBps * f * t);
  const cold = m.coldBytes > 0 && m.coldRateBps > 0 ? m.coldBytes * -Math.expm1((-m.coldRateBps * f * t) / m.coldBytes) : 0;
  return hot + cold;
}

/** The guest's write rate (both sets), bytes/s, under `throttlePct`: what it dirties in a very short sample. */
export function writeRateBps(m: DirtyModel, throttlePct = 0): number {
  return ((m.hotRateBps + m.coldRateBps) * (100 - throttlePct)) / 100;
}

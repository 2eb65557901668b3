import { dirtiedBytes, type DirtyModel } from './dirty-model';

/**
 * The sim's measurements (agent-api.ts, "measurements"): the model's true figure with seeded measurement noise, so dhm
 * decides from what an agent can observe, not from the model's parameters. The noise is multiplicative and bounded:
 * true × (1 + ε), ε uniform in [−MEASUREMENT_NOISE, +MEASUREMENT_NOISE]. QEMU's `calc-dirty-rate` samples 512 pages
 * per GiB (its default `sample-pages`) and hashes them, so its error is of this order for a guest whose writes are spread
 * over memory; 10 % is an assumption, not a calibration (docs/benchmarks.md says so).
 */
export const MEASUREMENT_NOISE = 0.1;

const noisy = (value: number, rand: () => number, noise: number) => value * (1 + noise * (2 * rand() - 1));

/**
 * What `calc-dirty-rate` over `sampleMs` reports for a guest: distinct bytes dirtied over the sample ÷ its length
 * (so a small hot set measures below its write rate over a long sample), with noise. Bytes/s.
 */
export function measuredDirtyRateBps(model: DirtyModel, sampleMs: number, throttlePct: number, rand: () => number, noise = MEASUREMENT_NOISE): number {
  if (!(sampleMs > 0)) throw new RangeError('sampleMs must be positive');
  const truth = (dirtiedBytes(model, sampleMs, throttlePct) / sampleMs) * 1000;
  return Math.max(0, noisy(truth, rand, noise));
}

/** What a timed single-stream transfer on an idle link measures: min(stream cap, NIC) with noise, never above the NIC. */
export function measuredStreamBps(streamCapBps: number, nicBps: number, rand: () => number, noise = MEASUREMENT_NOISE): number {
  return Math.min(nicBps, Math.max(1, noisy(Math.min(streamCapBps, nicBps), rand, noise)));
}

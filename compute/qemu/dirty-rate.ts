import { z } from 'zod';
import { QmpError, type QmpClient } from './qmp';

/**
 * A VM's dirty rate measured by QEMU before a move: `calc-dirty-rate` in `page-sampling` mode, then
 * `query-dirty-rate` until it reports `measured`. Measured on this machine (QEMU 10.0.2, TCG):
 * - `dirty-ring` needs KVM ("mode dirty-ring is not enabled"), and `dirty-bitmap` answers 0 under TCG whatever the
 *   guest writes (QEMU only counts pages in KVM's dirty-log sync), so page sampling is the one mode that works here.
 * - Page sampling hashes sampled pages at the start and end of the window: it sees pages whose *content* changed. A
 *   guest rewriting identical bytes reads as clean (the test guest's writer therefore alternates two patterns).
 * - The rate is distinct memory changed over the window ÷ its length, so a window longer than one pass over the
 *   guest's hot set under-reads. Short windows (`calc-time-unit: millisecond`, QEMU ≥ 8.2) are noisy with few
 *   sampled pages, so the measurement is the mean of several ≤ 1 s windows at the highest sampling density.
 * - QEMU answers whole MiB/s (truncated), another reason to average.
 */

/** QEMU's upper bound on `sample-pages` (pages sampled per GiB of guest RAM); its default is 512. */
export const SAMPLE_PAGES_PER_GIB = 16_384;
/** The longest single window: a hot set the guest rewrites within a second is still seen at its rate. */
const MAX_WINDOW_MS = 1_000;
const MIN_WINDOW_MS = 100;
const POLL_MS = 50;
const MIB = 2 ** 20;

const queryDirtyRateSchema = z.object({
  status: z.string(),
  'dirty-rate': z.number().optional(),
  'calc-time': z.number().optional(),
  mode: z.string().optional(),
});

export interface DirtyRateResult {
  /** Bytes/s of distinct guest memory whose content changed, the mean over the windows. */
  dirtyRateBps: number;
  /** The time measured, ms (the windows' sum). */
  sampleMs: number;
  method: 'calc-dirty-rate';
  /** Each window's figure, bytes/s (QEMU's whole MiB/s). */
  windowsBps: number[];
  windowMs: number;
}

/**
 * Measures over `sampleMs` (split into windows of at most 1 s). The VM keeps running; QEMU only reads its pages.
 * One measurement per VM at a time: QEMU refuses a second while one runs, so callers serialise (QemuBackend does).
 */
export async function measureDirtyRate(qmp: QmpClient, sampleMs: number, opts: { signal?: AbortSignal } = {}): Promise<DirtyRateResult> {
  const windows = Math.max(1, Math.ceil(sampleMs / MAX_WINDOW_MS));
  const windowMs = Math.max(MIN_WINDOW_MS, Math.round(sampleMs / windows));
  const windowsBps: number[] = [];
  for (let i = 0; i < windows; i++) {
    if (opts.signal?.aborted) throw new Error('dirty-rate measurement aborted');
    await qmp.execute('calc-dirty-rate', {
      'calc-time': windowMs,
      'calc-time-unit': 'millisecond',
      'sample-pages': SAMPLE_PAGES_PER_GIB,
      mode: 'page-sampling',
    });
    const deadline = Date.now() + windowMs + 10_000;
    for (;;) {
      await sleep(Math.min(POLL_MS, windowMs));
      const q = queryDirtyRateSchema.parse(await qmp.execute('query-dirty-rate', { 'calc-time-unit': 'millisecond' }));
      if (q.status === 'measured') {
        windowsBps.push((q['dirty-rate'] ?? 0) * MIB);
        break;
      }
      // `unstarted`: QEMU has not yet scheduled its measuring thread (seen at load 10 on 2 cores); it starts within the deadline.
      if (q.status !== 'measuring' && q.status !== 'unstarted') throw new QmpError('PROTOCOL', `query-dirty-rate: unexpected status ${q.status}`);
      // A TCG guest on a busy host can lag its timer, but QEMU's window is host time: this only guards a stuck QEMU.
      if (Date.now() > deadline) throw new QmpError('TIMEOUT', `calc-dirty-rate did not finish within ${windowMs + 10_000} ms`);
    }
  }
  const mean = windowsBps.reduce((a, b) => a + b, 0) / windowsBps.length;
  return { dirtyRateBps: mean, sampleMs: windows * windowMs, method: 'calc-dirty-rate', windowsBps, windowMs };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

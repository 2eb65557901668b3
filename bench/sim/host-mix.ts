import { MIB } from '../../compute/units';
import { seededRandom, weighted } from './rng';

const GIB = 1024 * MIB;

/** One VM of a benchmark host, in the units of the pre-copy model (bytes, bytes/s). */
export interface BenchVm {
  vmId: string;
  memoryBytes: number;
  /** Unthrottled dirty rate D, bytes/s. */
  dirtyRateBps: number;
  /** Writable working set W, bytes: the most that can be dirty at once. */
  workingSetBytes: number;
  kind: 'idle' | 'busy' | 'hot';
}

/**
 * A realistic dedicated host: sizes 1–64 GiB weighted towards the middle (as cloud flavours are sold), and three
 * kinds of guest — half nearly idle (D < 2 % of the link), a third busy (2–25 %), the rest hot (25–80 %: databases,
 * caches) — with writable working sets a few percent of memory (at most 8 GiB). The VMs come in a random order
 * (the tenant's creation order), which is what `as-listed` schedules see. Same seed, same host.
 */
export function generateHost(vmCount: number, seed: number, linkBytesPerSec: number): BenchVm[] {
  const rand = seededRandom(seed);
  const uniform = (lo: number, hi: number) => lo + (hi - lo) * rand();
  const vms: BenchVm[] = [];
  for (let i = 0; i < vmCount; i++) {
    const gib = weighted(rand, [
      [1, 10],
      [2, 15],
      [4, 20],
      [8, 20],
      [16, 15],
      [32, 12],
      [64, 8],
    ] as const);
    const memoryBytes = gib * GIB;
    const kind = weighted(rand, [
      ['idle', 50],
      ['busy', 35],
      ['hot', 15],
    ] as const);
    const [dLo, dHi, wLo, wHi] = kind === 'idle' ? [0, 0.02, 0.01, 0.04] : kind === 'busy' ? [0.02, 0.25, 0.02, 0.08] : [0.25, 0.8, 0.04, 0.12];
    // Whole MiB/s and MiB, as a VM spec carries them (the workflow orders by `dirtyRateMiBps`).
    const dirtyRateBps = Math.round((uniform(dLo, dHi) * linkBytesPerSec) / MIB) * MIB;
    const workingSetBytes = Math.min(Math.round((uniform(wLo, wHi) * memoryBytes) / MIB) * MIB, 8 * GIB);
    vms.push({ vmId: `vm-${String(i).padStart(3, '0')}`, memoryBytes, dirtyRateBps, workingSetBytes, kind });
  }
  return vms;
}

export { GIB };

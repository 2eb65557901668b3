import { footprintBytes } from '../../compute/sim/calibration';
import { MIB } from '../../compute/units';
import { seededRandom, weighted } from './rng';

const GIB = 1024 * MIB;

/** One VM of a benchmark host, in the units of the pre-copy model (bytes, bytes/s). */
export interface BenchVm {
  vmId: string;
  memoryBytes: number;
  /** Unthrottled dirty rate D, bytes/s. */
  dirtyRateBps: number;
  /** Writable working set W, bytes: the hot set, rewritten at D. */
  workingSetBytes: number;
  /**
   * The guest's non-zero memory, bytes (compute/sim/calibration.ts `footprintBytes`): the kernel's base, the hot set
   * and what else it has written. Round 0 sends this; the rest are zero pages, sent as flags.
   */
  nonZeroBytes: number;
  /** Writes over the rest of its non-zero memory (the cold set), bytes/s: each on a page at random (compute/sim/dirty-model.ts). */
  coldDirtyRateBps: number;
  /** Data on its local disks, bytes: what the move's disk mirror copies ahead of the memory. */
  diskBytes: number;
  /** The guest's disk write rate, bytes/s (blocks the mirror re-sends, then mirrors as they are written). */
  diskWriteBps: number;
  kind: 'idle' | 'busy' | 'hot';
}

/**
 * A realistic dedicated host: sizes 1–64 GiB weighted towards the middle (as cloud flavours are sold), and three
 * kinds of guest — half nearly idle (D < 2 % of the link), a third busy (2–25 %), the rest hot (25–80 %: databases,
 * caches) — with writable working sets (hot sets) a few percent of memory (at most 8 GiB) and slow random writes over the
 * rest (the cold set: 0–0.2 %, 0.2–1 % or 0.5–2 % of the link), and local NVMe disks holding 2–6× the
 * memory in data (a root disk and a data disk, as dedicated hosts are sold: most of a host's bytes are on disk) that
 * the guest writes at 0–1 % (idle), 0.5–3 % (busy) or 2–6 % (hot) of the link. The VMs come in a random order
 * (the tenant's creation order), which is what `as-listed` schedules see. Same seed, same host.
 *
 * Non-zero memory: the testbed's guests hold only the kernel's base and their writer's set (calibration.ts); a
 * tenant's long-running guest has also written page cache and heaps. How much is an assumption, not a measurement:
 * of the RAM beyond base and hot set, 10–40 % (idle), 30–70 % (busy) or 50–90 % (hot) is non-zero. It is drawn
 * from its own seeded stream, so every other figure of a host is the one earlier runs drew.
 */
export function generateHost(vmCount: number, seed: number, linkBytesPerSec: number): BenchVm[] {
  const rand = seededRandom(seed);
  const usedRand = seededRandom(seed ^ 0x5eed);
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
    // Whole GiB and MiB/s, as a VM spec carries them (`diskUsedGiB`, `diskWriteMiBps`).
    const diskBytes = Math.round(uniform(2, 6) * gib) * GIB;
    const [wLoD, wHiD] = kind === 'idle' ? [0, 0.01] : kind === 'busy' ? [0.005, 0.03] : [0.02, 0.06];
    const diskWriteBps = Math.round((uniform(wLoD, wHiD) * linkBytesPerSec) / MIB) * MIB;
    // The cold set: slow writes spread over the rest of memory.
    const [cLo, cHi] = kind === 'idle' ? [0, 0.002] : kind === 'busy' ? [0.002, 0.01] : [0.005, 0.02];
    const coldDirtyRateBps = Math.round((uniform(cLo, cHi) * linkBytesPerSec) / MIB) * MIB;
    const [uLo, uHi] = kind === 'idle' ? [0.1, 0.4] : kind === 'busy' ? [0.3, 0.7] : [0.5, 0.9];
    const rest = Math.max(0, memoryBytes - footprintBytes(memoryBytes, workingSetBytes));
    const usedBytes = Math.round(((uLo + (uHi - uLo) * usedRand()) * rest) / MIB) * MIB;
    const nonZeroBytes = footprintBytes(memoryBytes, workingSetBytes, usedBytes);
    vms.push({
      vmId: `vm-${String(i).padStart(3, '0')}`,
      memoryBytes,
      nonZeroBytes,
      dirtyRateBps,
      workingSetBytes,
      coldDirtyRateBps,
      diskBytes,
      diskWriteBps,
      kind,
    });
  }
  return vms;
}

export { GIB };

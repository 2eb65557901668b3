import * as fs from 'node:fs';
import type { MigrationJob } from '../compute/agent-api';

/** The testbed evacuation's figures per move and per arm (the baselines' and dhm's alike). */

const MIB = 2 ** 20;

export interface Move {
  vmId: string;
  state: string;
  error?: string;
  wallMs: number;
  startMs: number;
  endMs: number;
  ramMs?: number;
  downtimeMs?: number;
  rounds: number;
  memorySentMiB: number;
  diskDataMiB: number;
  throughputMBps: number;
  /** The startMigration call (the target's accept) as the caller saw it; then the agent's own phases. */
  acceptMs?: number;
  phasesMs?: Record<string, number>;
}

/** Bytes a set of files holds on disk (a sparse disk: what was written). */
export const allocated = (files: Iterable<string>) => [...files].reduce((s, f) => s + fs.statSync(f).blocks * 512, 0);

/** One agent job as the bench reports a move. */
export function moveOf(j: MigrationJob, diskData: number, startMs: number, endMs: number): Move {
  return {
    vmId: j.vmId,
    state: j.state,
    ...(j.error ? { error: `${j.error.code}: ${j.error.message}` } : {}),
    wallMs: endMs - startMs,
    startMs,
    endMs,
    ...(j.totalTimeMs !== undefined ? { ramMs: j.totalTimeMs } : {}),
    ...(j.downtimeMs !== undefined ? { downtimeMs: j.downtimeMs } : {}),
    rounds: j.round + 1,
    memorySentMiB: Number((j.memory.bytesTransferred / MIB).toFixed(1)),
    diskDataMiB: Number((diskData / MIB).toFixed(1)),
    throughputMBps: Number((j.throughputBps / 1e6).toFixed(1)),
    ...(j.phasesMs ? { phasesMs: j.phasesMs } : {}),
  };
}

/** An arm's figures: makespan against Σ(bytes on the wire)/B with the arm's own bytes. */
export function evacuationOf(schedule: string, concurrency: number | string, makespanMs: number, moves: Move[], B: number) {
  const bytes = moves.reduce((s, m) => s + (m.memorySentMiB + m.diskDataMiB) * MIB, 0);
  const boundMs = (bytes / B) * 1000;
  return {
    schedule,
    concurrency,
    makespanMs,
    bytesMiB: Number((bytes / MIB).toFixed(1)),
    boundMs: Math.round(boundMs),
    ratio: Number((makespanMs / boundMs).toFixed(3)),
    failed: moves.filter((m) => m.state !== 'completed').length,
    moves,
  };
}

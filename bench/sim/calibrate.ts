import * as fs from 'node:fs';
import * as path from 'node:path';
import { CALIBRATION_RUNS, GUEST_BASE_BYTES, TESTBED_DOWNTIME_LIMIT_MS, ZERO_PAGE_WIRE_BYTES } from '../../compute/sim/calibration';
import { DEFAULT_MAX_ROUNDS, PrecopyFlow, QEMU_ITERATION_MS } from '../../compute/sim/precopy';

/**
 * Recomputes compute/sim/calibration.ts's constants from the testbed's files, so a constant there is a fit, not a
 * choice: test/bench/calibration.test.ts compares the two. Reads only; the testbed bench (perf-testbed's) writes them.
 */

const MIB = 2 ** 20;
const root = path.resolve(__dirname, '..');

interface TestbedMove {
  vmId: string;
  state: string;
  wallMs: number;
  ramMs?: number;
  downtimeMs?: number;
  rounds: number;
  memorySentMiB: number;
}
interface TestbedResult {
  downtimeTargetMs: number;
  vms: Array<{ vmId: string; memoryMiB: number; diskFillMiB: number; writer: { dirtyRateMiBps: number; workingSetMiB: number }; measuredDirtyMiBps: number }>;
  multifd: Array<{ channels: number; move: TestbedMove }>;
  evacuations: Array<{ schedule: string; concurrency: number; moves: TestbedMove[] }>;
}
interface Calibration {
  streamBytesPerSec: { channels1: number };
  switchover: { downtimeMs: number[]; setupOverheadMs: number };
}

export function readRun(run: string): { calibration: Calibration; result: TestbedResult } {
  return {
    calibration: JSON.parse(fs.readFileSync(path.join(root, 'calibration', `${run}.json`), 'utf8')) as Calibration,
    result: JSON.parse(fs.readFileSync(path.join(root, 'results', `${run}-testbed-evacuation.json`), 'utf8')) as TestbedResult,
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** MOVE_SETUP_MS: per run, setupOverheadMs less the disk fill at one stream's rate; their mean. */
export function fitMoveSetupMs(runs: readonly string[] = CALIBRATION_RUNS): { perRun: number[]; mean: number } {
  const perRun = runs.map((run) => {
    const { calibration: c, result: r } = readRun(run);
    const fillMiB = r.vms[0]!.diskFillMiB;
    return c.switchover.setupOverheadMs - ((fillMiB * MIB) / c.streamBytesPerSec.channels1) * 1000;
  });
  return { perRun, mean: perRun.reduce((s, x) => s + x, 0) / perRun.length };
}

/** The median downtime over every run's moves, and the switchover cost it implies under QEMU's rule. */
export function fitSwitchover(runs: readonly string[] = CALIBRATION_RUNS): { medianDowntimeMs: number; moves: number; switchoverCostMs: number } {
  const all = runs.flatMap((run) => readRun(run).calibration.switchover.downtimeMs);
  const medianDowntimeMs = median(all);
  // A cost is never negative: a median under the rule's estimate means the rule already covers it.
  return { medianDowntimeMs, moves: all.length, switchoverCostMs: Math.max(0, medianDowntimeMs - (TESTBED_DOWNTIME_LIMIT_MS - QEMU_ITERATION_MS / 2)) };
}

/** One move alone at `rateBps` under the calibrated pre-copy: its memory bytes, downtime and rounds. */
export function simulateAlone(p: {
  memoryBytes: number;
  nonZeroBytes: number;
  dirtyBps: number;
  workingSetBytes: number;
  maxDowntimeMs: number;
  autoConverge: boolean;
  rateBps: number;
}): { bytes: number; stopCopyMs: number; rounds: number } {
  let pausedAt = 0;
  let copiedAt = 0;
  const flow = new PrecopyFlow(
    {
      memoryBytes: p.memoryBytes,
      nonZeroBytes: p.nonZeroBytes,
      zeroPageWireBytes: ZERO_PAGE_WIRE_BYTES,
      switchover: 'qemu',
      dirtyRateBps: p.dirtyBps,
      workingSetBytes: p.workingSetBytes,
      maxDowntimeMs: p.maxDowntimeMs,
      autoConverge: p.autoConverge,
      maxRounds: DEFAULT_MAX_ROUNDS,
      capBps: p.rateBps,
      failAtRound: null,
    },
    { onPause: (t) => (pausedAt = t), onCopied: (t) => (copiedAt = t), onGiveUp: () => undefined },
  );
  flow.rateBps = p.rateBps;
  flow.start(0);
  let t = 0;
  for (let i = 0; i < 100_000; i++) {
    const chunk = flow.pending;
    t += (chunk / p.rateBps) * 1000;
    flow.onSent(chunk);
    flow.pending = 0;
    if (!flow.onChunkDone(t) || flow.phase === 'copied' || flow.phase === 'gave-up') break;
  }
  return { bytes: flow.bytesSent, stopCopyMs: copiedAt - pausedAt, rounds: flow.round + 1 };
}

/** The testbed's completed moves that had the link alone: sequential evacuations and the multifd probes. */
function aloneMoves(runs: readonly string[]) {
  return runs.flatMap((run) => {
    const { result: r } = readRun(run);
    const moves = [
      ...r.evacuations.filter((e) => e.concurrency === 1).flatMap((e) => e.moves.map((m) => ({ m, autoConverge: /auto-converge/.test(e.schedule) }))),
      ...r.multifd.map((x) => ({ m: x.move, autoConverge: false })),
    ];
    return moves
      .filter(({ m }) => m.state === 'completed' && (m.ramMs ?? 0) > 0)
      .map(({ m, autoConverge }) => ({ move: m, vm: r.vms.find((v) => v.vmId === m.vmId)!, autoConverge, limitMs: r.downtimeTargetMs }));
  });
}

/**
 * GUEST_BASE_BYTES: the base (whole MiB, 0–128) for which the sim's bytes, each move alone at its own measured rate
 * (memory sent ÷ QEMU's total time) with the writer's working set and the measured dirty rate, match the testbed's
 * with the least total |relative error|.
 */
export function fitGuestBase(runs: readonly string[] = CALIBRATION_RUNS): { baseMiB: number; meanAbsError: number; moves: number } {
  const moves = aloneMoves(runs);
  let best = { baseMiB: NaN, meanAbsError: Infinity, moves: moves.length };
  for (let baseMiB = 0; baseMiB <= 128; baseMiB++) {
    let err = 0;
    for (const { move, vm, autoConverge, limitMs } of moves) {
      const rateBps = (move.memorySentMiB * MIB) / (move.ramMs! / 1000);
      const s = simulateAlone({
        memoryBytes: vm.memoryMiB * MIB,
        nonZeroBytes: Math.min(vm.memoryMiB, baseMiB + vm.writer.workingSetMiB) * MIB,
        dirtyBps: vm.measuredDirtyMiBps * MIB,
        workingSetBytes: vm.writer.workingSetMiB * MIB,
        maxDowntimeMs: limitMs,
        autoConverge,
        rateBps,
      });
      err += Math.abs(s.bytes / MIB - move.memorySentMiB) / move.memorySentMiB;
    }
    if (err / moves.length < best.meanAbsError) best = { baseMiB, meanAbsError: err / moves.length, moves: moves.length };
  }
  return best;
}

/** The sim's error on the testbed's single moves with the constants as they are (bytes, rounds), for the docs. */
export function errorsWithConstants(runs: readonly string[] = CALIBRATION_RUNS): { bytes: number; rounds: number; moves: number } {
  const moves = aloneMoves(runs);
  let bytes = 0;
  let rounds = 0;
  for (const { move, vm, autoConverge, limitMs } of moves) {
    const s = simulateAlone({
      memoryBytes: vm.memoryMiB * MIB,
      nonZeroBytes: Math.min(vm.memoryMiB * MIB, GUEST_BASE_BYTES + vm.writer.workingSetMiB * MIB),
      dirtyBps: vm.measuredDirtyMiBps * MIB,
      workingSetBytes: vm.writer.workingSetMiB * MIB,
      maxDowntimeMs: limitMs,
      autoConverge,
      rateBps: (move.memorySentMiB * MIB) / (move.ramMs! / 1000),
    });
    bytes += Math.abs(s.bytes / MIB - move.memorySentMiB) / move.memorySentMiB;
    rounds += Math.abs(s.rounds - move.rounds) / move.rounds;
  }
  return { bytes: bytes / moves.length, rounds: rounds / moves.length, moves: moves.length };
}

if (require.main === module) {
  const setup = fitMoveSetupMs();
  const sw = fitSwitchover();
  const base = fitGuestBase();
  const errs = errorsWithConstants();
  process.stdout.write(
    `MOVE_SETUP_MS per run ${setup.perRun.map((x) => x.toFixed(0)).join(', ')}, mean ${setup.mean.toFixed(1)}\n` +
      `downtime median ${sw.medianDowntimeMs} ms over ${sw.moves} moves → switchover cost ${sw.switchoverCostMs} ms\n` +
      `guest base ${base.baseMiB} MiB (mean |bytes error| ${(100 * base.meanAbsError).toFixed(1)} % over ${base.moves} moves)\n` +
      `with the constants: bytes ${(100 * errs.bytes).toFixed(1)} %, rounds ${(100 * errs.rounds).toFixed(1)} % (${errs.moves} moves)\n`,
  );
}

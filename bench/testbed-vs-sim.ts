import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CALIBRATED_SWITCHOVER_COST_MS,
  CALIBRATION_RUNS,
  GUEST_BASE_BYTES,
  MOVE_SETUP_MS,
  ZERO_PAGE_WIRE_BYTES,
  footprintBytes,
} from '../compute/sim/calibration';
import { fitGuestBase, fitMoveSetupMs, fitSwitchover } from './sim/calibrate';
import { simulateEvacuation, type Schedule, type SimWorld } from './sim/evacuation';
import type { BenchVm } from './sim/host-mix';

/**
 * Does benchmark 1's sim predict the testbed? Each arm of a testbed evacuation (`bench/results/<run>-testbed-
 * evacuation.json`) is replayed on benchmark 1's own engine (`bench/sim/evacuation.ts` `simulateEvacuation`: the disk
 * mirror then the pre-copy on the max-min shared link) with benchmark 1's constants (`compute/sim/calibration.ts`), and
 * the testbed's figures are compared with the sim's: makespan, bytes on the wire, downtime, rounds.
 *
 * What the replay takes from the run (inputs, as dhm itself would measure them, not fits): the VMs (RAM, the disk data,
 * the writer's working set, the calc-dirty-rate measurement as the dirty rate), the arm's concurrency (dhm's arm: its
 * "N at most in flight"), its start order and auto-converge, the downtime limit, the NIC B and one stream's measured
 * rate S (`bench/calibration/<run>.json` `streamBytesPerSec.channels1`). What it takes from the constants: the set-up
 * per move, the guest's base (round 0 sends `footprintBytes`), the zero page's wire cost and the switchover's cost.
 *
 * The constants are fitted on the runs named in `fittedOn`; a run among them is not held out, and the table says so.
 *
 *   npm run bench:testbed-vs-sim -- [--file bench/results/<run>-testbed-evacuation.json]... [--fit-on <run>,<run>]
 *     [--leave-one-out <run>,<run>,<run>] [--write]
 *   npm run bench:testbed-vs-sim -- --report [--old <run>,<run>] [--runs <run>,<run>,<run>] [--write]
 * Without --fit-on: compute/sim/calibration.ts's constants as they are. --leave-one-out: for each run, the constants
 * refitted (bench/sim/calibrate.ts) on the others predict it. --write: the report goes to a new
 * bench/results/<now>-testbed-vs-sim.md as well. --report: the old constants (fitted on --old) and a leave-one-out refit
 * both predicting --runs (default CALIBRATION_RUNS), and the fit on all of --runs, with a summary table.
 */

const MIB = 2 ** 20;
const results = path.resolve(__dirname, 'results');

interface Move {
  vmId: string;
  state: string;
  startMs: number;
  endMs: number;
  downtimeMs?: number;
  rounds: number;
  memorySentMiB: number;
  diskDataMiB: number;
}
interface Arm {
  schedule: string;
  concurrency: number | string;
  makespanMs: number;
  bytesMiB: number;
  moves: Move[];
}
export interface TestbedRun {
  at: string;
  nicBandwidthBps: number;
  downtimeTargetMs: number;
  vms: Array<{ vmId: string; memoryMiB: number; diskFillMiB: number; writer: { workingSetMiB: number }; measuredDirtyMiBps: number }>;
  evacuations: Arm[];
}

/** The constants a prediction runs with, and the runs they were fitted on. */
export interface SimConstants {
  fittedOn: readonly string[];
  moveSetupMs: number;
  guestBaseBytes: number;
  switchoverCostMs: number;
}

/** compute/sim/calibration.ts as it is: what benchmark 1 runs with. */
export const SHIPPED: SimConstants = {
  fittedOn: CALIBRATION_RUNS,
  moveSetupMs: MOVE_SETUP_MS,
  guestBaseBytes: GUEST_BASE_BYTES,
  switchoverCostMs: CALIBRATED_SWITCHOVER_COST_MS,
};

/** The constants bench/sim/calibrate.ts fits on `runs` (the same fits as compute/sim/calibration.ts's). */
export function constantsFittedOn(runs: readonly string[]): SimConstants {
  return {
    fittedOn: runs,
    moveSetupMs: fitMoveSetupMs(runs).mean,
    guestBaseBytes: fitGuestBase(runs).baseMiB * MIB,
    switchoverCostMs: fitSwitchover(runs).switchoverCostMs,
  };
}

/** The run's stamp, as bench/calibration/ and CALIBRATION_RUNS name it. */
export const stampOf = (file: string) => path.basename(file).replace(/-testbed-evacuation\.json$/, '');

/** The arm's concurrency: a number for the baselines, dhm's "… N at most in flight" for its workflow. */
export function concurrencyOf(arm: Arm): number {
  if (typeof arm.concurrency === 'number') return arm.concurrency;
  const m = /(\d+) at most in flight/.exec(arm.concurrency);
  if (!m) throw new Error(`arm ${arm.schedule}: concurrency "${arm.concurrency}" names no count in flight`);
  return Number(m[1]);
}

/** dhm's arm turns auto-converge on above its policy's threshold; the baselines by their name. */
function autoConvergeFor(arm: Arm & { workflow?: { policy?: { autoConverge?: boolean; autoConvergeAboveDirtyRateMiBps?: number } } }, dirtyMiBps: number) {
  const p = arm.workflow?.policy;
  if (p) return Boolean(p.autoConverge) || (p.autoConvergeAboveDirtyRateMiBps !== undefined && dirtyMiBps >= p.autoConvergeAboveDirtyRateMiBps);
  return /auto-converge/.test(arm.schedule);
}

export interface FigureRow {
  figure: 'makespan' | 'bytes' | 'downtime' | 'rounds';
  unit: string;
  testbed: number;
  sim: number;
  /** (sim − testbed) / testbed. */
  error: number;
  /** Mean |error| over the arm's moves (bytes, downtime, rounds). */
  perMoveAbsError?: number;
}
export interface ArmComparison {
  run: string;
  arm: string;
  concurrency: number;
  heldOut: boolean;
  rows: FigureRow[];
}

/** Replays one testbed arm on benchmark 1's engine with `c`; the testbed's figures against the sim's. */
export function compareArm(run: TestbedRun, stamp: string, arm: Arm, streamBytesPerSec: number, c: SimConstants): ArmComparison {
  const moves = arm.moves.filter((m) => m.state === 'completed');
  if (moves.length !== arm.moves.length) throw new Error(`${stamp} ${arm.schedule}: a move did not complete; the replay compares completed arms only`);
  const order = [...moves].sort((a, b) => a.startMs - b.startMs).map((m) => m.vmId);
  const vms: BenchVm[] = order.map((vmId) => {
    const v = run.vms.find((x) => x.vmId === vmId);
    if (!v) throw new Error(`${stamp}: move of ${vmId}, which is not among the run's VMs`);
    const ram = v.memoryMiB * MIB;
    const ws = v.writer.workingSetMiB * MIB;
    return {
      vmId,
      memoryBytes: ram,
      // The function benchmark 1 uses; with another base, the same formula.
      nonZeroBytes: c.guestBaseBytes === GUEST_BASE_BYTES ? footprintBytes(ram, ws) : Math.min(ram, c.guestBaseBytes + ws),
      dirtyRateBps: v.measuredDirtyMiBps * MIB,
      workingSetBytes: ws,
      coldDirtyRateBps: 0, // the testbed's writers rewrite their working set only
      diskBytes: v.diskFillMiB * MIB,
      diskWriteBps: 0, // and do not write the disk
      kind: 'busy',
    };
  });
  const k = concurrencyOf(arm);
  const autoConverge = new Map(vms.map((v) => [v.vmId, autoConvergeFor(arm, v.dirtyRateBps / MIB)]));
  const schedule: Schedule = {
    name: arm.schedule,
    streams: k,
    // The testbed's own start order: the next VM of it whenever a slot frees.
    launch: (host, free) =>
      host.vms
        .filter((v) => v.state === 'pending')
        .slice(0, free)
        .map((v) => v.vmId),
    settings: (vmId) => ({ autoConverge: autoConverge.get(vmId)!, bandwidthCapBps: undefined, channels: 1, maxDowntimeMs: run.downtimeTargetMs }),
    onNotConverging: 'give-up',
  };
  const world: SimWorld = { moveSetupMs: c.moveSetupMs, switchoverCostMs: c.switchoverCostMs, zeroPageWireBytes: ZERO_PAGE_WIRE_BYTES, switchover: 'qemu' };
  const B = run.nicBandwidthBps / 8;
  const sim = simulateEvacuation(vms, schedule, { bytesPerSec: B, streamCapFraction: Math.min(1, streamBytesPerSec / B) }, world);
  const simOf = new Map(sim.perVm.map((v) => [v.vmId, v]));
  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  const rel = (real: number, s: number) => (s - real) / real;
  const perMove = (real: (m: Move) => number, s: (vmId: string) => number) => mean(moves.map((m) => Math.abs(rel(real(m), s(m.vmId)))));
  const testbedDowntime = mean(moves.map((m) => m.downtimeMs!));
  const simDowntime = mean(moves.map((m) => simOf.get(m.vmId)!.downtimeMs!));
  const testbedRounds = mean(moves.map((m) => m.rounds));
  const simRounds = mean(moves.map((m) => simOf.get(m.vmId)!.rounds));
  const simBytesMiB = sim.bytesSent / MIB;
  return {
    run: stamp,
    arm: arm.schedule,
    concurrency: k,
    heldOut: !c.fittedOn.includes(stamp),
    rows: [
      { figure: 'makespan', unit: 'ms', testbed: arm.makespanMs, sim: sim.makespanS * 1000, error: rel(arm.makespanMs, sim.makespanS * 1000) },
      {
        figure: 'bytes',
        unit: 'MiB',
        testbed: arm.bytesMiB,
        sim: simBytesMiB,
        error: rel(arm.bytesMiB, simBytesMiB),
        perMoveAbsError: perMove(
          (m) => m.memorySentMiB + m.diskDataMiB,
          (id) => simOf.get(id)!.bytesSent / MIB,
        ),
      },
      {
        figure: 'downtime',
        unit: 'ms (mean)',
        testbed: testbedDowntime,
        sim: simDowntime,
        error: rel(testbedDowntime, simDowntime),
        perMoveAbsError: perMove(
          (m) => m.downtimeMs!,
          (id) => simOf.get(id)!.downtimeMs!,
        ),
      },
      {
        figure: 'rounds',
        unit: '(mean)',
        testbed: testbedRounds,
        sim: simRounds,
        error: rel(testbedRounds, simRounds),
        perMoveAbsError: perMove(
          (m) => m.rounds,
          (id) => simOf.get(id)!.rounds,
        ),
      },
    ],
  };
}

export function readTestbedRun(file: string): { run: TestbedRun; stamp: string; streamBytesPerSec: number } {
  const run = JSON.parse(fs.readFileSync(file, 'utf8')) as TestbedRun;
  const stamp = stampOf(file);
  const calibration = JSON.parse(fs.readFileSync(path.resolve(__dirname, 'calibration', `${stamp}.json`), 'utf8')) as {
    streamBytesPerSec: { channels1: number };
  };
  return { run, stamp, streamBytesPerSec: calibration.streamBytesPerSec.channels1 };
}

/** Every arm of a run whose moves all completed. */
export function compareRun(file: string, c: SimConstants): ArmComparison[] {
  const { run, stamp, streamBytesPerSec } = readTestbedRun(file);
  return run.evacuations.filter((a) => a.moves.every((m) => m.state === 'completed')).map((a) => compareArm(run, stamp, a, streamBytesPerSec, c));
}

export const MAKESPAN_TARGET = 0.15;
const FIGURES = ['makespan', 'bytes', 'downtime', 'rounds'] as const;

/** Mean |error| per figure over the arms (the arm's own figure: makespan, Σ bytes, mean downtime, mean rounds). */
export function meanAbsErrors(arms: ArmComparison[]): Record<(typeof FIGURES)[number], number> {
  const out = {} as Record<(typeof FIGURES)[number], number>;
  for (const f of FIGURES) {
    const xs = arms.map((a) => Math.abs(a.rows.find((r) => r.figure === f)!.error));
    out[f] = xs.reduce((s, x) => s + x, 0) / xs.length;
  }
  return out;
}

const pct = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(0)} %`;
const num = (x: number) => (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1));
const describe = (c: SimConstants) =>
  `set-up ${c.moveSetupMs.toFixed(0)} ms, guest base ${(c.guestBaseBytes / MIB).toFixed(0)} MiB, switchover cost ${c.switchoverCostMs.toFixed(0)} ms; fitted on ${c.fittedOn.join(', ')}`;

/** One block of the report: the arms' figures and the mean errors, with the verdict against the makespan target. */
export function renderBlock(title: string, c: SimConstants, arms: ArmComparison[]): string {
  const lines = [`### ${title}`, '', `Constants: ${describe(c)}.`, ''];
  const notHeld = [...new Set(arms.filter((a) => !a.heldOut).map((a) => a.run))];
  lines.push(
    notHeld.length ? `**Not held out:** ${notHeld.join(', ')} (the constants were fitted on it).` : 'Every predicted run is held out (not among the fit runs).',
    '',
  );
  lines.push('| run | arm | k | figure | testbed | sim | error | per-move mean \\|error\\| |', '|---|---|---:|---|---:|---:|---:|---:|');
  for (const a of arms)
    for (const r of a.rows)
      lines.push(
        `| ${a.run} | ${a.arm} | ${a.concurrency} | ${r.figure} ${r.unit} | ${num(r.testbed)} | ${num(r.sim)} | ${pct(r.error)} | ${r.perMoveAbsError === undefined ? '—' : `${(100 * r.perMoveAbsError).toFixed(0)} %`} |`,
      );
  const m = meanAbsErrors(arms);
  lines.push('', `Mean |error| over ${arms.length} arms: ${FIGURES.map((f) => `${f} ${(100 * m[f]).toFixed(0)} %`).join(', ')}.`);
  lines.push(
    `Verdict: makespan ${m.makespan <= MAKESPAN_TARGET ? 'meets' : 'misses'} the ≤ ${(100 * MAKESPAN_TARGET).toFixed(0)} % target (${(100 * m.makespan).toFixed(0)} %).`,
    '',
  );
  return lines.join('\n');
}

function args(name: string): string[] {
  const out: string[] = [];
  process.argv.forEach((a, i) => a === name && process.argv[i + 1] && out.push(process.argv[i + 1]!));
  return out;
}

function newest(): string {
  const files = fs.readdirSync(results).filter((f) => f.endsWith('-testbed-evacuation.json'));
  if (!files.length) throw new Error('no bench/results/*-testbed-evacuation.json: run npm run bench:testbed-evacuation first');
  return path.join(results, files.sort().at(-1)!);
}

const runFile = (stamp: string) => path.join(results, `${stamp}-testbed-evacuation.json`);

/** The summary table: mean |error| per figure, one column per set of constants. */
function summary(columns: Array<{ title: string; arms: ArmComparison[] }>): string {
  const head = `| figure | ${columns.map((c) => c.title).join(' | ')} |`;
  const rule = `|---|${columns.map(() => '---:').join('|')}|`;
  const means = columns.map((c) => meanAbsErrors(c.arms));
  const rows = FIGURES.map((f) => `| ${f}${f === 'makespan' ? ' (target ≤ 15 %)' : ''} | ${means.map((m) => `${(100 * m[f]).toFixed(0)} %`).join(' | ')} |`);
  return [head, rule, ...rows, `| arms | ${columns.map((c) => c.arms.length).join(' | ')} |`].join('\n');
}

/**
 * --report: the three questions at once. Do the constants fitted on `old` predict `runs` (held out)? Does a fit on
 * all but one of `runs` predict that one (leave-one-out, held out)? And how close is the fit on all of `runs` (not
 * held out: in-sample)?
 */
function report(old: string[], runs: string[]): string {
  const oldC = constantsFittedOn(old);
  const oldArms = runs.flatMap((r) => compareRun(runFile(r), oldC));
  const looBlocks: string[] = [];
  const looArms: ArmComparison[] = [];
  for (const held of runs) {
    const c = constantsFittedOn(runs.filter((r) => r !== held));
    const arms = compareRun(runFile(held), c);
    looArms.push(...arms);
    looBlocks.push(renderBlock(`Refitted on the other two, predicting ${held}`, c, arms));
  }
  const allC = constantsFittedOn(runs);
  const allArms = runs.flatMap((r) => compareRun(runFile(r), allC));
  return [
    '## Mean |error| per figure over the arms',
    '',
    summary([
      { title: `fit on ${old.join(' + ')}, predicting ${runs.length} later runs (held out)`, arms: oldArms },
      { title: 'fit on 2 of the later runs, predicting the third (held out)', arms: looArms },
      { title: `fit on all ${runs.length} later runs (in-sample, not held out)`, arms: allArms },
    ]),
    '',
    "Per arm: makespan (first move's start to last move's end), Σ bytes on the wire (memory + disk data), mean downtime and " +
      "mean rounds over the arm's moves; the last column is the mean over the moves of each move's own |error|. Inputs from " +
      "the predicted run itself (measured, not fitted): the VMs, the dirty rates (calc-dirty-rate), one stream's rate S " +
      "(`bench/calibration/<run>.json` `streamBytesPerSec.channels1`), the arm's concurrency, order and auto-converge.",
    '',
    renderBlock(`Fit on ${old.join(', ')} (the constants before this refit)`, oldC, oldArms),
    ...looBlocks,
    renderBlock(`Fit on ${runs.join(', ')} (compute/sim/calibration.ts's constants after this refit)`, allC, allArms),
  ].join('\n');
}

function main(): void {
  if (process.argv.includes('--report')) {
    const old = (args('--old')[0] ?? '2026-12-02T03-18-02,2026-12-02T03-32-38').split(',');
    const runs = (args('--runs')[0] ?? CALIBRATION_RUNS.join(',')).split(',');
    return emit(report(old, runs));
  }
  const files = args('--file');
  const fitOn = args('--fit-on')[0]?.split(',');
  const loo = args('--leave-one-out')[0]?.split(',');
  const blocks: string[] = [];
  const predicted = files.length ? files : loo ? [] : [newest()];
  if (predicted.length) {
    const c = fitOn ? constantsFittedOn(fitOn) : SHIPPED;
    blocks.push(
      renderBlock(
        fitOn ? `Constants refitted on ${fitOn.join(', ')}` : 'compute/sim/calibration.ts as it is',
        c,
        predicted.flatMap((f) => compareRun(f, c)),
      ),
    );
  }
  if (loo) {
    if (loo.length < 2) throw new Error('--leave-one-out: name at least two runs, comma-separated');
    const all: ArmComparison[] = [];
    for (const held of loo) {
      const c = constantsFittedOn(loo.filter((r) => r !== held));
      const arms = compareRun(runFile(held), c);
      all.push(...arms);
      blocks.push(renderBlock(`Refitted on ${c.fittedOn.join(', ')}, predicting ${held}`, c, arms));
    }
    const m = meanAbsErrors(all);
    blocks.push(
      `### Leave-one-out over ${loo.join(', ')}\n\nMean |error| over ${all.length} held-out arms: ${FIGURES.map((f) => `${f} ${(100 * m[f]).toFixed(0)} %`).join(', ')}.\n`,
    );
  }
  emit(blocks.join('\n'));
}

function emit(text: string): void {
  process.stdout.write(`${text}\n`);
  if (process.argv.includes('--write')) {
    const stamp = new Date().toISOString().replace(/:/g, '-').replace(/\..*$/, '');
    const out = path.join(results, `${stamp}-testbed-vs-sim.md`);
    const cmd = `npm run bench:testbed-vs-sim -- ${process.argv.slice(2).join(' ')}`;
    // 'wx': a report is never overwritten.
    fs.writeFileSync(out, `# Testbed vs benchmark 1's sim (${stamp})\n\n\`${cmd}\`\n\n${text}\n`, { flag: 'wx' });
    process.stdout.write(`wrote ${path.relative(process.cwd(), out)}\n`);
  }
}

if (require.main === module) main();

import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_MAX_ROUNDS, PrecopyFlow } from '../compute/sim/precopy';

/**
 * The sim's pre-copy model against the testbed, on the same VMs: constants are fitted on the benchmark's multifd
 * part (single-channel moves of the largest VM only), then the sequential evacuations (one move at a time, so the
 * model's link is the move's alone) are predicted and compared per figure: makespan, bytes, downtime, rounds.
 *
 * Fitted (from the single-channel moves): one stream's rate S (their bytes ÷ QEMU total time), the fraction of RAM that
 * is not zero pages (what round 0 really sends: QEMU sends a zero page as a flag), and the per-move fixed cost (wall −
 * QEMU total time: destination start, accept, disk mirror, commit). Each VM's dirty rate is its calc-dirty-rate
 * measurement, its working set the writer's. The sim's own SWITCHOVER_COST_MS and pre-copy rules are as in compute/sim.
 *
 *   node -r @swc-node/register bench/testbed-vs-sim.ts [--file bench/results/<stamp>-testbed-evacuation.json]
 * Prints the table; writes nothing.
 */

const MIB = 2 ** 20;

interface Move {
  vmId: string;
  state: string;
  wallMs: number;
  ramMs?: number;
  downtimeMs?: number;
  rounds: number;
  memorySentMiB: number;
  diskDataMiB: number;
}
interface Result {
  at: string;
  nicBandwidthBps: number;
  downtimeTargetMs: number;
  vms: Array<{ vmId: string; memoryMiB: number; writer: { dirtyRateMiBps: number; workingSetMiB: number }; measuredDirtyMiBps: number }>;
  multifd: Array<{ nicMbps: number; channels: number; move: Move }>;
  evacuations: Array<{ schedule: string; concurrency: number; makespanMs: number; moves: Move[] }>;
}

function newest(): string {
  const dir = path.resolve(__dirname, 'results');
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('-testbed-evacuation.json'));
  if (!files.length) throw new Error('no bench/results/*-testbed-evacuation.json: run npm run bench:testbed-evacuation first');
  return path.join(dir, files.sort().at(-1)!);
}

/** One move alone on a link of rate `rateBps`: the model's RAM time, bytes, downtime and rounds. */
function simulate(p: { memoryBytes: number; dirtyBps: number; workingSetBytes: number; maxDowntimeMs: number; autoConverge: boolean; rateBps: number }) {
  let pausedAt = 0;
  let copiedAt = 0;
  let gaveUp = false;
  const flow = new PrecopyFlow(
    {
      memoryBytes: p.memoryBytes,
      dirtyRateBps: p.dirtyBps,
      workingSetBytes: p.workingSetBytes,
      maxDowntimeMs: p.maxDowntimeMs,
      autoConverge: p.autoConverge,
      maxRounds: DEFAULT_MAX_ROUNDS,
      capBps: p.rateBps,
      failAtRound: null,
    },
    { onPause: (t) => (pausedAt = t), onCopied: (t) => (copiedAt = t), onGiveUp: () => (gaveUp = true) },
  );
  let t = 0;
  flow.start(0);
  flow.rateBps = p.rateBps;
  for (let i = 0; i < 100_000; i++) {
    const chunk = flow.pending;
    t += (chunk / p.rateBps) * 1000;
    flow.onSent(chunk);
    if (!flow.onChunkDone(t) || flow.phase === 'copied') break;
  }
  return { ramMs: copiedAt || t, bytes: flow.bytesSent, downtimeMs: copiedAt - pausedAt, rounds: flow.round + 1, gaveUp };
}

function main(): void {
  const i = process.argv.indexOf('--file');
  const file = i > 0 ? process.argv[i + 1]! : newest();
  const r = JSON.parse(fs.readFileSync(file, 'utf8')) as Result;
  const nicMbps = r.nicBandwidthBps / 1e6;
  // ---- fit on the single-channel multifd moves (the largest VM) ----
  const fit = r.multifd.filter((x) => x.channels === 1 && x.nicMbps === nicMbps && x.move.state === 'completed').map((x) => x.move);
  if (!fit.length) throw new Error(`${file}: no completed single-channel move to fit on`);
  const probeVm = r.vms.find((v) => v.vmId === fit[0]!.vmId)!;
  const S = fit.reduce((s, m) => s + (m.memorySentMiB * MIB) / (m.ramMs! / 1000), 0) / fit.length;
  const fixedMs = fit.reduce((s, m) => s + (m.wallMs - m.ramMs!), 0) / fit.length;
  // Round 0's bytes ≈ sent − what the writer re-dirtied for the later rounds (≤ one working set per extra round).
  const nonZero =
    fit.reduce((s, m) => s + Math.max(0.05, (m.memorySentMiB - Math.min(m.rounds - 1, 3) * probeVm.writer.workingSetMiB * 0.5) / probeVm.memoryMiB), 0) /
    fit.length;
  process.stdout.write(
    `${file}\nfitted on ${fit.length} single-channel moves of ${probeVm.vmId}: S = ${(S / 1e6).toFixed(1)} MB/s, non-zero RAM fraction ${nonZero.toFixed(3)}, fixed cost per move ${Math.round(fixedMs)} ms\n\n`,
  );
  const rows: string[] = ['| schedule | VM | figure | testbed | sim | error |', '|---|---|---|---|---|---|'];
  const err = (real: number, sim: number) => (real === 0 ? '—' : `${(((sim - real) / real) * 100).toFixed(0)} %`);
  const errors: Record<string, number[]> = { makespan: [], bytes: [], downtime: [], rounds: [] };
  for (const e of r.evacuations.filter((x) => x.concurrency === 1)) {
    const autoConverge = /auto-converge/.test(e.schedule);
    let simMakespan = 0;
    for (const m of e.moves.filter((x) => x.state === 'completed')) {
      const vm = r.vms.find((v) => v.vmId === m.vmId)!;
      const s = simulate({
        memoryBytes: nonZero * vm.memoryMiB * MIB,
        dirtyBps: vm.measuredDirtyMiBps * MIB,
        workingSetBytes: vm.writer.workingSetMiB * MIB,
        maxDowntimeMs: r.downtimeTargetMs,
        autoConverge,
        rateBps: S,
      });
      simMakespan += s.ramMs + fixedMs;
      const figs: Array<[string, number, number]> = [
        ['bytes MiB', m.memorySentMiB, s.bytes / MIB],
        ['downtime ms', m.downtimeMs ?? 0, s.downtimeMs],
        ['rounds', m.rounds, s.rounds],
      ];
      for (const [f, real, sim] of figs) {
        rows.push(`| ${e.schedule} | ${m.vmId} | ${f} | ${real.toFixed(0)} | ${sim.toFixed(0)} | ${err(real, sim)} |`);
        if (real > 0) errors[f.split(' ')[0]!]!.push(Math.abs((sim - real) / real));
      }
    }
    rows.push(`| ${e.schedule} | all | makespan ms | ${e.makespanMs} | ${Math.round(simMakespan)} | ${err(e.makespanMs, simMakespan)} |`);
    errors.makespan!.push(Math.abs((simMakespan - e.makespanMs) / e.makespanMs));
  }
  process.stdout.write(`${rows.join('\n')}\n\n`);
  for (const [k, v] of Object.entries(errors))
    process.stdout.write(
      `mean |error| ${k}: ${v.length ? ((v.reduce((a, b) => a + b, 0) / v.length) * 100).toFixed(0) : '—'} % (${v.length} figures)${k === 'makespan' ? '; target ≤ 15 %' : ''}\n`,
    );
}

main();

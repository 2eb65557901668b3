import { bitsToBytesPerSec } from '../../compute/units';
import { DEFAULT_TUNING, type Tuning } from '../../workflows/scheduler';
import { simulateEvacuation, type EvacuationResult, type LinkSpec } from './evacuation';
import { GIB, generateHost } from './host-mix';
import { ablationsFor, BASELINE_NAMES, SCHEDULE_NAMES, schedulesFor, type BenchLink, type ScheduleName } from './schedules';

/**
 * Benchmark 1's settings: the issue's host sizes, a 10 Gbit/s NIC, the sim's per-stream cap of 40 % of it (the simulated
 * world's; dhm only sees it measured), one downtime limit for every schedule, and two seed sets: the policy's
 * constants are tuned on TUNING_SEEDS only (`--tune`), the figures are reported on HELD_OUT_SEEDS.
 */
export interface EvacuationBenchOptions {
  sizes: number[];
  /** The seed of the one host per size shown in full (a held-out seed). */
  seed: number;
  link: BenchLink;
  /** Held-out seeds the targets are judged on. */
  heldOutSeeds: number[];
  /** Tuning seeds whose figures are printed next to the held-out ones (the constants were chosen on them). */
  tuningSeeds: number[];
}

export const DEFAULT_LINK: BenchLink = { nicBandwidthBps: 10e9, streamCapFraction: 0.4, downtimeLimitMs: 300 };
export const TUNING_SEEDS = range(1, 200);
export const HELD_OUT_SEEDS = range(10001, 10100);

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

export type ScheduleFigures = Omit<EvacuationResult, 'perVm'>;

export interface HostFigures {
  vms: number;
  seed: number;
  memoryGiB: number;
  hotVms: number;
  lowerBoundS: number;
  /** max(Σ(M+D)/B, the largest VM's bound at dhm's move cap). */
  boundS: number;
  schedules: Record<ScheduleName, ScheduleFigures>;
  /** The fastest baseline that emptied the host (undefined: none did). */
  bestBaseline: ScheduleName | undefined;
  targets: { withinBound: boolean; belowBestBaseline: boolean; p95NoWorseThanBestBaseline: boolean };
}

/** The targets, judged on one seed set per host size. */
export interface SeedSetFigures {
  vms: number;
  hosts: number;
  dhmMeanRatioToBound: number;
  dhmWorstRatioToBound: number;
  dhmMeanBytesRatio: number;
  /** Share of hosts with dhm ≤ BOUND_TARGET × max(Σ(M+D)/B, largest VM's bound). Target: ≥ 95 %. */
  withinBound: number;
  /** Share of hosts on which dhm is faster than the best baseline. Target: all. */
  belowBestBaseline: number;
  /** Share of hosts on which dhm's p95 downtime ≤ the best baseline's. Target: all. */
  p95NoWorse: number;
  /** Mean of the best baseline's makespan ÷ the bound, and which baseline was best how often. */
  bestBaselineMeanRatioToBound: number;
  bestBaselineCounts: Record<string, number>;
  /** Hosts on which a baseline left VMs on the source, per baseline. */
  baselineStayed: Record<string, number>;
  dhmThrottleCpuS: number;
}

export interface EvacuationBenchResult {
  options: EvacuationBenchOptions;
  tuning: Tuning;
  hosts: HostFigures[];
  ablations: Array<{ vms: number; rows: ScheduleFigures[] }>;
  heldOut: SeedSetFigures[];
  tuningSet: SeedSetFigures[];
}

export const BOUND_TARGET = 1.1;
export const WITHIN_BOUND_SHARE_TARGET = 0.95;

export function linkSpec(link: BenchLink): LinkSpec {
  return { bytesPerSec: bitsToBytesPerSec(link.nicBandwidthBps), streamCapFraction: link.streamCapFraction };
}

/** Per-host seed: the run's seed and the host size, so adding a size does not change the others. */
export const hostSeed = (seed: number, vms: number) => seed * 1000 + vms;

const strip = ({ perVm: _perVm, ...rest }: EvacuationResult): ScheduleFigures => rest;

export function evaluateHost(vms: number, seed: number, link: BenchLink, tuning: Tuning = DEFAULT_TUNING, only?: ScheduleName[]): HostFigures {
  const spec = linkSpec(link);
  const hs = hostSeed(seed, vms);
  const host = generateHost(vms, hs, spec.bytesPerSec);
  const schedules = schedulesFor(link, spec, host, hs, tuning);
  const names = only ?? SCHEDULE_NAMES;
  const figures = Object.fromEntries(names.map((name) => [name, strip(simulateEvacuation(host, schedules[name], spec))])) as Record<
    ScheduleName,
    ScheduleFigures
  >;
  const emptied = BASELINE_NAMES.filter((n) => figures[n] && figures[n].stayed === 0);
  const bestBaseline = emptied.reduce<ScheduleName | undefined>(
    (best, n) => (best === undefined || figures[n].makespanS < figures[best].makespanS ? n : best),
    undefined,
  );
  const dhm = figures.dhm;
  const best = bestBaseline ? figures[bestBaseline] : undefined;
  return {
    vms,
    seed,
    memoryGiB: host.reduce((s, v) => s + v.memoryBytes, 0) / GIB,
    hotVms: host.filter((v) => v.kind === 'hot').length,
    lowerBoundS: dhm.lowerBoundS,
    boundS: dhm.streamBoundS,
    schedules: figures,
    bestBaseline,
    targets: {
      withinBound: dhm.stayed === 0 && dhm.ratioToStreamBound <= BOUND_TARGET,
      belowBestBaseline: dhm.stayed === 0 && (best === undefined || dhm.makespanS < best.makespanS),
      p95NoWorseThanBestBaseline: best === undefined || dhm.p95DowntimeMs <= best.p95DowntimeMs,
    },
  };
}

export function summarise(vms: number, rows: HostFigures[]): SeedSetFigures {
  const share = (f: (h: HostFigures) => boolean) => rows.filter(f).length / rows.length;
  const mean = (f: (h: HostFigures) => number) => rows.reduce((s, h) => s + f(h), 0) / rows.length;
  const withBest = rows.filter((h) => h.bestBaseline !== undefined);
  const counts: Record<string, number> = {};
  for (const h of withBest) counts[h.bestBaseline!] = (counts[h.bestBaseline!] ?? 0) + 1;
  const stayed: Record<string, number> = {};
  for (const n of BASELINE_NAMES) stayed[n] = rows.filter((h) => h.schedules[n] && h.schedules[n].stayed > 0).length;
  return {
    vms,
    hosts: rows.length,
    dhmMeanRatioToBound: mean((h) => h.schedules.dhm.ratioToStreamBound),
    dhmWorstRatioToBound: Math.max(...rows.map((h) => h.schedules.dhm.ratioToStreamBound)),
    dhmMeanBytesRatio: mean((h) => h.schedules.dhm.bytesRatio),
    withinBound: share((h) => h.targets.withinBound),
    belowBestBaseline: share((h) => h.targets.belowBestBaseline),
    p95NoWorse: share((h) => h.targets.p95NoWorseThanBestBaseline),
    bestBaselineMeanRatioToBound: withBest.length ? withBest.reduce((s, h) => s + h.schedules[h.bestBaseline!].makespanS / h.boundS, 0) / withBest.length : NaN,
    bestBaselineCounts: counts,
    baselineStayed: stayed,
    dhmThrottleCpuS: mean((h) => h.schedules.dhm.throttleCpuS),
  };
}

export function runEvacuationBench(options: EvacuationBenchOptions, tuning: Tuning = DEFAULT_TUNING): EvacuationBenchResult {
  const spec = linkSpec(options.link);
  const hosts = options.sizes.map((vms) => evaluateHost(vms, options.seed, options.link, tuning));
  const ablations = options.sizes.map((vms) => {
    const hs = hostSeed(options.seed, vms);
    const host = generateHost(vms, hs, spec.bytesPerSec);
    return { vms, rows: ablationsFor(options.link, spec, host, hs).map((s) => strip(simulateEvacuation(host, s, spec))) };
  });
  const over = (seeds: number[], only?: ScheduleName[]) =>
    options.sizes.map((vms) =>
      summarise(
        vms,
        seeds.map((seed) => evaluateHost(vms, seed, options.link, tuning, only)),
      ),
    );
  // The tuning seeds with dhm alone: what the constants were chosen on, printed beside the held-out figures.
  return { options, tuning, hosts, ablations, heldOut: over(options.heldOutSeeds), tuningSet: over(options.tuningSeeds, ['dhm']) };
}

/**
 * `--tune`: the policy's constants swept on the tuning seeds only (dhm alone against the bound: the constants shape
 * dhm's schedule, not the baselines'). Returns every candidate's mean ratio to the bound and share within target.
 */
export type TuneRow = Tuning & {
  meanRatioToBound: number;
  withinBound: number;
  throttledPerHost: number;
  throttleCpuSPerHost: number;
  meanP95DowntimeMs: number;
  bytesRatio: number;
};
export function tune(sizes: number[], seeds: number[], link: BenchLink): TuneRow[] {
  const out: TuneRow[] = [];
  // The last sweeps (bench/results/2026-12-02T03-31-41.tune.txt, …T06-05-36.tune.txt) found the slack without effect
  // (multifd moves fill the link: no caps), …T06-09-30.tune.txt chose the auto-converge share (0.3) with what it costs
  // the guests (with a 7 s set-up), …T15-38-59.tune.txt the overlap threshold (0.1), …T18-27-03.tune.txt the downtime
  // aim (1/3). Now the auto-converge share again, on the quiet testbed's constants, with the others as chosen.
  for (const criticalPathSlack of [1.1])
    for (const autoConvergeShare of [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.8])
      for (const overlapThreshold of [DEFAULT_TUNING.overlapThreshold])
        for (const downtimeAim of [DEFAULT_TUNING.downtimeAim]) {
          const t = { criticalPathSlack, autoConvergeShare, overlapThreshold, downtimeAim };
          const rows = sizes.flatMap((vms) => seeds.map((seed) => evaluateHost(vms, seed, link, t, ['dhm'])));
          out.push({
            ...t,
            meanRatioToBound: rows.reduce((s, h) => s + h.schedules.dhm.ratioToStreamBound, 0) / rows.length,
            withinBound: rows.filter((h) => h.schedules.dhm.stayed === 0 && h.schedules.dhm.ratioToStreamBound <= BOUND_TARGET).length / rows.length,
            throttledPerHost: rows.reduce((s, h) => s + h.schedules.dhm.throttled, 0) / rows.length,
            throttleCpuSPerHost: rows.reduce((s, h) => s + h.schedules.dhm.throttleCpuS, 0) / rows.length,
            meanP95DowntimeMs: rows.reduce((s, h) => s + h.schedules.dhm.p95DowntimeMs, 0) / rows.length,
            bytesRatio: rows.reduce((s, h) => s + h.schedules.dhm.bytesRatio, 0) / rows.length,
          });
        }
  return out.sort((a, b) => a.meanRatioToBound - b.meanRatioToBound);
}

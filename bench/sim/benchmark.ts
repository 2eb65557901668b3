import { bitsToBytesPerSec } from '../../compute/units';
import { simulateEvacuation, type EvacuationResult, type LinkSpec } from './evacuation';
import { GIB, generateHost } from './host-mix';
import { ablationsFor, SCHEDULE_NAMES, schedulesFor, type BenchLink, type ScheduleName } from './schedules';

/** Benchmark 1's settings: the issue's host sizes, a 10 Gbit/s NIC, a per-stream cap of 40 % of it, a fixed seed. */
export interface EvacuationBenchOptions {
  sizes: number[];
  seed: number;
  link: BenchLink;
  /** Extra seeds for the robustness summary (0: none). */
  robustnessSeeds: number;
}

export const DEFAULT_LINK: BenchLink = { nicBandwidthBps: 10e9, streamCapFraction: 0.4, downtimeLimitMs: 300 };

export type ScheduleFigures = Omit<EvacuationResult, 'perVm'>;

export interface HostFigures {
  vms: number;
  memoryGiB: number;
  hotVms: number;
  lowerBoundS: number;
  streamBoundS: number;
  schedules: Record<ScheduleName, ScheduleFigures>;
  bestBaseline: ScheduleName;
  targets: { withinLowerBound: boolean; noWorseThanBestBaseline: boolean; betterP95ThanBestBaseline: boolean };
}

export interface RobustnessFigures {
  vms: number;
  hosts: number;
  dhmMeanRatio: number;
  dhmWorstRatio: number;
  dhmWorstRatioToStreamBound: number;
  /** Bytes dhm sent over ΣM: mean and worst (resends of dirty pages; no schedule can beat what it must send). */
  dhmMeanBytesRatio: number;
  dhmWorstBytesRatio: number;
  /** Share of hosts on which dhm is within 1.15× of ΣM/B. */
  withinLowerBound: number;
  withinStreamBound: number;
  /** Share of hosts on which dhm is no slower than, and has a lower p95 downtime than, the best baseline. */
  beatsBestBaseline: number;
  bestBaselineMeanRatio: number;
}

export interface EvacuationBenchResult {
  options: EvacuationBenchOptions;
  hosts: HostFigures[];
  ablations: Array<{ vms: number; rows: ScheduleFigures[] }>;
  robustness: RobustnessFigures[];
}

export const LOWER_BOUND_TARGET = 1.15;

export function linkSpec(link: BenchLink): LinkSpec {
  return { bytesPerSec: bitsToBytesPerSec(link.nicBandwidthBps), streamCapFraction: link.streamCapFraction };
}

/** Per-host seed: the run's seed and the host size, so adding a size does not change the others. */
const hostSeed = (seed: number, vms: number) => seed * 1000 + vms;

const strip = ({ perVm: _perVm, ...rest }: EvacuationResult): ScheduleFigures => rest;

function evaluate(vms: number, seed: number, link: BenchLink): HostFigures {
  const spec = linkSpec(link);
  const host = generateHost(vms, hostSeed(seed, vms), spec.bytesPerSec);
  const schedules = schedulesFor(link, host);
  const figures = Object.fromEntries(SCHEDULE_NAMES.map((name) => [name, strip(simulateEvacuation(host, schedules[name], spec))])) as Record<
    ScheduleName,
    ScheduleFigures
  >;
  const baselines = SCHEDULE_NAMES.filter((n) => n !== 'dhm');
  const bestBaseline = baselines.reduce((best, n) => (figures[n].makespanS < figures[best].makespanS ? n : best), baselines[0]!);
  const dhm = figures.dhm;
  return {
    vms,
    memoryGiB: host.reduce((s, v) => s + v.memoryBytes, 0) / GIB,
    hotVms: host.filter((v) => v.kind === 'hot').length,
    lowerBoundS: dhm.lowerBoundS,
    streamBoundS: dhm.streamBoundS,
    schedules: figures,
    bestBaseline,
    targets: {
      withinLowerBound: dhm.ratio <= LOWER_BOUND_TARGET,
      // Equal up to float noise (both bound by the same VM at one stream's cap) is not worse.
      noWorseThanBestBaseline: dhm.makespanS <= figures[bestBaseline].makespanS * (1 + 1e-9),
      betterP95ThanBestBaseline: dhm.p95DowntimeMs < figures[bestBaseline].p95DowntimeMs,
    },
  };
}

export function runEvacuationBench(options: EvacuationBenchOptions): EvacuationBenchResult {
  const spec = linkSpec(options.link);
  const hosts = options.sizes.map((vms) => evaluate(vms, options.seed, options.link));
  const ablations = options.sizes.map((vms) => {
    const host = generateHost(vms, hostSeed(options.seed, vms), spec.bytesPerSec);
    return { vms, rows: ablationsFor(options.link, host).map((s) => strip(simulateEvacuation(host, s, spec))) };
  });
  const robustness = options.robustnessSeeds > 0 ? options.sizes.map((vms) => robustnessFor(vms, options)) : [];
  return { options, hosts, ablations, robustness };
}

function robustnessFor(vms: number, options: EvacuationBenchOptions): RobustnessFigures {
  const rows = Array.from({ length: options.robustnessSeeds }, (_, i) => evaluate(vms, options.seed + 1 + i, options.link));
  const share = (f: (h: HostFigures) => boolean) => rows.filter(f).length / rows.length;
  const mean = (f: (h: HostFigures) => number) => rows.reduce((s, h) => s + f(h), 0) / rows.length;
  return {
    vms,
    hosts: rows.length,
    dhmMeanRatio: mean((h) => h.schedules.dhm.ratio),
    dhmWorstRatio: Math.max(...rows.map((h) => h.schedules.dhm.ratio)),
    dhmWorstRatioToStreamBound: Math.max(...rows.map((h) => h.schedules.dhm.ratioToStreamBound)),
    dhmMeanBytesRatio: mean((h) => h.schedules.dhm.bytesRatio),
    dhmWorstBytesRatio: Math.max(...rows.map((h) => h.schedules.dhm.bytesRatio)),
    withinLowerBound: share((h) => h.targets.withinLowerBound),
    withinStreamBound: share((h) => h.schedules.dhm.ratioToStreamBound <= LOWER_BOUND_TARGET),
    beatsBestBaseline: share((h) => h.targets.noWorseThanBestBaseline && h.targets.betterP95ThanBestBaseline),
    bestBaselineMeanRatio: mean((h) => h.schedules[h.bestBaseline].ratio),
  };
}

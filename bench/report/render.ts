import * as os from 'node:os';
import { makespanChart } from './chart';
import { fmt, markdownTable, textTable, type Cell } from './format';
import { BOUND_TARGET, WITHIN_BOUND_SHARE_TARGET, type EvacuationBenchResult, type SeedSetFigures } from '../sim/benchmark';
import { SCHEDULE_NAMES } from '../sim/schedules';
import type { FleetThroughputFigures } from '../system/fleet-throughput';
import type { OverheadFigures } from '../system/overhead';
import type { QemuFigures } from '../system/qemu';
import type { TenantLatencyFigures } from '../system/tenant-latency';

export type TemporalMode = 'dev' | 'cluster';

/** The machine a run ran on, as its report states it. */
export interface MachineInfo {
  cpu: string;
  cores: number;
  memoryGiB: number;
  os: string;
  node: string;
}

/** How `npm run bench` prints and stores its figures: the tables of each benchmark, the verdicts, the side-by-side Temporal comparison, the Markdown report. */

/** Benchmarks 2 and 4 with one number of worker processes, and what the machine did meanwhile. */
export interface WorkersFigures {
  workers: number;
  bench2?: OverheadFigures[];
  /** CPU % of a core of each Temporal process, Postgres and the workers over benchmark 2. */
  bench2CpuPerProcess?: Record<string, number>;
  bench4?: FleetThroughputFigures;
  bench4CpuPerProcess?: Record<string, number>;
  loadAverageStart: number[];
  loadAverageEnd?: number[];
}

/** One Temporal's figures: those of the first worker count, and with `--workers a,b` those of each count. */
export interface ModeFigures {
  bench2?: OverheadFigures[];
  bench4?: FleetThroughputFigures;
  bench4CpuPerProcess?: Record<string, number>;
  byWorkers?: Record<number, WorkersFigures>;
}

/** Where a run stood at its best step: throughput per core, and the process that used the most CPU. */
export function fleetEfficiency(
  b4: FleetThroughputFigures,
  perProcess: Record<string, number> | undefined,
): { perMachineCore: number; perCoreUsed: number; coresUsed: number; others: number; top: string } | null {
  const best = b4.steps.filter((s) => s.errors.length === 0).sort((a, b) => b.hostsPerMinute - a.hostsPerMinute)[0];
  if (!best) return null;
  const c = best.cpu;
  const ours = c.temporal + c.workers + c.postgres + c.agentsAndBench;
  const coresUsed = ours / 100;
  const top = Object.entries(perProcess ?? {}).sort((a, b) => b[1] - a[1])[0];
  return {
    perMachineCore: best.hostsPerMinute / c.cores,
    perCoreUsed: best.hostsPerMinute / coresUsed,
    coresUsed,
    others: Math.max(0, c.machine - ours),
    top: top ? `${top[0]} ${top[1].toFixed(0)} %` : '—',
  };
}

/** Benchmarks 2 and 4 on each Temporal and each number of worker processes, one row per measurement. */
export function renderSideBySide(by: Partial<Record<TemporalMode, ModeFigures>>, workerCounts: number[]): string {
  const cols: { name: string; f: WorkersFigures }[] = [];
  for (const mode of Object.keys(by) as TemporalMode[]) {
    const m = by[mode]!;
    if (m.byWorkers) for (const w of workerCounts.filter((n) => m.byWorkers![n])) cols.push({ name: `${mode} ×${w}w`, f: m.byWorkers[w]! });
    else
      cols.push({
        name: mode,
        f: { workers: workerCounts[0]!, bench2: m.bench2, bench4: m.bench4, bench4CpuPerProcess: m.bench4CpuPerProcess, loadAverageStart: [] },
      });
  }
  const rows: Cell[][] = [];
  const sizes = [...new Set(cols.flatMap((c) => (c.f.bench2 ?? []).map((o) => o.vms)))];
  for (const n of sizes) {
    const o = (c: (typeof cols)[number]) => c.f.bench2?.find((x) => x.vms === n);
    rows.push([`2. ms per VM at ${n} VMs`, ...cols.map((c) => fmt(o(c)?.msPerVm ?? NaN, 1))]);
    rows.push([
      `2. wf task p50/p95 ms at ${n} VMs`,
      ...cols.map((c) => (o(c) ? `${fmt(o(c)!.history.workflowTaskMs.p50, 0)}/${fmt(o(c)!.history.workflowTaskMs.p95, 0)}` : '—')),
    ]);
    rows.push([
      `2. CPU % T/wk/pg, machine at ${n}`,
      ...cols.map((c) =>
        o(c) ? `${fmt(o(c)!.cpu.temporal, 0)}/${fmt(o(c)!.cpu.workers, 0)}/${fmt(o(c)!.cpu.postgres, 0)}, ${fmt(o(c)!.cpu.machine, 0)}` : '—',
      ),
    ]);
  }
  if (cols.some((c) => c.f.bench2CpuPerProcess)) rows.push(['2. CPU % per process', ...cols.map((c) => perProcessText(c.f.bench2CpuPerProcess))]);
  const steps = [...new Set(cols.flatMap((c) => (c.f.bench4?.steps ?? []).map((s) => s.hosts)))];
  for (const n of steps) {
    const st = (c: (typeof cols)[number]) => c.f.bench4?.steps.find((x) => x.hosts === n);
    rows.push([`4. hosts/min at N=${n}`, ...cols.map((c) => fmt(st(c)?.hostsPerMinute ?? NaN, 1))]);
    rows.push([`4. wf task ms at N=${n}`, ...cols.map((c) => fmt(st(c)?.workflowTaskMs ?? NaN, 0))]);
    rows.push([`4. act. wait ms at N=${n}`, ...cols.map((c) => fmt(st(c)?.activityScheduleToStartMs ?? NaN, 0))]);
    rows.push([
      `4. CPU % T/wk/pg/agents at N=${n}`,
      ...cols.map((c) =>
        st(c) ? `${fmt(st(c)!.cpu.temporal, 0)}/${fmt(st(c)!.cpu.workers, 0)}/${fmt(st(c)!.cpu.postgres, 0)}/${fmt(st(c)!.cpu.agentsAndBench, 0)}` : '—',
      ),
    ]);
    rows.push([
      `4. machine / others % at N=${n}`,
      ...cols.map((c) =>
        st(c)
          ? `${fmt(st(c)!.cpu.machine, 0)} / ${fmt(Math.max(0, st(c)!.cpu.machine - st(c)!.cpu.temporal - st(c)!.cpu.workers - st(c)!.cpu.postgres - st(c)!.cpu.agentsAndBench), 0)}`
          : '—',
      ),
    ]);
  }
  rows.push(['4. best hosts/min', ...cols.map((c) => fmt(c.f.bench4?.bestHostsPerMinute ?? NaN, 1))]);
  rows.push(['4. saturates at N', ...cols.map((c) => String(c.f.bench4?.saturatesAtN ?? '—'))]);
  const eff = cols.map((c) => (c.f.bench4 ? fleetEfficiency(c.f.bench4, c.f.bench4CpuPerProcess) : null));
  rows.push(['4. hosts/min per machine core', ...eff.map((e) => fmt(e?.perMachineCore ?? NaN, 1))]);
  rows.push(['4. hosts/min per core used (best N)', ...eff.map((e) => (e ? `${fmt(e.perCoreUsed, 1)} (${fmt(e.coresUsed, 2)} cores)` : '—'))]);
  rows.push(["4. others' CPU % at best N", ...eff.map((e) => fmt(e?.others ?? NaN, 0))]);
  rows.push(['4. top process (sweep)', ...eff.map((e) => e?.top ?? '—')]);
  rows.push(['4. CPU % per process (sweep)', ...cols.map((c) => perProcessText(c.f.bench4CpuPerProcess))]);
  rows.push([
    'load average start → end',
    ...cols.map((c) =>
      c.f.loadAverageStart.length
        ? `${c.f.loadAverageStart.map((l) => l.toFixed(1)).join(' ')} → ${(c.f.loadAverageEnd ?? []).map((l) => l.toFixed(1)).join(' ')}`
        : '—',
    ),
  ]);
  return `Side by side: ${cols.map((c) => c.name).join(' vs ')} (T = Temporal, wk = workers, pg = Postgres; % of one core, the machine has ${os.cpus().length})\n${textTable(['', ...cols.map((c) => c.name)], rows)}`;
}

/** An error and its causes in one line (a failed workflow's reason is in its cause). */
export function causes(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err; e && parts.length < 5; e = (e as { cause?: unknown }).cause) parts.push(e instanceof Error ? e.message : String(e));
  return parts.join(': ');
}

export function perProcessText(p: Record<string, number> | undefined): string {
  return p
    ? Object.entries(p)
        .map(([k, v]) => `${k} ${v.toFixed(0)}`)
        .join(', ')
    : '—';
}

// ---- figures that must exist ------------------------------------------------------------------------------------

export function validate(
  r: { b1?: EvacuationBenchResult; b2?: OverheadFigures[]; b3?: TenantLatencyFigures; b4?: FleetThroughputFigures; b5?: unknown },
  only: Set<number>,
  problems: string[],
): void {
  const need = (name: string, v: number) => {
    if (!Number.isFinite(v)) problems.push(`${name} is ${v}`);
  };
  if (only.has(1) && r.b1)
    for (const h of r.b1.hosts)
      for (const s of SCHEDULE_NAMES) {
        const f = h.schedules[s];
        for (const k of ['makespanS', 'lowerBoundS', 'ratio', 'bytesSent'] as const) need(`bench1 ${h.vms} VMs ${s} ${k}`, f[k]);
      }
  if (only.has(2) && r.b2) for (const o of r.b2) (['msPerVm', 'eventsPerVm'] as const).forEach((k) => need(`bench2 ${o.vms} VMs ${k}`, o[k]));
  if (only.has(3) && r.b3)
    for (const path of ['migrating', 'normal'] as const) (['p50Ms', 'p95Ms', 'p99Ms'] as const).forEach((k) => need(`bench3 ${path} ${k}`, r.b3![path][k]));
  if (only.has(3) && r.b3)
    for (const kind of ['bare', 'withLocalActivity'] as const)
      (['p50Ms', 'p99Ms'] as const).forEach((k) => need(`bench3 update floor ${kind} ${k}`, r.b3!.updateFloor[kind][k]));
  if (only.has(5) && r.b5 && !('skipped' in (r.b5 as object))) for (const v of (r.b5 as QemuFigures).vms) need(`bench5 ${v.vmId} downtime`, v.downtimeMs);
  if (only.has(4) && r.b4) {
    if (r.b4.largestCleanN < 1) problems.push('bench4: not even one host migrated without errors');
    need('bench4 best hosts/min', r.b4.bestHostsPerMinute);
  }
}

// ---- rendering ---------------------------------------------------------------------------------------------------

function bench1Rows(b1: EvacuationBenchResult): Cell[][] {
  return b1.hosts.flatMap((h) =>
    SCHEDULE_NAMES.map((name, i) => {
      const f = h.schedules[name];
      return [
        i === 0 ? String(h.vms) : '',
        i === 0 ? fmt(h.memoryGiB, 0) : '',
        i === 0 ? fmt(h.boundS, 1) : '',
        name,
        fmt(f.makespanS, 1),
        fmt(f.makespanS / h.boundS, 3),
        fmt(f.maxDowntimeMs, 0),
        fmt(f.p95DowntimeMs, 0),
        fmt(f.bytesRatio, 3),
        String(f.nonConverged),
        String(f.stayed),
        String(f.throttled),
        fmt(f.throttleCpuS, 0),
        String(f.postCopies),
        fmt(100 * f.linkUtilisation, 0),
      ];
    }),
  );
}
const BENCH1_HEADER = [
  'VMs',
  'ΣM GiB',
  'bound s',
  'schedule',
  'makespan s',
  '×bound',
  'max dt ms',
  'p95 dt ms',
  'sent ×Σ',
  'not conv.',
  'stayed',
  'throttled',
  'thr. cpu·s',
  'post-copy',
  'link %',
];

const pct = (x: number) => `${fmt(100 * x, 0)} %`;
const verdict = (ok: boolean) => (ok ? 'MET' : 'NOT MET');

function seedSetRows(rows: SeedSetFigures[], withBaselines: boolean): Cell[][] {
  return rows.map((r) => [
    r.vms,
    r.hosts,
    fmt(r.dhmMeanRatioToBound, 3),
    fmt(r.dhmWorstRatioToBound, 3),
    fmt(r.dhmMeanBytesRatio, 3),
    pct(r.withinBound),
    withBaselines ? pct(r.belowBestBaseline) : '—',
    withBaselines ? pct(r.p95NoWorse) : '—',
    withBaselines ? fmt(r.bestBaselineMeanRatioToBound, 3) : '—',
    withBaselines
      ? Object.entries(r.bestBaselineCounts)
          .map(([n, c]) => `${n} ${c}`)
          .join(', ')
      : '—',
  ]);
}
const SEED_SET_HEADER = [
  'VMs',
  'hosts',
  'dhm mean ×bound',
  'dhm worst',
  'sent ×Σ',
  `≤${BOUND_TARGET}× bound`,
  'below best baseline',
  'p95 ≤ best',
  'best baseline mean ×bound',
  'best baseline (hosts)',
];

/** The issue's targets on the held-out seeds, each with a verdict (a verdict, never a test assertion). */
function bench1Verdicts(b1: EvacuationBenchResult): string[] {
  return b1.heldOut.flatMap((r) => [
    `${r.vms} VMs, held-out seeds (${r.hosts} hosts): dhm ≤ ${BOUND_TARGET}× max(Σ(M+D)/B, largest VM's bound) on ≥ ${pct(WITHIN_BOUND_SHARE_TARGET)} of hosts: ${verdict(r.withinBound >= WITHIN_BOUND_SHARE_TARGET)} (${pct(r.withinBound)})`,
    `${r.vms} VMs, held-out seeds: dhm below the best baseline on every host: ${verdict(r.belowBestBaseline === 1)} (${pct(r.belowBestBaseline)})`,
    `${r.vms} VMs, held-out seeds: dhm's p95 downtime ≤ the best baseline's (same ${b1.options.link.downtimeLimitMs} ms limit) on every host: ${verdict(r.p95NoWorse === 1)} (${pct(r.p95NoWorse)})`,
  ]);
}

export function renderBench1(b1: EvacuationBenchResult, kind: 'text' | 'md'): string {
  const table = kind === 'text' ? textTable : markdownTable;
  const l = b1.options.link;
  const item = kind === 'md' ? '- ' : '  ';
  const seeds = (x: number[]) => `${x[0]}–${x[x.length - 1]}`;
  const lines: string[] = [];
  if (kind === 'text')
    lines.push(
      `1. Host evacuation makespan (sim pre-copy model driven in-process; NIC ${l.nicBandwidthBps / 1e9} Gbit/s, the sim's per-stream cap ${l.streamCapFraction}·B (dhm sees it measured, with noise), downtime limit ${l.downtimeLimitMs} ms for every schedule; host of held-out seed ${b1.options.seed})`,
    );
  lines.push(table(BENCH1_HEADER, bench1Rows(b1), 4));
  lines.push('');
  lines.push(
    `${kind === 'md' ? '\\' : ''}bound = F + max(Σ(M+D)/B, largest (M+D) / min(B, channels·S)) with dhm's channels per move (multifd: one VM can fill the link); M the guest's non-zero memory, D the data on local disks, F the per-move set-up every move pays off the link (compute/sim/calibration.ts). "stayed": VMs the schedule's own rules left on the source (the host is not empty). "thr. cpu·s": guest vCPU-seconds lost to auto-converge.`,
  );
  lines.push('');
  lines.push(kind === 'text' ? "  What each of dhm's choices buys (one changed at a time):" : "What each of dhm's choices buys (one changed at a time):\n");
  const abHeader = ['variant', ...b1.ablations.flatMap((a) => [`${a.vms}: ×Σ(M+D)/B`, `${a.vms}: p95 ms`, `${a.vms}: n.c./thr.`])];
  const names = b1.ablations[0]?.rows.map((r) => r.schedule) ?? [];
  lines.push(
    table(
      abHeader,
      names.map((n, i) => [
        n,
        ...b1.ablations.flatMap((a) => [fmt(a.rows[i]!.ratio, 3), fmt(a.rows[i]!.p95DowntimeMs, 0), `${a.rows[i]!.nonConverged}/${a.rows[i]!.throttled}`]),
      ]),
    ),
  );
  lines.push('');
  lines.push(
    kind === 'text' ? `  Held-out seeds ${seeds(b1.options.heldOutSeeds)} (the figures):` : `Held-out seeds ${seeds(b1.options.heldOutSeeds)} (the figures):\n`,
  );
  lines.push(table(SEED_SET_HEADER, seedSetRows(b1.heldOut, true)));
  lines.push('');
  lines.push(
    kind === 'text'
      ? `  Tuning seeds ${seeds(b1.options.tuningSeeds)} (dhm only: the seeds the constants were chosen on, CRITICAL_PATH_SLACK ${b1.tuning.criticalPathSlack}, AUTO_CONVERGE_SHARE ${b1.tuning.autoConvergeShare}, OVERLAP_THRESHOLD ${b1.tuning.overlapThreshold}, DOWNTIME_AIM ${Math.round(b1.tuning.downtimeAim * 1000) / 1000}):`
      : `Tuning seeds ${seeds(b1.options.tuningSeeds)} (dhm only: the seeds the constants were chosen on, CRITICAL_PATH_SLACK ${b1.tuning.criticalPathSlack}, AUTO_CONVERGE_SHARE ${b1.tuning.autoConvergeShare}, OVERLAP_THRESHOLD ${b1.tuning.overlapThreshold}, DOWNTIME_AIM ${Math.round(b1.tuning.downtimeAim * 1000) / 1000}):\n`,
  );
  lines.push(table(SEED_SET_HEADER, seedSetRows(b1.tuningSet, false)));
  lines.push('');
  lines.push(kind === 'text' ? '  Targets (issue 18), held-out seeds:' : 'Targets (issue 18), held-out seeds:\n');
  for (const v of bench1Verdicts(b1)) lines.push(`${item}${v}`);
  return lines.join('\n');
}

function renderBench2(b2: OverheadFigures[], kind: 'text' | 'md'): string {
  const table = kind === 'text' ? textTable : markdownTable;
  return table(
    [
      'VMs',
      'wall ms',
      'ms/VM',
      'events/VM',
      'activities',
      'wf tasks',
      'act. wait p50/p95 ms',
      'move p50/p95 ms',
      'wf task p50 ms',
      'SQLite call ms',
      'pg place ms',
      'CPU % temporal/workers/pg/agents',
      'machine %',
    ],
    b2.map((o) => [
      o.vms,
      fmt(o.wallMs, 0),
      fmt(o.msPerVm, 1),
      fmt(o.eventsPerVm, 1),
      o.history.activities,
      o.history.workflowTasks,
      `${fmt(o.history.activityScheduleToStartMs.p50, 0)}/${fmt(o.history.activityScheduleToStartMs.p95, 0)}`,
      `${fmt(o.history.activityStartToCloseMs.p50, 0)}/${fmt(o.history.activityStartToCloseMs.p95, 0)}`,
      fmt(o.history.workflowTaskMs.p50, 0),
      fmt(o.temporalPersistence.meanMs, 1),
      fmt(o.calls['inventory.moveVmPlacement']?.meanMs ?? NaN, 0),
      `${fmt(o.cpu.temporal, 0)}/${fmt(o.cpu.workers, 0)}/${fmt(o.cpu.postgres, 0)}/${fmt(o.cpu.agentsAndBench, 0)}`,
      `${fmt(o.cpu.machine, 0)}/${100 * o.cpu.cores}`,
    ]),
  );
}

function renderBench3(b3: TenantLatencyFigures, kind: 'text' | 'md'): string {
  const table = kind === 'text' ? textTable : markdownTable;
  const row = (name: string, s: TenantLatencyFigures['normal']) => [
    name,
    s.requests,
    s.errors,
    fmt(s.p50Ms, 0),
    fmt(s.p95Ms, 0),
    fmt(s.p99Ms, 0),
    fmt(s.maxMs, 0),
    Object.entries(s.via)
      .map(([k, v]) => `${k} ${v}`)
      .join(', '),
  ];
  return [
    table(
      ['path', 'requests', 'errors', 'p50 ms', 'p95 ms', 'p99 ms', 'max ms', 'served by'],
      [
        row(`host migrating (${b3.vms} VMs)`, b3.migrating),
        row('host not migrating', b3.normal),
        // Temporal alone, before the migration: the part of the migrating path no change in dhm can remove.
        ...(b3.updateFloor
          ? (
              [
                ['bare update', b3.updateFloor.bare],
                ['update + no-op local activity', b3.updateFloor.withLocalActivity],
              ] as const
            ).map(([name, f]) => [`floor: ${name}`, b3.updateFloor.requests, 0, fmt(f.p50Ms, 0), fmt(f.p95Ms, 0), fmt(f.p99Ms, 0), '—', 'trivial workflow'])
          : []),
      ],
    ),
    `${kind === 'md' ? '\n' : '  '}${b3.ratePerSecond} requests/s on each path for the ${fmt(b3.migrationWallMs / 1000, 1)} s of the migration; p99 migrating / normal = ${fmt(b3.p99Ratio, 2)}. "floor": Temporal's own update round trip on this dev server to a trivial workflow, one at a time on the quiet machine before the migration. Not counted: one warm-up request per path before the streams (${b3.warmUpMs ? `${fmt(b3.warmUpMs.migrating, 0)} and ${fmt(b3.warmUpMs.normal, 0)} ms` : 'not recorded'}). Machine CPU ${fmt(b3.cpu.machine, 0)} % of ${100 * b3.cpu.cores} % (dhm's processes ${fmt(b3.cpu.temporal + b3.cpu.workers + b3.cpu.postgres + b3.cpu.agentsAndBench, 0)} %).`,
  ].join('\n');
}

function renderBench4(b4: FleetThroughputFigures, kind: 'text' | 'md'): string {
  const table = kind === 'text' ? textTable : markdownTable;
  return [
    table(
      [
        'N hosts',
        'done',
        'wall s',
        'hosts/min',
        'host p50 s',
        'act. wait ms',
        'move ms',
        'wf task ms',
        'SQLite call ms',
        'SQLite write time %',
        'pg place ms',
        'CPU % temporal/workers/pg/agents',
        'machine %',
        'errors',
      ],
      b4.steps.map((s) => [
        s.hosts,
        `${s.completed}/${s.hosts}`,
        fmt(s.wallMs / 1000, 1),
        fmt(s.hostsPerMinute, 1),
        fmt(s.hostDurationMs.p50 / 1000, 1),
        fmt(s.activityScheduleToStartMs, 0),
        fmt(s.activityStartToCloseMs, 0),
        fmt(s.workflowTaskMs, 0),
        fmt(s.temporalPersistence.meanMs, 1),
        fmt(s.temporalPersistence.writeBusyPct, 0),
        fmt(s.moveVmPlacementMs, 1),
        `${fmt(s.cpu.temporal, 0)}/${fmt(s.cpu.workers, 0)}/${fmt(s.cpu.postgres, 0)}/${fmt(s.cpu.agentsAndBench, 0)}`,
        `${fmt(s.cpu.machine, 0)}/${100 * s.cpu.cores}`,
        // The whole causes are in the summary line and the JSON; a cell gets how many and the first, cut short.
        s.errors.length ? `${s.hosts - s.completed} of ${s.hosts}; first: ${clip(s.errors[0]!, 120)}` : '—',
      ]),
    ),
    `${kind === 'md' ? '\n' : '  '}Largest N without errors: ${b4.largestCleanN}; best ${fmt(b4.bestHostsPerMinute, 1)} hosts/min. ${b4.why}`,
  ].join('\n');
}

function renderBench5(b5: QemuFigures | { skipped: string }, kind: 'text' | 'md'): string {
  if ('skipped' in b5) return `skipped: ${b5.skipped}`;
  const table = kind === 'text' ? textTable : markdownTable;
  return [
    table(
      ['VM', 'ram.total MiB', 'downtime ms (QEMU)', 'move ms', 'Mbit/s (QEMU)', 'sent ×RAM', 'rounds'],
      b5.vms.map((v) => [
        v.vmId,
        fmt(v.ramMiB, 0),
        fmt(v.downtimeMs, 0),
        fmt(v.totalTimeMs, 0),
        fmt(v.mbps, 0),
        fmt(v.bytesSent / (v.ramMiB * 2 ** 20), 2),
        v.rounds,
      ]),
    ),
    `${kind === 'md' ? '\n' : '  '}Host of ${b5.vms.length} VMs, one stream at a time: wall ${fmt(b5.wallMs / 1000, 1)} s (first move's start to last move's end) vs Σ ram.total / ${fmt(b5.measuredMbps, 0)} Mbit/s measured = ${fmt(b5.boundMs / 1000, 1)} s (${fmt(b5.wallMs / b5.boundMs, 2)}×).`,
  ].join('\n');
}

export function renderSummary(r: {
  b1?: EvacuationBenchResult;
  b2?: OverheadFigures[];
  b3?: TenantLatencyFigures;
  b4?: FleetThroughputFigures;
  b5?: QemuFigures | { skipped: string };
}): string {
  const lines = ['Summary'];
  if (r.b2) lines.push('\n2. Orchestration overhead\n' + renderBench2(r.b2, 'text'));
  if (r.b3) lines.push('\n3. Tenant request latency\n' + renderBench3(r.b3, 'text'));
  if (r.b4) lines.push('\n4. Fleet throughput\n' + renderBench4(r.b4, 'text'));
  if (r.b5) lines.push('\n5. qemu backend\n' + renderBench5(r.b5, 'text'));
  return lines.join('\n');
}

export function renderMarkdown(result: {
  date: string;
  mode: string;
  machine: MachineInfo & { loadAverageStart: number[]; loadAverageEnd: number[] };
  durationsMs: Record<string, number>;
  bench1?: EvacuationBenchResult;
  bench2?: OverheadFigures[];
  bench3?: TenantLatencyFigures;
  bench4?: FleetThroughputFigures;
  bench5?: QemuFigures | { skipped: string };
}): string {
  const m = result.machine;
  const out = [
    `<!-- generated by npm run bench (${result.mode}) at ${result.date} -->`,
    `Run: ${result.mode}, ${result.date}, ${(result.durationsMs.total! / 1000).toFixed(0)} s. Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}, Node ${m.node}; load average ${m.loadAverageStart.map((l) => l.toFixed(1)).join(' ')} at the start, ${m.loadAverageEnd.map((l) => l.toFixed(1)).join(' ')} at the end.`,
  ];
  if (result.bench1) out.push('\n### 1. Host evacuation makespan\n', renderBench1(result.bench1, 'md'));
  if (result.bench2) out.push('\n### 2. Orchestration overhead\n', renderBench2(result.bench2, 'md'));
  if (result.bench3) out.push('\n### 3. Tenant request latency during a migration\n', renderBench3(result.bench3, 'md'));
  if (result.bench4) out.push('\n### 4. Fleet throughput\n', renderBench4(result.bench4, 'md'));
  if (result.bench5) out.push('\n### 5. qemu backend\n', renderBench5(result.bench5, 'md'));
  return `${out.join('\n')}\n`;
}

export function chart(b1: EvacuationBenchResult): string {
  return makespanChart(
    b1.hosts.map((h) => ({
      label: `${h.vms} VMs (ΣM ${fmt(h.memoryGiB, 0)} GiB)`,
      bars: SCHEDULE_NAMES.map((n) => ({ name: n, value: h.schedules[n].makespanS / h.boundS })),
    })),
    { title: `Host evacuation makespan ÷ bound (sim, held-out seed ${b1.options.seed}, 10 Gbit/s, S = 0.4·B measured)`, target: BOUND_TARGET },
  );
}

const clip = (text: string, max: number) => (text.length > max ? `${text.slice(0, max - 1)}…` : text);

import { moveMiB, type MigrationPolicy, type VmMigrationStatus } from '../common/migration';
import { AUTO_CONVERGE_SHARE, autoConvergeFor, bandwidthCapFor, CRITICAL_PATH_SLACK, orderVms } from './vm-order';

/** The policy's tuned constants (vm-order.ts), as benchmark 1's `--tune` sweeps them; the workflow uses the defaults. */
export interface Tuning {
  criticalPathSlack: number;
  autoConvergeShare: number;
  /** SetupRule.overlapThreshold of new runs (`concurrencyFor`). */
  overlapThreshold: number;
  /** The share of the policy's downtime limit a first try asks QEMU for (`moveSettingsFor`, `aimDowntime`); 1: the limit. */
  downtimeAim: number;
}
/**
 * The share of what a move may get above which a measured dirty rate turns auto-converge on, with the set-up counted
 * (moves overlapping on the link). Tuned on seeds 1–200 only (bench/results/2026-12-02T06-09-30.tune.txt): the mean
 * falls 1.0767× → 1.0625× from 0.8 to 0.3 and only 0.14 % more down to 0 (auto-converge on every VM, 0.4 more guests
 * throttled per host); 0.3 is where more throttling stops buying makespan.
 */
export const MEASURED_AUTO_CONVERGE_SHARE = 0.3;
/**
 * How much of a move's time on the link T its set-up F may leave idle before dhm overlaps one more move: a share of T.
 * Overlapping fills the gap but splits the link, so every VM then takes longer and its guest dirties more for it to
 * send again; with F ≪ T (big VMs, a fast set-up) the gap is the cheaper loss. Tuned on seeds 1–200 only
 * (bench/results/2026-12-02T15-38-59.tune.txt, 8- and 32-VM hosts): 0 (overlap for any gap, the rule before) 1.0538×
 * the bound, 94.8 % of hosts within 1.10×; 0.05 1.0437× / 97.8 %; 0.1 1.0439× / 98.3 % with fewer guests throttled
 * (1.89 against 2.31 per host, 1.5 against 3.2 vCPU·s lost); 0.3 1.0473× / 99.8 %. Chosen: 0.1.
 */
export const OVERLAP_THRESHOLD = 0.1;
/**
 * The share of the policy's downtime limit dhm asks QEMU for on a move's first try; the limit stays the ceiling, and
 * a retry (auto-converge forced after a move that did not converge) gets all of it — a two-step ramp, as Nova ramps up
 * to its `live_migration_downtime` and Proxmox doubles from 100 ms. QEMU switches over at the first check where what
 * is left fits bandwidth × limit (migration.c `migration_iteration_run`), so a move's downtime sits near whatever
 * limit it is given, however well it converges (the testbed: median 258 ms at 300); a move whose dirty pages shrink
 * by ρ < 1 a round needs about log(1/aim)/log(1/ρ) more short rounds to fit a lower one. Tuned on seeds 1–200 only
 * (bench/results/2026-12-02T18-27-03.tune.txt, 8- and 32-VM hosts, 300 ms limit): aim 1 (the rule before) p95 downtime
 * 303 ms, 1.0439× the bound; 1/2 160 ms, 1.0441×; 1/3 113 ms, 1.0441×, bytes sent 1.0326 against 1.0323 of Σ, the same
 * guests throttled (1.9 per host). Chosen: 1/3 (at a 300 ms limit a lower aim only meets the 100 ms floor).
 */
export const DOWNTIME_AIM = 1 / 3;
/** Below this QEMU's check granularity (an iteration of up to 50 ms) makes the limit meaningless. */
export const MIN_AIMED_DOWNTIME_MS = 100;
export const DEFAULT_TUNING: Tuning = {
  criticalPathSlack: CRITICAL_PATH_SLACK,
  autoConvergeShare: MEASURED_AUTO_CONVERGE_SHARE,
  overlapThreshold: OVERLAP_THRESHOLD,
  downtimeAim: DOWNTIME_AIM,
};
/** The constants of runs from before `setup-aware-concurrency` (and the declared-workload fallback's share). */
export const PRE_SETUP_TUNING: Tuning = { criticalPathSlack: CRITICAL_PATH_SLACK, autoConvergeShare: AUTO_CONVERGE_SHARE, overlapThreshold: 0, downtimeAim: 1 };

/**
 * dhm's scheduling decisions as pure functions: which VMs start now, how many moves run at once, and each move's
 * settings. The workflow (moves.ts) and benchmark 1 (bench/sim/evacuation.ts) call these same functions, so the
 * benchmark measures the schedule the workflow runs. Deterministic, no I/O: workflow code.
 */

/** The source server's link as its agent measured it (`measureLink`): the NIC's B and one stream's throughput S, bytes/s. */
export interface MeasuredLink {
  nicBytesPerSec: number;
  streamBytesPerSec: number;
}

type SchedulingPolicy = Pick<
  MigrationPolicy,
  | 'maxParallel'
  | 'order'
  | 'autoConverge'
  | 'autoConvergeAboveDirtyRateMiBps'
  | 'bandwidthCapBps'
  | 'linkBytesPerSec'
  | 'streamCapBytesPerSec'
  | 'maxDowntimeMs'
> &
  Partial<Pick<MigrationPolicy, 'measureInputs' | 'channels' | 'postCopy'>>;

/** The VMs as the scheduler reads them. */
type HostVm = Pick<VmMigrationStatus, 'vmId' | 'spec' | 'state' | 'diskMiB' | 'dirtyRateMiBps'>;

/**
 * The VMs to start now, in order, to fill `free` slots: the pending ones not being deleted, in the policy's order,
 * those that already failed once (`forced`: to retry with auto-converge) after all the others. Taking them one at a
 * time, each marked moving before the next is chosen, gives the same VMs in the same order.
 */
export function launchOrder<V extends HostVm>(
  vms: readonly V[],
  order: MigrationPolicy['order'],
  forced: ReadonlySet<string>,
  deleteRequested: ReadonlySet<string>,
  free: number,
): V[] {
  if (!(free > 0)) return [];
  const waiting = vms.filter((v) => v.state === 'pending' && !deleteRequested.has(v.vmId));
  const fresh = waiting.filter((v) => !forced.has(v.vmId));
  const again = waiting.filter((v) => forced.has(v.vmId));
  // orderVms works on full statuses; the fields it reads are the ones HostVm has.
  const sorted = (list: V[]) => orderVms(list as unknown as VmMigrationStatus[], order) as unknown as V[];
  return [...sorted(fresh), ...sorted(again)].slice(0, free);
}

/** The link the decisions use: the measured one, else the policy's figures (a hint, when the agents cannot measure). */
export function linkFor(policy: SchedulingPolicy, measured: MeasuredLink | null | undefined): MeasuredLink | undefined {
  if (policy.measureInputs && measured) return measured;
  if (policy.linkBytesPerSec !== undefined && policy.streamCapBytesPerSec !== undefined)
    return { nicBytesPerSec: policy.linkBytesPerSec, streamBytesPerSec: policy.streamCapBytesPerSec };
  return undefined;
}

/** The most channels dhm gives one move (QEMU's multifd-channels; each is a thread on both servers). */
export const MAX_AUTO_CHANNELS = 16;

/**
 * Channels per move: the policy's `channels`, or with `measureInputs` and none given, the fewest with which one move
 * fills the measured link, ⌈B/S⌉ (at most MAX_AUTO_CHANNELS): multifd lets one VM use the whole NIC, so its bound is
 * M/B instead of M/S, and a move alone on the link re-sends the least (its dirty pages are chased at B, not B/streams).
 */
export function channelsFor(policy: SchedulingPolicy, measured: MeasuredLink | null | undefined): number {
  if (policy.channels !== undefined) return policy.channels;
  if (!policy.measureInputs || !measured) return 1;
  return Math.min(MAX_AUTO_CHANNELS, Math.max(1, Math.ceil(measured.nicBytesPerSec / measured.streamBytesPerSec - 1e-9)));
}

/** What one move (all its channels) can carry alone: min(B, channels × S). */
export function moveCapOf(link: MeasuredLink, channels = 1): number {
  return Math.min(link.nicBytesPerSec, channels * link.streamBytesPerSec);
}

/**
 * How many moves run at once. With `measureInputs` and a link: the fewest that fill it, ⌈B / min(B, channels·S)⌉, at
 * most `maxParallel` (the operator's limit). Fewer leave bandwidth idle; more only split the same link thinner, so
 * every VM's dirty pages pile up faster relative to its share and more are sent again. Otherwise `maxParallel`.
 */
export function streamsFor(policy: SchedulingPolicy, measured: MeasuredLink | null | undefined): number {
  if (!policy.measureInputs) return policy.maxParallel;
  const link = linkFor(policy, measured);
  if (!link) return policy.maxParallel;
  // Float slack: 1 / 0.4 is 2.5000000000000004 in binary; it must still round up to 3, and 1 / 0.5 to exactly 2.
  const fill = Math.max(1, Math.ceil(link.nicBytesPerSec / moveCapOf(link, channelsFor(policy, measured)) - 1e-9));
  return Math.min(policy.maxParallel, fill);
}

/**
 * The set-up one move is assumed to cost, off the link, before any move of this migration has reported its own, ms:
 * the testbed's before its fixed cost was cut (7035 ms in the 03:18/03:32 runs; the current QEMU code measures 3.3 s at load
 * 6–18 and 1.1 s on the quiet machine). Runs from before the patch `setup-overlap-measured` keep it (they decide with
 * it); new runs assume MEASURED_MOVE_SETUP_MS. Either is replaced by the measurement once one move has completed.
 */
export const DEFAULT_MOVE_SETUP_MS = 7000;
/**
 * The prior of runs that took the patch `setup-overlap-measured`: the set-up the testbed measures with the current QEMU
 * code on a quiet machine (1109 ms, compute/sim/calibration.ts MOVE_SETUP_MS; test/bench/calibration.test.ts keeps the
 * two close). The 7000 ms prior put 3 moves at once on a 4-VM host whose one stream fills the link (the testbed's quiet
 * run bench/results/2026-12-02T15-06-42-testbed-evacuation.md): each VM got B/3, its guest dirtied more, 547 MiB
 * crossed against 500 for two at once. A busier server reports a longer set-up with its first move, and the
 * concurrency follows.
 */
export const MEASURED_MOVE_SETUP_MS = 1100;

/** How `concurrencyFor` counts the set-up: the prior before a move reports one, and the idle share it accepts. */
export interface SetupRule {
  priorMs: number;
  overlapThreshold: number;
}
/** Runs from before the patch `setup-overlap-measured`: a 7 s prior, and any idle set-up is worth one more move. */
export const PRE_MEASURED_SETUP_RULE: SetupRule = { priorMs: DEFAULT_MOVE_SETUP_MS, overlapThreshold: 0 };
/** New runs. */
export const SETUP_RULE: SetupRule = { priorMs: MEASURED_MOVE_SETUP_MS, overlapThreshold: OVERLAP_THRESHOLD };

/**
 * The per-move set-up F as this migration has measured it: the median of the `setupMs` its completed moves reported
 * (the agent's time off the link: destination start, accept, commit), or DEFAULT_MOVE_SETUP_MS before any has.
 * Deterministic: the VMs' figures are in the workflow's state, in the order the VMs are listed.
 */
export function setupEstimateMs(vms: readonly Pick<VmMigrationStatus, 'state' | 'figures'>[], priorMs = DEFAULT_MOVE_SETUP_MS): number {
  const seen = vms.flatMap((v) => (v.state === 'moved' && v.figures?.setupMs !== undefined ? [v.figures.setupMs] : []));
  if (seen.length === 0) return priorMs;
  const sorted = [...seen].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * How many moves run at once, counting the set-up. `streamsFor` fills the link with moves that are sending; but a
 * move first spends F off the link, so with only those the link idles for F at every move. A slot cycles F + T, T
 * being a move's time on the link at its share B/streams, so keeping `streams` moves on the link takes
 * ⌈streams·(F + T)/T⌉ slots, at most `maxParallel`; less the rule's `overlapThreshold`, so a set-up under that share
 * of T is left idle rather than paid for by splitting the link. T is the mean over the VMs still waiting (memory + local data at
 * that share, times what the completed moves really sent per byte of their size: zero pages are not sent, dirty ones
 * again): a host of small VMs, whose moves are mostly set-up, runs more at once. F is `setupEstimateMs` (measured by
 * the moves already done). Without `measureInputs`, the policy's `maxParallel` as given.
 */
export function concurrencyFor(
  policy: SchedulingPolicy,
  measured: MeasuredLink | null | undefined,
  vms: readonly Pick<VmMigrationStatus, 'state' | 'figures' | 'spec' | 'diskMiB'>[],
  /** The VMs still to move (default: the pending ones; a rollback's are those on the clone). */
  waiting: readonly Pick<VmMigrationStatus, 'spec' | 'diskMiB'>[] = vms.filter((v) => v.state === 'pending'),
  /** PRE_MEASURED_SETUP_RULE, or SETUP_RULE in new runs. */
  rule: SetupRule = PRE_MEASURED_SETUP_RULE,
): number {
  const streams = streamsFor(policy, measured);
  const link = linkFor(policy, measured);
  if (!policy.measureInputs || !link) return streams;
  const setupMs = setupEstimateMs(vms, rule.priorMs);
  if (waiting.length === 0 || !(setupMs > 0)) return streams;
  const done = vms.filter((v) => v.state === 'moved' && v.figures !== undefined && moveMiB(v) > 0);
  const sentPerByte = done.length ? done.reduce((s, v) => s + v.figures!.bytesSent, 0) / (done.reduce((s, v) => s + moveMiB(v), 0) * 2 ** 20) : 1;
  const meanBytes = (waiting.reduce((s, v) => s + moveMiB(v), 0) / waiting.length) * 2 ** 20 * (sentPerByte > 0 ? sentPerByte : 1);
  const linkMs = (meanBytes / (link.nicBytesPerSec / streams)) * 1000;
  if (!(linkMs > 0)) return policy.maxParallel;
  return Math.max(streams, Math.min(policy.maxParallel, Math.ceil((streams * (setupMs + linkMs)) / linkMs - rule.overlapThreshold - 1e-9)));
}

/** One move's settings, as the workflow passes them to `liveMigrateVm`. */
export interface MoveSettings {
  autoConverge: boolean;
  /** The downtime limit to give QEMU, ms, when below the policy's (`DOWNTIME_AIM`); absent: the policy's. */
  maxDowntimeMs?: number;
  bandwidthCapBps: number | undefined;
  channels?: number;
  postCopy?: boolean;
}

/**
 * The settings of `vm`'s move that is about to start, among the host's `vms` in their current states.
 *
 * - **Auto-converge**: the policy's rule on the VM's dirty rate. With `measureInputs`, the rate is the one measured
 *   just before the move (`measuredDirtyRateBps`; the declared workload only when the agent could not measure) and the
 *   threshold is AUTO_CONVERGE_SHARE of what the move may get, min(channels·S, B/n), from the measured link, n the
 *   moves allowed at once (`opts.concurrency`, else `streamsFor`):
 *   a guest that dirties memory that fast shrinks its dirty set by less than a fifth per round.
 * - **Bandwidth cap**: `bandwidthCapFor` (critical-path caps) on the measured link and the stream count in force.
 * - `channels` and `postCopy` from the policy, only when set (a policy without them sends what it always sent).
 */
export function moveSettingsFor(
  policy: SchedulingPolicy,
  vm: HostVm,
  vms: readonly HostVm[],
  opts: {
    forced: boolean;
    measuredLink?: MeasuredLink | null;
    measuredDirtyRateBps?: number | null;
    /** The moves allowed at once now (`concurrencyFor`), when more than `streamsFor`: the share a move may get is B/that. */
    concurrency?: number;
    /** Ask QEMU for `tuning.downtimeAim` of the policy's limit unless this is a forced retry (patch aim-downtime). */
    aimDowntime?: boolean;
  },
  tuning: Tuning = DEFAULT_TUNING,
): MoveSettings {
  const channels = policy.measureInputs ? channelsFor(policy, opts.measuredLink) : policy.channels;
  const extras = {
    ...(channels !== undefined && (channels > 1 || policy.channels !== undefined) ? { channels } : {}),
    ...(policy.postCopy === 'when-not-converging' ? { postCopy: true } : {}),
  };
  if (!policy.measureInputs) return { autoConverge: autoConvergeFor(policy, vm, opts.forced), bandwidthCapBps: bandwidthCapFor(policy, vm, vms), ...extras };
  const link = linkFor(policy, opts.measuredLink);
  const streams = streamsFor(policy, opts.measuredLink);
  // Moves whose set-ups overlap share the link while they send: a move may get as little as B/concurrency.
  const sharing = Math.max(streams, opts.concurrency ?? streams);
  const rateMiBps = opts.measuredDirtyRateBps != null ? opts.measuredDirtyRateBps / 2 ** 20 : vm.dirtyRateMiBps;
  const threshold = link
    ? (tuning.autoConvergeShare * Math.min(moveCapOf(link, channels), link.nicBytesPerSec / sharing)) / 2 ** 20
    : policy.autoConvergeAboveDirtyRateMiBps;
  const autoConverge = autoConvergeFor(
    { autoConverge: policy.autoConverge, autoConvergeAboveDirtyRateMiBps: threshold },
    { dirtyRateMiBps: rateMiBps },
    opts.forced,
  );
  const bandwidthCapBps = bandwidthCapFor(
    {
      maxParallel: streams,
      bandwidthCapBps: policy.bandwidthCapBps,
      linkBytesPerSec: link?.nicBytesPerSec,
      streamCapBytesPerSec: link ? moveCapOf(link, channels) : undefined,
    },
    vm,
    vms,
    tuning.criticalPathSlack,
  );
  const aimed = opts.aimDowntime && !opts.forced ? Math.max(MIN_AIMED_DOWNTIME_MS, Math.round(policy.maxDowntimeMs * tuning.downtimeAim)) : undefined;
  return { autoConverge, bandwidthCapBps, ...extras, ...(aimed !== undefined && aimed < policy.maxDowntimeMs ? { maxDowntimeMs: aimed } : {}) };
}

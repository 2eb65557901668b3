import type { MigrationPolicy, VmMigrationStatus } from '../common/migration';
import { AUTO_CONVERGE_SHARE, autoConvergeFor, bandwidthCapFor, CRITICAL_PATH_SLACK, orderVms } from './vm-order';

/** The policy's tuned constants (vm-order.ts), as benchmark 1's `--tune` sweeps them; the workflow uses the defaults. */
export interface Tuning {
  criticalPathSlack: number;
  autoConvergeShare: number;
}
export const DEFAULT_TUNING: Tuning = { criticalPathSlack: CRITICAL_PATH_SLACK, autoConvergeShare: AUTO_CONVERGE_SHARE };

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
  'maxParallel' | 'order' | 'autoConverge' | 'autoConvergeAboveDirtyRateMiBps' | 'bandwidthCapBps' | 'linkBytesPerSec' | 'streamCapBytesPerSec'
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

/** One move's settings, as the workflow passes them to `liveMigrateVm`. */
export interface MoveSettings {
  autoConverge: boolean;
  bandwidthCapBps: number | undefined;
  channels?: number;
  postCopy?: boolean;
}

/**
 * The settings of `vm`'s move that is about to start, among the host's `vms` in their current states.
 *
 * - **Auto-converge**: the policy's rule on the VM's dirty rate. With `measureInputs`, the rate is the one measured
 *   just before the move (`measuredDirtyRateBps`; the declared workload only when the agent could not measure) and the
 *   threshold is AUTO_CONVERGE_SHARE of what the move will get, min(channels·S, B/streams), from the measured link:
 *   a guest that dirties memory that fast shrinks its dirty set by less than a fifth per round.
 * - **Bandwidth cap**: `bandwidthCapFor` (critical-path caps) on the measured link and the stream count in force.
 * - `channels` and `postCopy` from the policy, only when set (a policy without them sends what it always sent).
 */
export function moveSettingsFor(
  policy: SchedulingPolicy,
  vm: HostVm,
  vms: readonly HostVm[],
  opts: { forced: boolean; measuredLink?: MeasuredLink | null; measuredDirtyRateBps?: number | null },
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
  const rateMiBps = opts.measuredDirtyRateBps != null ? opts.measuredDirtyRateBps / 2 ** 20 : vm.dirtyRateMiBps;
  const threshold = link
    ? (tuning.autoConvergeShare * Math.min(moveCapOf(link, channels), link.nicBytesPerSec / streams)) / 2 ** 20
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
  return { autoConverge, bandwidthCapBps, ...extras };
}

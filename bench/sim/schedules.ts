import type { MigrationPolicyInput, VmMigrationStatus } from '../../common/migration';
import { MIB } from '../../compute/units';
import { autoConvergeFor, autoSchedulePolicy, bandwidthCapFor, orderVms } from '../../workflows/vm-order';
import type { Schedule } from './evacuation';
import type { BenchVm } from './host-mix';

/**
 * The schedules benchmark 1 compares, each written as the migration policy that would produce it, and turned into a
 * simulator schedule with the workflow's own code: `orderVms` picks the order, `autoConvergeFor` decides each VM's
 * auto-converge and `bandwidthCapFor` each move's bandwidth cap from the moves in flight, exactly as
 * `migrateDedicatedHost` does.
 */

/** The workflow's view of a VM (what `orderVms`, `autoConvergeFor` and `bandwidthCapFor` see). */
export function statusOf(vm: BenchVm, state: VmMigrationStatus['state'] = 'pending'): VmMigrationStatus {
  return {
    vmId: vm.vmId,
    name: vm.vmId,
    spec: { vcpus: 1, memoryMiB: Math.round(vm.memoryBytes / MIB), diskGiB: 10 },
    dirtyRateMiBps: vm.dirtyRateBps / MIB,
    ...(vm.diskBytes > 0 ? { diskMiB: Math.round(vm.diskBytes / MIB) } : {}),
    state,
    attempts: 0,
  };
}

type PolicyLike = Required<Pick<MigrationPolicyInput, 'order' | 'autoConverge' | 'maxDowntimeMs' | 'onVmFailure'>> &
  Pick<MigrationPolicyInput, 'autoConvergeAboveDirtyRateMiBps' | 'bandwidthCapBps' | 'linkBytesPerSec' | 'streamCapBytesPerSec'> & {
    /** Infinity (all at once) is not a valid policy value (at most 64) but is a valid schedule. */
    maxParallel: number;
  };

export function scheduleFromPolicy(name: string, policy: PolicyLike): Schedule {
  return {
    name,
    maxParallel: policy.maxParallel,
    order: (vms) => {
      const byId = new Map(vms.map((v) => [v.vmId, v]));
      return orderVms(
        vms.map((v) => statusOf(v)),
        policy.order,
      ).map((s) => byId.get(s.vmId)!);
    },
    autoConverge: (vm) =>
      autoConvergeFor({ autoConverge: policy.autoConverge, autoConvergeAboveDirtyRateMiBps: policy.autoConvergeAboveDirtyRateMiBps }, statusOf(vm), false),
    maxDowntimeMs: policy.maxDowntimeMs,
    bandwidthCapBps: (vm, host) =>
      bandwidthCapFor(
        {
          // All at once (Infinity) has no stream count to share the link by; bandwidthCapFor never caps it anyway.
          maxParallel: Math.min(policy.maxParallel, 1e9),
          bandwidthCapBps: policy.bandwidthCapBps,
          linkBytesPerSec: policy.linkBytesPerSec,
          streamCapBytesPerSec: policy.streamCapBytesPerSec,
        },
        statusOf(vm, 'pending'),
        [...host.moving.map((v) => statusOf(v, 'moving')), ...host.waiting.map((v) => statusOf(v, 'pending')), ...host.moved.map((v) => statusOf(v, 'moved'))],
      ),
    onNotConverging: policy.onVmFailure === 'retry-with-auto-converge' ? 'retry-with-auto-converge' : 'give-up',
  };
}

export interface BenchLink {
  /** bits/s, as in the fleet file. */
  nicBandwidthBps: number;
  streamCapFraction: number;
  /** The operator's downtime limit, ms (the policy's default, 300). */
  downtimeLimitMs: number;
}

/** dhm's policy for a host, as the client computes it: from the link and the host's VM sizes. */
export function dhmPolicy(link: BenchLink, vms: BenchVm[]): PolicyLike {
  const p = autoSchedulePolicy(
    { nicBandwidthBps: link.nicBandwidthBps, streamCapFraction: link.streamCapFraction, downtimeLimitMs: link.downtimeLimitMs },
    { vmMemoryMiB: vms.map((v) => statusOf(v).spec.memoryMiB) },
  );
  return { ...p, order: p.order!, autoConverge: p.autoConverge!, onVmFailure: p.onVmFailure! };
}

/**
 * The reference systems' defaults: VMs in the order they are listed, the operator's downtime limit, no auto-converge
 * (Nova's `live_migration_permit_auto_converge` and KubeVirt's `allowAutoConverge` are off by default). A VM that does
 * not converge is tried again with auto-converge after the others — what an operator does to empty the host (and
 * what KubeVirt's evacuation does by retrying) — so every schedule ends with an empty host and makespans compare.
 */
function baseline(maxParallel: number, link: BenchLink): PolicyLike {
  return { maxParallel, order: 'as-listed', autoConverge: false, maxDowntimeMs: link.downtimeLimitMs, onVmFailure: 'retry-with-auto-converge' };
}

export const SCHEDULE_NAMES = ['dhm', 'sequential', 'fixed-2', 'all-at-once'] as const;
export type ScheduleName = (typeof SCHEDULE_NAMES)[number];

export function schedulesFor(link: BenchLink, vms: BenchVm[]): Record<ScheduleName, Schedule> {
  const vmCount = vms.length;
  return {
    dhm: scheduleFromPolicy('dhm', dhmPolicy(link, vms)),
    sequential: scheduleFromPolicy('sequential', baseline(1, link)),
    'fixed-2': scheduleFromPolicy('fixed-2', baseline(2, link)),
    'all-at-once': scheduleFromPolicy('all-at-once', baseline(Math.max(1, vmCount), link)),
  };
}

/** What each of dhm's choices buys: dhm with one choice undone, and the best baseline given dhm's downtime target. */
export function ablationsFor(link: BenchLink, vms: BenchVm[]): Schedule[] {
  const dhm = dhmPolicy(link, vms);
  const fill = Math.ceil(1 / link.streamCapFraction - 1e-9);
  return [
    scheduleFromPolicy('dhm', dhm),
    scheduleFromPolicy('dhm, downtime target = limit', { ...dhm, maxDowntimeMs: link.downtimeLimitMs }),
    scheduleFromPolicy('dhm, auto-converge on every VM', { ...dhm, autoConverge: true }),
    scheduleFromPolicy('dhm, auto-converge only on retry', { ...dhm, autoConvergeAboveDirtyRateMiBps: undefined }),
    scheduleFromPolicy('dhm, as-listed order', { ...dhm, order: 'as-listed' }),
    scheduleFromPolicy('dhm, dirtiest-first order', { ...dhm, order: 'dirtiest-first' }),
    scheduleFromPolicy('dhm, no critical-path caps', { ...dhm, linkBytesPerSec: undefined, streamCapBytesPerSec: undefined }),
    scheduleFromPolicy(`dhm, ${fill - 1} streams`, { ...dhm, maxParallel: fill - 1 }),
    scheduleFromPolicy(`dhm, ${fill + 1} streams`, { ...dhm, maxParallel: fill + 1 }),
    scheduleFromPolicy('fixed-2 at dhm target', { ...baseline(2, link), maxDowntimeMs: dhm.maxDowntimeMs }),
  ];
}

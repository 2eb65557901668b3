import type { MigrationPolicyInput } from '../../common/migration';
import { measuredDirtyRateBps, measuredStreamBps } from '../../compute/sim/measure';
import type { MoveController, RoundVerdict } from '../../compute/sim/precopy';
import { seededRandom } from '../../compute/sim/rng';
import {
  channelsFor,
  concurrencyFor,
  launchOrder,
  moveSettingsFor,
  streamsFor,
  DEFAULT_TUNING,
  MEASURED_MOVE_SETUP_MS,
  type SetupRule,
  type MeasuredLink,
  type Tuning,
} from '../../workflows/scheduler';
import { autoSchedulePolicy } from '../../workflows/vm-order';
import type { HostView, LinkSpec, Schedule } from './evacuation';
import type { BenchVm } from './host-mix';

/**
 * The schedules benchmark 1 compares. dhm's is the workflow's own code (workflows/scheduler.ts: `launchOrder`,
 * `streamsFor`, `moveSettingsFor`) on the policy the API would give it, fed only what the agents would measure (the
 * sim's measurements, with seeded noise: measure.ts) — never a VM's declared dirty rate. The baselines are the
 * reference systems' documented defaults, each at the same downtime limit as dhm; the sources are cited next to each
 * and in docs/benchmarks.md.
 */

export interface BenchLink {
  /** bits/s, as in the fleet file. */
  nicBandwidthBps: number;
  /** The sim's per-stream cap S/B (one channel): the simulated world's, which dhm only ever sees measured. */
  streamCapFraction: number;
  /** The downtime limit every schedule runs at, ms (QEMU's default downtime-limit, and dhm's policy default: 300). */
  downtimeLimitMs: number;
}

/** What the measurement before a move samples: QEMU's calc-dirty-rate over 1 s (activities/measure.ts). */
const SAMPLE_MS = 1000;

/** The measured link as the workflow's `measureLink` would return it: the sim's S with noise, once per host. */
function measureLink(link: LinkSpec, rand: () => number): MeasuredLink {
  const s = link.streamCapFraction * link.bytesPerSec;
  return { nicBytesPerSec: link.bytesPerSec, streamBytesPerSec: measuredStreamBps(s, link.bytesPerSec, rand) };
}

const byIds = (vms: BenchVm[]) => new Map(vms.map((v) => [v.vmId, v]));
const statusById = (host: HostView, vmId: string) => host.vms.find((v) => v.vmId === vmId)!;

/** dhm's policy: what `policyForHost` computes (autoSchedulePolicy; S/B only as the fallback hint), plus overrides. */
export function dhmPolicy(link: BenchLink, overrides: Partial<MigrationPolicyInput> = {}) {
  const p = autoSchedulePolicy({ nicBandwidthBps: link.nicBandwidthBps, streamCapFraction: link.streamCapFraction, downtimeLimitMs: link.downtimeLimitMs });
  return {
    ...p,
    order: p.order!,
    autoConverge: p.autoConverge!,
    onVmFailure: p.onVmFailure!,
    postCopy: 'off' as const,
    ...overrides,
  } as ReturnType<typeof autoSchedulePolicy> & {
    order: NonNullable<MigrationPolicyInput['order']>;
    autoConverge: boolean;
    postCopy: 'off' | 'when-not-converging';
  } & Partial<MigrationPolicyInput>;
}

/**
 * dhm as the workflow runs it: the stream count from the measured link, the launch order and each move's settings
 * from the workflow's functions, the dirty rate measured just before each move (seeded noise per host).
 */
export function dhmSchedule(
  name: string,
  vms: BenchVm[],
  link: BenchLink,
  spec: LinkSpec,
  seed: number,
  overrides: Partial<MigrationPolicyInput> = {},
  tuning: Tuning = DEFAULT_TUNING,
  /** Count the moves' set-up in the concurrency (the workflow's `setup-aware-concurrency`); false: the run before it. */
  setupAware = true,
  /** A first try asks QEMU for `tuning.downtimeAim` of the limit (with `setupAware`), as the workflow does (patch aim-downtime). */
  aimDowntime = true,
): Schedule {
  const policy = dhmPolicy(link, overrides);
  const rand = seededRandom(seed);
  const measured = policy.measureInputs ? measureLink(spec, rand) : null;
  const vm = byIds(vms);
  // New runs' rule (moves.ts, patch setup-overlap-measured), with the threshold being tuned.
  const rule: SetupRule = { priorMs: MEASURED_MOVE_SETUP_MS, overlapThreshold: tuning.overlapThreshold };
  return {
    name,
    // As moves.ts decides it before every launch: from the moves' reported set-up and the VMs still waiting.
    streams:
      setupAware && policy.measureInputs ? (host: HostView) => concurrencyFor(policy, measured, host.vms, undefined, rule) : streamsFor(policy, measured),
    launch: (host, free) => launchOrder(host.vms, policy.order, host.forced, new Set(), free).map((v) => v.vmId),
    settings: (vmId, host) => {
      const v = vm.get(vmId)!;
      const model = { hotBytes: v.workingSetBytes, hotRateBps: v.dirtyRateBps, coldBytes: v.memoryBytes - v.workingSetBytes, coldRateBps: v.coldDirtyRateBps };
      const rate = policy.measureInputs ? measuredDirtyRateBps(model, SAMPLE_MS, 0, rand) : null;
      const s = moveSettingsFor(
        policy,
        statusById(host, vmId),
        host.vms,
        {
          forced: host.forced.has(vmId),
          measuredLink: measured,
          measuredDirtyRateBps: rate,
          ...(setupAware && policy.measureInputs ? { concurrency: concurrencyFor(policy, measured, host.vms, undefined, rule), aimDowntime } : {}),
        },
        tuning,
      );
      return {
        autoConverge: s.autoConverge,
        bandwidthCapBps: s.bandwidthCapBps,
        channels: s.channels ?? 1,
        maxDowntimeMs: s.maxDowntimeMs ?? policy.maxDowntimeMs,
        postCopyOnGiveUp: s.postCopy === true,
      };
    },
    onNotConverging: policy.onVmFailure === 'retry-with-auto-converge' ? 'retry-with-auto-converge' : 'give-up',
    // The per-VM bound at what one of its moves can carry: min(B, channels·S) (multifd lets one VM fill the link).
    boundChannels: measured ? channelsFor(policy, measured) : (policy.channels ?? 1),
  };
}

/** A baseline's rules, on VMs in the tenant's order (what "migrate all" / a drain sees). */
function asListed(host: HostView, free: number): string[] {
  return host.vms
    .filter((v) => v.state === 'pending')
    .slice(0, free)
    .map((v) => v.vmId);
}

const GIB = 2 ** 30;
const dataGiB = (v: BenchVm) => (v.memoryBytes + v.diskBytes) / GIB;

/**
 * KubeVirt's defaults (https://github.com/kubevirt/kubevirt/blob/main/pkg/virt-config/virt-config.go, `ParallelOutboundMigrationsPerNodeDefault = 2`,
 * `MigrationAllowAutoConverge = false`, `MigrationAllowPostCopy = false`, `MigrationProgressTimeout = 150`,
 * `MigrationCompletionTimeoutPerGiB = 800`; the HyperConverged operator sets 150 s/GiB): 2 outbound migrations per
 * node, no auto-converge, abort when the remaining data has not shrunk for 150 s, and after 800 s per GiB of data
 * (memory + local disks) switch to post-copy — `allowPostCopy` is turned on here (off by default) so the drain can
 * finish its busiest VMs, as KubeVirt documents for them. multifd with 8 channels as the issue states it (KubeVirt's
 * own channel count was not verified in this session). Downtime: QEMU's default downtime-limit, the common target.
 */
export function kubevirtSchedule(vms: BenchVm[], link: BenchLink): Schedule {
  const vm = byIds(vms);
  return {
    name: 'kubevirt',
    streams: 2,
    launch: asListed,
    settings: (vmId) => {
      const completionS = 800 * dataGiB(vm.get(vmId)!);
      let best = Infinity;
      let bestAt = 0;
      const controller: MoveController = {
        onRound: (r): RoundVerdict => {
          if (r.dirtyBytes < best) [best, bestAt] = [r.dirtyBytes, r.elapsedMs];
          if (r.elapsedMs >= completionS * 1000) return { action: 'postcopy' };
          if (r.elapsedMs - bestAt >= 150_000) return { action: 'abort', reason: 'progressTimeout 150 s' };
          return { action: 'continue' };
        },
      };
      return { autoConverge: false, bandwidthCapBps: undefined, channels: 8, maxDowntimeMs: link.downtimeLimitMs, controller, agentGivesUp: false };
    },
    // KubeVirt's evacuation creates a new migration for a VMI whose migration failed: modelled as one more try.
    onNotConverging: 'retry-with-auto-converge',
    boundChannels: 8,
  };
}

/**
 * Nova's defaults (https://github.com/openstack/nova: nova/conf/compute.py `max_concurrent_live_migrations = 1`; nova/conf/libvirt.py
 * `live_migration_downtime = 500`, `_steps = 10`, `_delay = 75` s per GiB of RAM + disk,
 * `live_migration_completion_timeout = 800` s per GiB, `live_migration_timeout_action = abort`,
 * `live_migration_permit_auto_converge = False`, `live_migration_permit_post_copy = False`; the ramp itself is
 * nova/virt/libvirt/migration.py `downtime_steps`): one migration at a time, the downtime limit raised in 10 steps from
 * a tenth of the limit to the limit, every 75 s per GiB; at the completion timeout abort (the VM stays) or
 * force-complete (the guest is paused and the rest sent: a long pause). The ramp ends at the common limit, not at 500.
 */
export function novaSchedule(vms: BenchVm[], link: BenchLink, timeoutAction: 'abort' | 'force-complete'): Schedule {
  const vm = byIds(vms);
  const max = link.downtimeLimitMs;
  return {
    name: `nova (${timeoutAction})`,
    streams: 1,
    launch: asListed,
    settings: (vmId) => {
      const gib = dataGiB(vm.get(vmId)!);
      const delayMs = Math.max(3, 75 * gib) * 1000;
      const base = max / 10;
      const offset = (max - base) / 10;
      const controller: MoveController = {
        onRound: (r): RoundVerdict => {
          if (r.elapsedMs >= 800 * gib * 1000)
            return timeoutAction === 'abort' ? { action: 'abort', reason: 'live_migration_completion_timeout' } : { action: 'pause' };
          const step = Math.min(10, Math.floor(r.elapsedMs / delayMs));
          return { action: 'continue', downtimeLimitMs: base + offset * step };
        },
      };
      // No give-up of the agent's own: Nova lets libvirt run until its timeout.
      return { autoConverge: false, bandwidthCapBps: undefined, channels: 1, maxDowntimeMs: base, controller, agentGivesUp: false };
    },
    onNotConverging: 'give-up',
  };
}

/**
 * Proxmox VE's defaults (https://github.com/proxmox/qemu-server: PVE/QemuServer.pm `set_migration_caps`: xbzrle and auto-converge on;
 * `migrate_downtime` default 0.1 s; PVE/QemuMigrate.pm phase2: the downtime limit is doubled once the remaining data
 * has grown (or hit 0) on more than 5 polls; xbzrle cache 10 % of memory): one VM at a time (a `qm migrate` each, as
 * the issue states it), auto-converge and xbzrle always, 100 ms doubling — capped here at the common limit. Re-sent
 * pages cost XBZRLE_RESEND_FACTOR of their size (an assumption: xbzrle's gain depends on the guest's writes).
 */
export const XBZRLE_RESEND_FACTOR = 0.5;
export function proxmoxSchedule(_vms: BenchVm[], link: BenchLink): Schedule {
  return {
    name: 'proxmox',
    streams: 1,
    launch: asListed,
    settings: () => {
      let downtime = Math.min(100, link.downtimeLimitMs);
      let grew = 0;
      let last = Infinity;
      const controller: MoveController = {
        onRound: (r): RoundVerdict => {
          if (r.dirtyBytes >= last) grew += 1;
          last = r.dirtyBytes;
          if (grew > 5) {
            grew = 0;
            downtime = Math.min(link.downtimeLimitMs, downtime * 2);
          }
          return { action: 'continue', downtimeLimitMs: downtime };
        },
      };
      return {
        autoConverge: true,
        bandwidthCapBps: undefined,
        channels: 1,
        maxDowntimeMs: downtime,
        controller,
        resendFactor: XBZRLE_RESEND_FACTOR,
        agentGivesUp: false,
      };
    },
    onNotConverging: 'give-up',
  };
}

/**
 * vSphere's cost model (vCenter Server and Host Management, "Limits on Simultaneous Migrations",
 * https://docs.vmware.com/en/VMware-vSphere/6.7/com.vmware.vsphere.vcenterhost.doc/GUID-25EA5833-03B5-4EDD-A167-87578B8009B3.html:
 * every host has a maximum cost of 8, a vMotion costs the host 1, a Storage vMotion and a vMotion without shared
 * storage — a VM with local disks — 4): a move starts while the host's costs in flight fit its budget of 8. vMotion's convergence aid (Stun During
 * Page Send) is always on: modelled as auto-converge.
 */
export function vsphereSchedule(vms: BenchVm[], link: BenchLink): Schedule {
  const vm = byIds(vms);
  const cost = (id: string) => (vm.get(id)!.diskBytes > 0 ? 4 : 1);
  return {
    name: 'vsphere',
    streams: 8,
    launch: (host, _free, running) => {
      let used = running.reduce((s, id) => s + cost(id), 0);
      const out: string[] = [];
      for (const v of host.vms) {
        if (v.state !== 'pending') continue;
        if (used + cost(v.vmId) > 8) break; // in order: a big one waits for room, the ones behind it wait too
        used += cost(v.vmId);
        out.push(v.vmId);
      }
      return out;
    },
    settings: () => ({ autoConverge: true, bandwidthCapBps: undefined, channels: 1, maxDowntimeMs: link.downtimeLimitMs }),
    onNotConverging: 'give-up',
  };
}

/**
 * The strongest simple schedule: ⌈B/S⌉ streams (from the same measured S dhm gets), auto-converge on every VM, the
 * tenant's order, the common downtime limit.
 */
export function simpleSchedule(_vms: BenchVm[], link: BenchLink, spec: LinkSpec, seed: number): Schedule {
  const measured = measureLink(spec, seededRandom(seed));
  return {
    name: 'simple ⌈B/S⌉ + AC',
    streams: Math.max(1, Math.ceil(measured.nicBytesPerSec / measured.streamBytesPerSec - 1e-9)),
    launch: asListed,
    settings: () => ({ autoConverge: true, bandwidthCapBps: undefined, channels: 1, maxDowntimeMs: link.downtimeLimitMs }),
    onNotConverging: 'give-up',
  };
}

export const BASELINE_NAMES = ['kubevirt', 'nova (abort)', 'nova (force-complete)', 'proxmox', 'vsphere', 'simple ⌈B/S⌉ + AC'] as const;
export const SCHEDULE_NAMES = ['dhm', ...BASELINE_NAMES] as const;
export type ScheduleName = (typeof SCHEDULE_NAMES)[number];

/** Every schedule for one host; `seed` seeds the measurement noise (dhm's and the simple schedule's measured S). */
export function schedulesFor(link: BenchLink, spec: LinkSpec, vms: BenchVm[], seed: number, tuning: Tuning = DEFAULT_TUNING): Record<ScheduleName, Schedule> {
  return {
    dhm: dhmSchedule('dhm', vms, link, spec, seed, {}, tuning),
    kubevirt: kubevirtSchedule(vms, link),
    'nova (abort)': novaSchedule(vms, link, 'abort'),
    'nova (force-complete)': novaSchedule(vms, link, 'force-complete'),
    proxmox: proxmoxSchedule(vms, link),
    vsphere: vsphereSchedule(vms, link),
    'simple ⌈B/S⌉ + AC': simpleSchedule(vms, link, spec, seed),
  };
}

/** What each of dhm's choices buys: dhm with one choice undone or changed. */
export function ablationsFor(link: BenchLink, spec: LinkSpec, vms: BenchVm[], seed: number): Schedule[] {
  const d = (name: string, o: Partial<MigrationPolicyInput>) => dhmSchedule(name, vms, link, spec, seed, o);
  return [
    d('dhm', {}),
    dhmSchedule('dhm, set-up not counted (one multifd move at a time: the previous rule)', vms, link, spec, seed, {}, DEFAULT_TUNING, false),
    dhmSchedule('dhm, the whole limit to QEMU on every try (no aim: the rule before)', vms, link, spec, seed, {}, DEFAULT_TUNING, true, false),
    d('dhm, auto-converge on every VM', { autoConverge: true }),
    d('dhm, as-listed order', { order: 'as-listed' }),
    d('dhm, one channel per move (no multifd; ⌈B/S⌉ streams, critical-path caps)', { channels: 1 }),
    d('dhm, no measurements (the policy figures as given: 3 one-channel streams)', { measureInputs: false, maxParallel: streamsOf(link) }),
    d('dhm, post-copy when not converging', { postCopy: 'when-not-converging' }),
  ];
}

/** ⌈B/S⌉ on the sim's true S (for ablations that turn measurements off). */
function streamsOf(link: BenchLink): number {
  return Math.max(1, Math.ceil(1 / link.streamCapFraction - 1e-9));
}

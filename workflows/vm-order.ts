import { moveMiB, type MigrationPolicy, type MigrationPolicyInput, type VmMigrationStatus } from '../common/migration';

type Order = 'largest-first' | 'smallest-first' | 'dirtiest-first' | 'as-listed';

/**
 * The order VMs leave the host. Sorting is stable and ties break on the VM id, so every replay picks the same VM.
 * A VM's size is what its move sends at least once: memory plus the data on its local disks (`moveMiB`).
 */
export function orderVms(vms: VmMigrationStatus[], order: Order): VmMigrationStatus[] {
  const byId = (a: VmMigrationStatus, b: VmMigrationStatus) => (a.vmId < b.vmId ? -1 : a.vmId > b.vmId ? 1 : 0);
  const copy = [...vms];
  switch (order) {
    case 'largest-first':
      return copy.sort((a, b) => moveMiB(b) - moveMiB(a) || byId(a, b));
    case 'smallest-first':
      return copy.sort((a, b) => moveMiB(a) - moveMiB(b) || byId(a, b));
    case 'dirtiest-first':
      return copy.sort((a, b) => (b.dirtyRateMiBps ?? 0) - (a.dirtyRateMiBps ?? 0) || moveMiB(b) - moveMiB(a) || byId(a, b));
    case 'as-listed':
      return copy;
  }
}

/**
 * Whether one VM's move runs with auto-converge: the policy turns it on for every VM, or only for VMs whose dirty rate
 * reaches `autoConvergeAboveDirtyRateMiBps` (the guests that would not converge without it), or a VM that already
 * failed to converge is retried with it (`forced`).
 */
export function autoConvergeFor(
  policy: Pick<MigrationPolicy, 'autoConverge' | 'autoConvergeAboveDirtyRateMiBps'>,
  vm: Pick<VmMigrationStatus, 'dirtyRateMiBps'>,
  forced: boolean,
): boolean {
  if (policy.autoConverge || forced) return true;
  const threshold = policy.autoConvergeAboveDirtyRateMiBps;
  return threshold !== undefined && (vm.dirtyRateMiBps ?? 0) >= threshold;
}

/** Of the link a stream may use, the share above which a guest's dirty rate needs auto-converge (see `autoSchedulePolicy`). */
export const AUTO_CONVERGE_SHARE = 0.8;

/**
 * How much shorter a VM's transfer at S may be than the rest of the host's at B − S and still count as the critical
 * path in `bandwidthCapFor` (1: the fluid model's exact break-even). Pre-copy resends make both sides longer than
 * their memory, so a little slack catches the hosts at the break-even; more starts capping hosts whose largest VM is
 * not the critical path, and those end later. 1.1 was best over 300 8-VM hosts in benchmark 1.
 */
export const CRITICAL_PATH_SLACK = 1.1;

/** The VMs a move runs among, as the workflow keeps them: their sizes and where they are. */
type HostVm = Pick<VmMigrationStatus, 'vmId' | 'spec' | 'state' | 'diskMiB'>;

/**
 * The host's critical-path VM, if it has one: its largest VM (ties broken on the VM id, as `orderVms` does) when,
 * at a whole stream S, it takes at least as long as the rest of the host on what is left of the link, B − S, shared
 * by the other `streams` − 1 streams: M·(B − S) ≥ S·(ΣM − M), and no other VM alone needs longer than it at its share
 * (B − S)/(streams − 1). Both up to `CRITICAL_PATH_SLACK`. Sizes in MiB, rates in bytes/s: compared as products.
 */
function criticalVm(
  host: readonly HostVm[],
  streams: number,
  linkBytesPerSec: number,
  streamBytesPerSec: number,
  slack = CRITICAL_PATH_SLACK,
): string | undefined {
  if (host.length < 2) return undefined;
  const [first, second] = [...host].sort((a, b) => moveMiB(b) - moveMiB(a) || (a.vmId < b.vmId ? -1 : a.vmId > b.vmId ? 1 : 0));
  const total = host.reduce((s, v) => s + moveMiB(v), 0);
  const largest = moveMiB(first!) * slack * (linkBytesPerSec - streamBytesPerSec);
  const restFits = largest >= streamBytesPerSec * (total - moveMiB(first!));
  const secondFits = largest >= streamBytesPerSec * (streams - 1) * moveMiB(second!);
  return restFits && secondFits ? first!.vmId : undefined;
}

/**
 * The bandwidth cap (bytes/s, for the move's `bandwidthCapBps`; undefined: none) of the move of `vm` that is about
 * to start, given the host's VMs `vms` in their current states (`moving`: the moves in flight; `pending`: still to
 * go; `moved`: already on the target). `vm` itself is recognised by its id whatever its state in `vms`, so this may
 * be called before or after the move marks the VM `moving`, with or without `vm` in `vms`.
 *
 * The agents share the NIC (B bytes/s) max-min fairly between the streams on it, each capped at S, so with
 * `maxParallel` = ⌈B/S⌉ equal streams every move gets B/⌈B/S⌉ < S. When one VM is the host's critical path (see
 * `criticalVm`: at S it outlasts the rest of the host at B − S), the host can only end near ΣM/B if that VM has a
 * whole stream S from start to finish while the others share the rest. So that VM's move runs uncapped, and every
 * other move started while it is in flight is capped at (B − S)/(maxParallel − 1); max-min sharing then gives the
 * critical move its S. Moves started before it, or after it has ended, are not capped.
 *
 * The critical VM is judged on the whole host (VMs pending, moving and moved — not deleted ones), so the answer does
 * not drift as the host empties. Without the policy's link figures (`linkBytesPerSec`, `streamCapBytesPerSec`), with
 * one stream, or when no critical VM is in flight, this is the policy's own `bandwidthCapBps`, and it never returns
 * more than that. Pure and deterministic (whole bytes/s): a replay computes the same cap.
 */
export function bandwidthCapFor(
  policy: Pick<MigrationPolicy, 'maxParallel' | 'bandwidthCapBps' | 'linkBytesPerSec' | 'streamCapBytesPerSec'>,
  vm: Pick<VmMigrationStatus, 'vmId' | 'spec' | 'diskMiB'>,
  vms: readonly HostVm[],
  /** Benchmark 1's `--tune` sweeps it; the workflow always uses CRITICAL_PATH_SLACK. */
  slack = CRITICAL_PATH_SLACK,
): number | undefined {
  const base = policy.bandwidthCapBps;
  const link = policy.linkBytesPerSec;
  const streams = policy.maxParallel;
  if (link === undefined || policy.streamCapBytesPerSec === undefined || !(streams > 1)) return base;
  const stream = Math.min(link, policy.streamCapBytesPerSec);
  if (stream >= link) return base;
  const others = vms.filter((v) => v.vmId !== vm.vmId);
  const host: HostVm[] = [
    { vmId: vm.vmId, spec: vm.spec, diskMiB: vm.diskMiB, state: 'moving' },
    ...others.filter((v) => v.state === 'pending' || v.state === 'moving' || v.state === 'moved'),
  ];
  const critical = criticalVm(host, streams, link, stream, slack);
  if (critical === undefined || critical === vm.vmId || !others.some((v) => v.vmId === critical && v.state === 'moving')) return base;
  const share = Math.floor((link - stream) / (streams - 1));
  if (share >= stream) return base;
  return base === undefined ? share : Math.min(base, share);
}

/** The most moves dhm's own policy lets run at once; the measured link decides how many it really runs (`streamsFor`). */
export const MAX_AUTO_STREAMS = 8;

/**
 * dhm's own schedule for a host whose source server has a `nicBandwidthBps` (bits/s) NIC:
 *
 * - **Measured inputs** (`measureInputs`): before the moves the workflow asks the source's agent for its link (one
 *   stream's measured throughput S), before each move for the VM's measured dirty rate, and decides from those
 *   (workflows/scheduler.ts). `streamCapFraction` (S/B) is only the fallback for agents that cannot measure: the
 *   link figures below are computed from it, and the declared workloads stand in for the dirty rates.
 * - **Streams**: ⌈B/S⌉ in parallel — the fewest that fill the link — at most MAX_AUTO_STREAMS.
 * - **Critical-path caps**: a VM that at S outlasts the rest of the host at B − S gets a whole stream S, the moves
 *   around it share the rest (`bandwidthCapFor`).
 * - **Order**: largest first (longest-processing-time first).
 * - **Auto-converge only where needed**: a guest whose measured dirty rate reaches AUTO_CONVERGE_SHARE of what its
 *   move gets, min(S, B/streams), migrates with auto-converge on; every other guest runs unthrottled.
 * - **Downtime target**: the operator's limit (`downtimeLimitMs`, default 300 ms) — the same target the benchmark's
 *   baselines run at.
 * - A VM that still does not converge is retried with auto-converge after the others rather than rolling the whole
 *   host back.
 *
 * Pure and deterministic: the client calls it with the source server's NIC from the inventory and passes the result
 * as the migration's policy; any field may still be overridden. `host` is accepted and unused (the workflow finds the
 * critical-path VM itself). docs/benchmarks.md shows what each choice buys.
 */
export function autoSchedulePolicy(
  link: { nicBandwidthBps: number; streamCapFraction: number; downtimeLimitMs?: number },
  _host?: { vmMemoryMiB: number[] },
): MigrationPolicyInput & {
  maxParallel: number;
  autoConvergeAboveDirtyRateMiBps: number;
  maxDowntimeMs: number;
  linkBytesPerSec: number;
  streamCapBytesPerSec: number;
  measureInputs: true;
} {
  if (!(link.nicBandwidthBps > 0) || !(link.streamCapFraction > 0)) throw new RangeError('nicBandwidthBps and streamCapFraction must be positive');
  const fraction = Math.min(1, link.streamCapFraction);
  const linkBytesPerSec = link.nicBandwidthBps / 8;
  const streamBytesPerSec = fraction * linkBytesPerSec;
  // Float slack: 1 / 0.4 is 2.5000000000000004 in binary; it must still round up to 3, and 1 / 0.5 to exactly 2.
  const fill = Math.min(64, Math.max(1, Math.ceil(1 / fraction - 1e-9)));
  const perStreamMiBps = Math.min(streamBytesPerSec, linkBytesPerSec / fill) / 2 ** 20;
  return {
    maxParallel: Math.max(fill, MAX_AUTO_STREAMS),
    order: 'largest-first',
    autoConverge: false,
    // The fallback threshold (agents that cannot measure); with measurements it comes from the measured link.
    autoConvergeAboveDirtyRateMiBps: Math.round(AUTO_CONVERGE_SHARE * perStreamMiBps),
    maxDowntimeMs: Math.max(1, Math.round(link.downtimeLimitMs ?? 300)),
    onVmFailure: 'retry-with-auto-converge',
    linkBytesPerSec,
    streamCapBytesPerSec: streamBytesPerSec,
    measureInputs: true,
  };
}

import type { MigrationPolicy, MigrationPolicyInput, VmMigrationStatus } from '../common/migration';

type Order = 'largest-first' | 'smallest-first' | 'dirtiest-first' | 'as-listed';

/**
 * The order VMs leave the host. Sorting is stable and ties break on the VM id, so every replay picks the same VM.
 * Memory stands for transfer cost: pre-copy sends at least M bytes per VM.
 */
export function orderVms(vms: VmMigrationStatus[], order: Order): VmMigrationStatus[] {
  const byId = (a: VmMigrationStatus, b: VmMigrationStatus) => (a.vmId < b.vmId ? -1 : a.vmId > b.vmId ? 1 : 0);
  const copy = [...vms];
  switch (order) {
    case 'largest-first':
      return copy.sort((a, b) => b.spec.memoryMiB - a.spec.memoryMiB || byId(a, b));
    case 'smallest-first':
      return copy.sort((a, b) => a.spec.memoryMiB - b.spec.memoryMiB || byId(a, b));
    case 'dirtiest-first':
      return copy.sort((a, b) => (b.dirtyRateMiBps ?? 0) - (a.dirtyRateMiBps ?? 0) || b.spec.memoryMiB - a.spec.memoryMiB || byId(a, b));
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
 * Estimated makespan (s) of `streams` equal streams, largest VM first, in a fluid model without dirty pages: the
 * largest VM holds one stream and the others stream through the rest; once they are done it runs alone at S.
 */
function fluidMakespanS(memoryBytes: number[], streams: number, linkBytesPerSec: number, streamBytesPerSec: number): number {
  const total = memoryBytes.reduce((s, m) => s + m, 0);
  const largest = Math.max(0, ...memoryBytes);
  const share = Math.min(streamBytesPerSec, linkBytesPerSec / streams);
  if (streams === 1 || memoryBytes.length <= 1) return total / share;
  const othersDoneS = (total - largest) / ((streams - 1) * share);
  if (largest <= share * othersDoneS) return total / Math.min(linkBytesPerSec, streams * share);
  return othersDoneS + (largest - share * othersDoneS) / streamBytesPerSec;
}

/**
 * dhm's own schedule for a host whose source server has a `nicBandwidthBps` (bits/s) NIC on which one migration
 * stream can use at most `streamCapFraction` of the link (the sim agent's per-stream cap S/B; 0.4 by default):
 *
 * - **Streams**: ⌈B/S⌉ in parallel — the fewest that fill the link (3 for S = 0.4·B). Fewer leave bandwidth unused
 *   (2 streams use 80 % of it); more only split the same bandwidth thinner, so each VM's dirty pages pile up faster
 *   relative to its stream and more of them are sent again. One exception, when the host's VM sizes are given: if
 *   one VM is so large that it is the critical path (its transfer at full speed outlasts everything else), ⌊B/S⌋
 *   streams are used instead, so that VM always has a whole stream's bandwidth S instead of a 1/⌈B/S⌉ share.
 * - **Order**: largest first (longest-processing-time first): the long transfers start at once, and the end of the
 *   migration is made of small VMs that keep the link full until the last moment.
 * - **Auto-converge only where needed**: each stream gets min(S, B/streams); a guest that dirties memory at 80 % of
 *   that or more shrinks its dirty set by less than a fifth per round and would resend its working set for many
 *   rounds or never converge, so it migrates with auto-converge on. Every other guest runs unthrottled.
 * - **Downtime target** a third of `downtimeLimitMs` (default 300 ms): pre-copy switches over as soon as the rest fits
 *   the target, so aiming lower costs a few more short rounds (well under 1 % of the makespan in the benchmark) and
 *   cuts every VM's pause; the guests that could not reach it are exactly those auto-converge throttles anyway.
 * - A VM that still does not converge is retried with auto-converge after the others rather than rolling the whole
 *   host back.
 *
 * Pure and deterministic: the client calls it with the source server's NIC (and, optionally, the host's VM sizes)
 * from the inventory and passes the result as the migration's policy; any field may still be overridden.
 * docs/benchmarks.md shows what each choice buys.
 */
export function autoSchedulePolicy(
  link: { nicBandwidthBps: number; streamCapFraction: number; downtimeLimitMs?: number },
  host?: { vmMemoryMiB: number[] },
): MigrationPolicyInput & {
  maxParallel: number;
  autoConvergeAboveDirtyRateMiBps: number;
  maxDowntimeMs: number;
} {
  if (!(link.nicBandwidthBps > 0) || !(link.streamCapFraction > 0)) throw new RangeError('nicBandwidthBps and streamCapFraction must be positive');
  const fraction = Math.min(1, link.streamCapFraction);
  const linkBytesPerSec = link.nicBandwidthBps / 8;
  const streamBytesPerSec = fraction * linkBytesPerSec;
  // Float slack: 1 / 0.4 is 2.5000000000000004 in binary; it must still round up to 3, and 1 / 0.5 to exactly 2.
  const fill = Math.min(64, Math.max(1, Math.ceil(1 / fraction - 1e-9)));
  let streams = fill;
  const sizes = (host?.vmMemoryMiB ?? []).filter((m) => m > 0).map((m) => m * 2 ** 20);
  if (fill > 1 && sizes.length > 1) {
    const fewer = Math.max(1, Math.floor(1 / fraction + 1e-9));
    if (fewer < fill && fluidMakespanS(sizes, fewer, linkBytesPerSec, streamBytesPerSec) < fluidMakespanS(sizes, fill, linkBytesPerSec, streamBytesPerSec)) streams = fewer;
  }
  const perStreamMiBps = Math.min(streamBytesPerSec, linkBytesPerSec / streams) / 2 ** 20;
  const limit = link.downtimeLimitMs ?? 300;
  return {
    maxParallel: streams,
    order: 'largest-first',
    autoConverge: false,
    autoConvergeAboveDirtyRateMiBps: Math.round(AUTO_CONVERGE_SHARE * perStreamMiBps),
    maxDowntimeMs: Math.max(1, Math.round(limit / 3)),
    onVmFailure: 'retry-with-auto-converge',
  };
}

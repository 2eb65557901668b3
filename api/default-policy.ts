import type { MigrationPolicy, MigrationPolicyInput } from '../common/migration';
import { DEFAULT_STREAM_CAP_FRACTION } from '../compute/agent-service';
import { QEMU_STREAM_BITS_PER_SEC } from '../compute/qemu/create';
import type { Inventory } from '../inventory';
import { autoSchedulePolicy } from '../workflows/vm-order';

/**
 * The policy a migration runs with when the operator does not say otherwise: dhm's own schedule
 * (`autoSchedulePolicy`: streams from the link and the per-stream cap, largest first, auto-converge only for the
 * guests that need it, the downtime limit as the target, critical-path caps), computed from the source
 * server's NIC; the workflow finds the critical-path VM itself from the VMs it moves. Every field the operator gave wins as given.
 *
 * The policy measures its inputs (`measureInputs`): the workflow asks the source's agent for one stream's throughput S
 * and each VM's dirty rate. The per-stream cap given here (`DEFAULT_STREAM_CAP_FRACTION` of the NIC for sim agents; for
 * QEMU the destination's CPU, `QEMU_STREAM_BITS_PER_SEC`, or the link) is only the fallback for agents that cannot measure.
 */
export async function policyForHost(inventory: Inventory, dedicatedHostId: string, explicit: Partial<MigrationPolicy> = {}): Promise<MigrationPolicyInput> {
  const host = await inventory.getHost(dedicatedHostId);
  const server = await inventory.getServer(host.serverId);
  const auto = autoSchedulePolicy({
    nicBandwidthBps: server.nicBandwidthBps,
    streamCapFraction: server.backend === 'qemu' ? Math.min(1, QEMU_STREAM_BITS_PER_SEC / server.nicBandwidthBps) : DEFAULT_STREAM_CAP_FRACTION,
    ...(explicit.maxDowntimeMs !== undefined ? { downtimeLimitMs: explicit.maxDowntimeMs } : {}),
  });
  return { ...auto, ...explicit };
}

/** The fields of a parsed policy that the request really carried (zod fills defaults for the rest). */
export function explicitFields(parsed: MigrationPolicy | undefined, raw: unknown): Partial<MigrationPolicy> {
  if (!parsed || !raw || typeof raw !== 'object') return {};
  const given = new Set(Object.keys(raw));
  return Object.fromEntries(Object.entries(parsed).filter(([k]) => given.has(k))) as Partial<MigrationPolicy>;
}

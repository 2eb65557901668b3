import type { PoolClient } from 'pg';
import { AUDIT_COLUMNS, audit } from './audit';
import { allocationChangeSql, capacityFrom, incarnationCapacity, insufficient, roomForSql, shiftAllocation, towards } from './capacity';
import { isRetryable, resOf } from './db';
import { InventoryError, notFound } from './errors';
import { requireRunningMigration } from './host-migrations';
import { findHost, liveIncarnations, lockHost } from './hosts';
import type { CapacityView, Vm } from './types';
import { placeOn, toVm, vmRow, type PlaceInput, type VmRow } from './vms';

/**
 * The VM placements a migration makes: a VM's move from one incarnation of its host to another (each live-migrated
 * VM, and each one moved back on rollback), and a VM provisioned on the clone mid-migration (claims 1f, 6, 7).
 */

/** The new VM, with the host's capacity right after it was placed: the clone's available already reduced (claim 6). */
export type ProvisionedVm = Vm & { capacity: CapacityView };

/** A new VM during the migration, placed on the clone after the aggregate check (claims 1f, 6, 7). Idempotent by vmId. */
export async function provisionVmOnClone(
  c: PoolClient,
  p: Omit<PlaceInput, 'onClone' | 'incarnationId'> & { vmId: string; migrationId: string },
): Promise<ProvisionedVm> {
  const host = await lockHost(c, p.dedicatedHostId, p.tenantId);
  // A retry after the VM was placed gets the first answer even if the migration has moved on since.
  const existing = await vmRow(c, p.vmId, false);
  if (!existing || existing.created_by_migration !== p.migrationId) await requireRunningMigration(c, host, p.migrationId);
  const { vm, live } = await placeOn(c, { ...p, onClone: true }, { host, existing });
  return { ...toVm(vm), capacity: capacityFrom(host, live) };
}

export interface MoveInput {
  vmId: string;
  migrationId: string;
  toIncarnationId: string;
  actor: string;
}

/**
 * A VM's arrival, recorded in one statement (its own transaction: `c` is the pool, or a client not in a transaction) when everything is as
 * expected: the VM runs on a live incarnation of its host, the migration is the host's running one, and the target
 * incarnation (live, same host) has room. Null when any of that does not hold, and on a deadlock or serialization
 * failure — the caller then runs `movePlacementStepByStep`, which names the problem or returns the VM already moved.
 *
 * Why one statement: every arrival of a host updates the same two incarnation rows, so arrivals queue on those row
 * locks; a transaction of eight round trips held them (and the host row) for eight round trips of a busy worker.
 * Here the locks are held for one statement and its commit. Locks are taken in the order every other writer takes
 * them — host, VM, incarnations by id — but the host row only FOR SHARE: arrivals of one host do not exclude each
 * other (the incarnation rows serialize their allocation changes), while finalize, rollback, placements and
 * deletes, which lock the host row FOR NO KEY UPDATE, still exclude them. The rows read after a lock wait are their
 * newest versions (READ COMMITTED re-reads locked rows), so the checks see what the updates will change; the
 * deferred triggers check allocations against the running VMs at commit, and the capacity CHECK at the update.
 */
export async function movePlacementAtOnce(c: Pick<PoolClient, 'query'>, p: MoveInput): Promise<Vm | null> {
  try {
    const { rows } = await c.query<VmRow>(
      `WITH vm0 AS MATERIALIZED (
         SELECT dedicated_host_id FROM vms WHERE id = $1
       ), host AS MATERIALIZED (
         SELECT h.id, h.migration_id FROM dedicated_hosts h JOIN vm0 ON h.id = vm0.dedicated_host_id FOR SHARE OF h
       ), vm AS MATERIALIZED (
         SELECT v.* FROM vms v JOIN host ON v.dedicated_host_id = host.id WHERE v.id = $1 FOR NO KEY UPDATE OF v
       ), inc AS MATERIALIZED (
         SELECT i.* FROM host_incarnations i JOIN vm ON i.dedicated_host_id = vm.dedicated_host_id
          WHERE i.id IN (vm.incarnation_id, $3) AND vm.state = 'running' AND vm.incarnation_id <> $3
          ORDER BY i.id FOR NO KEY UPDATE OF i
       ), go AS MATERIALIZED (
         SELECT vm.id AS vm_id, vm.name, vm.vcpus, vm.memory_mib, vm.disk_gib, host.id AS host_id,
                f.id AS from_id, f.server_id AS from_server, t.id AS to_id, t.server_id AS to_server
           FROM vm, host, host_migrations m, inc f, inc t
          WHERE host.migration_id = $2 AND m.id = $2 AND m.dedicated_host_id = host.id AND m.state = 'running'
            AND f.id = vm.incarnation_id AND f.state = 'live' AND t.id = $3 AND t.state = 'live'
            AND ${roomForSql('t', 'vm')}
       ), moved_inc AS (
         UPDATE host_incarnations i SET ${allocationChangeSql((d) => towards('go.to_id', `go.${d}`))}
           FROM go WHERE i.id IN (go.from_id, go.to_id)
       ), moved_vm AS (
         UPDATE vms v SET incarnation_id = go.to_id, updated_at = now() FROM go WHERE v.id = go.vm_id RETURNING v.*
       ), audited AS (
         INSERT INTO audit_events (${AUDIT_COLUMNS})
         SELECT $4, 'vm.moved', 'vm', go.vm_id, go.host_id, $2, jsonb_build_object('name', go.name),
                jsonb_build_object('fromIncarnationId', go.from_id, 'fromServerId', go.from_server,
                                   'toIncarnationId', go.to_id, 'toServerId', go.to_server)
           FROM go
       )
       SELECT * FROM moved_vm`,
      [p.vmId, p.migrationId, p.toIncarnationId, p.actor],
    );
    return rows[0] ? toVm(rows[0]) : null;
  } catch (err) {
    if (isRetryable(err)) return null;
    throw err;
  }
}

/** The same move as a transaction of single steps (`c` in a transaction), which explains every refusal. Idempotent. */
export async function movePlacementStepByStep(c: PoolClient, p: MoveInput): Promise<Vm> {
  const first = await vmRow(c, p.vmId, false);
  if (!first) throw notFound('VM', p.vmId, 'vmId');
  const host = await findHost(c, first.dedicated_host_id, { lock: true });
  await requireRunningMigration(c, host, p.migrationId);
  const vm = (await vmRow(c, p.vmId, true))!;
  if (vm.state !== 'running') throw new InventoryError('WRONG_STATE', `vmId: VM ${vm.id} is ${vm.state}`, 'vmId');
  if (vm.incarnation_id === p.toIncarnationId) return toVm(vm);
  const live = await liveIncarnations(c, host.id, true);
  const to = live.find((i) => i.id === p.toIncarnationId);
  if (!to) throw notFound(`live incarnation of host ${host.id}:`, p.toIncarnationId, 'toIncarnationId');
  const from = live.find((i) => i.id === vm.incarnation_id)!;
  const spec = resOf(vm);
  const short = insufficient(spec, incarnationCapacity(to).available, `incarnation ${to.id}`);
  if (short) throw short;
  await shiftAllocation(c, from.id, to.id, spec);
  const { rows } = await c.query<VmRow>('UPDATE vms SET incarnation_id = $2, updated_at = now() WHERE id = $1 RETURNING *', [vm.id, to.id]);
  await audit(c, {
    actor: p.actor,
    action: 'vm.moved',
    entityType: 'vm',
    entityId: vm.id,
    dedicatedHostId: host.id,
    migrationId: p.migrationId,
    details: { name: vm.name },
    physical: { fromIncarnationId: from.id, fromServerId: from.server_id, toIncarnationId: to.id, toServerId: to.server_id },
  });
  return toVm(rows[0]!);
}

import type { PoolClient } from 'pg';
import type { Resources } from '../common/resources';
import { disksSchema, type Disk, type VmSpec, type Workload } from '../common/vm-spec';
import { audit } from './audit';
import type { PlaceVmInput } from './contract';
import { capacityFrom, changeAllocation, incarnationCapacity, insufficient, minResources, negate, sameResources } from './capacity';
import { forUpdate, iso, isoNN, newId, pgConstraint, pgErrorCode, resOf } from './db';
import { InventoryError, notFound } from './errors';
import { checkMigrationGate, findHost, incarnationRow, liveIncarnations, lockHost, type HostRow, type IncarnationRow } from './hosts';
import { checkVmQuota } from './quotas';
import { visibleTo } from './tenant-visibility';
import type { Vm } from './types';
import { attachVolumes, detachVolumesOf } from './volumes';

/**
 * VMs (table `vms`). A VM belongs to its logical host for life (claim 3) and runs on one of the host's incarnations;
 * a running VM's resources are allocated on that incarnation (capacity.ts). Placing and ending VMs is here; the moves
 * a migration makes, and VMs it provisions on the clone, are in migration-placements.ts.
 */

export interface VmRow {
  id: string;
  tenant_id: string;
  dedicated_host_id: string;
  incarnation_id: string;
  name: string;
  vcpus: number;
  memory_mib: number;
  disk_gib: number;
  workload: Vm['workload'];
  disks: Disk[] | null;
  state: Vm['state'];
  created_by_migration: string | null;
  created_at: Date;
  updated_at: Date;
  deleted_at: Date | null;
  lost_at: Date | null;
  lost_reason: string | null;
}

export const toVm = (r: VmRow): Vm => ({
  id: r.id,
  tenantId: r.tenant_id,
  dedicatedHostId: r.dedicated_host_id,
  incarnationId: r.incarnation_id,
  name: r.name,
  spec: resOf(r),
  workload: r.workload,
  // Through the schema: jsonb keeps its own key order, the spec's is the schema's (agents compare specs as JSON).
  ...(r.disks ? { disks: disksSchema.parse(r.disks) } : {}),
  state: r.state,
  createdByMigration: r.created_by_migration,
  createdAt: isoNN(r.created_at),
  updatedAt: isoNN(r.updated_at),
  deletedAt: iso(r.deleted_at),
  ...(r.state === 'lost' ? { lostAt: iso(r.lost_at), lostReason: r.lost_reason } : {}),
});

/** The spec the agents run a VM with, as placed: resources, the workload if it had one, the disks if it named them. */
export function vmSpecOf(vm: Vm): VmSpec {
  const w = vm.workload as Partial<Workload>;
  const workload = typeof w.dirtyRateMiBps === 'number' && typeof w.workingSetMiB === 'number' ? { workload: w as Workload } : {};
  return { ...vm.spec, ...workload, ...(vm.disks ? { disks: vm.disks } : {}) };
}

export async function vmRow(c: PoolClient, id: string, lock: boolean): Promise<VmRow | undefined> {
  const { rows } = await c.query<VmRow>(`SELECT * FROM vms WHERE id = $1${forUpdate(lock)}`, [id]);
  return rows[0];
}

/** Same disks as given (both absent counts as the same default). */
const sameDisks = (stored: Disk[] | null, given: Disk[] | undefined): boolean =>
  JSON.stringify(stored ? disksSchema.parse(stored) : null) === JSON.stringify(given ? disksSchema.parse(given) : null);

/** The host's running VMs, oldest first. */
export async function runningVms(c: PoolClient, hostId: string): Promise<VmRow[]> {
  const { rows } = await c.query<VmRow>(`SELECT * FROM vms WHERE dedicated_host_id = $1 AND state = 'running' ORDER BY created_at, id`, [hostId]);
  return rows;
}

/** Ids of the VMs still running on an incarnation. */
export async function runningVmIdsOn(c: PoolClient, incarnationId: string): Promise<string[]> {
  const { rows } = await c.query<{ id: string }>(`SELECT id FROM vms WHERE incarnation_id = $1 AND state = 'running' ORDER BY id`, [incarnationId]);
  return rows.map((r) => r.id);
}

/** What placeVm takes (contract.ts), and where: on the host's clone (a VM a migration provisions, claim 1f), else on
 * `incarnationId` or the current incarnation. */
export type PlaceInput = PlaceVmInput & { onClone: boolean };

/**
 * The one path by which a VM gets placed: gate, idempotency, capacity under locks, insert, allocation, audit.
 * Returns the live incarnations as they are after the placement, for the capacity the caller may report.
 */
export async function placeOn(
  c: PoolClient,
  p: PlaceInput,
  // A caller that has locked the host and looked the VM up already passes them: one round trip each saved.
  known?: { host: HostRow; existing: VmRow | undefined },
): Promise<{ vm: VmRow; host: HostRow; live: IncarnationRow[] }> {
  const host = known?.host ?? (await lockHost(c, p.dedicatedHostId, p.tenantId));
  const vmId = p.vmId ?? newId('vm');
  const spec: Resources = { vcpus: p.spec.vcpus, memoryMiB: p.spec.memoryMiB, diskGiB: p.spec.diskGiB };
  const existing = known ? known.existing : await vmRow(c, vmId, false);
  if (existing) {
    // Same id, same request: the first answer. Same id for something else: a caller bug worth stopping.
    if (existing.dedicated_host_id === host.id && existing.name === p.name && sameResources(resOf(existing), spec) && sameDisks(existing.disks, p.spec.disks))
      return { vm: existing, host, live: await liveIncarnations(c, host.id, false) };
    throw new InventoryError('CONFLICT', `vmId: ${vmId} already names a different VM`, 'vmId');
  }
  checkMigrationGate(host, p.migrationId);
  // Under the host's lock: placements on one host queue on it, so the count cannot be passed by a concurrent one.
  await checkVmQuota(c, { tenantId: host.tenant_id, dedicatedHostId: host.id });
  const live = await liveIncarnations(c, host.id, true);
  let target: IncarnationRow | undefined;
  if (p.onClone) {
    target = live.find((i) => i.role === 'clone');
    if (!target) throw new InventoryError('WRONG_STATE', `migration ${p.migrationId} has no clone incarnation yet`, 'migrationId');
  } else {
    const want = p.incarnationId ?? host.current_incarnation_id;
    target = live.find((i) => i.id === want);
    if (!target) throw notFound(`live incarnation of host ${host.id}:`, want, 'incarnationId');
  }
  const cap = capacityFrom(host, live);
  const where = host.migration_id ? `host ${host.id} (aggregate of the host and its clone)` : `host ${host.id}`;
  const short = insufficient(spec, minResources(incarnationCapacity(target).available, cap.aggregateAvailable), where);
  if (short) throw short;
  let vm: VmRow;
  try {
    const { rows } = await c.query<VmRow>(
      `INSERT INTO vms (id, tenant_id, dedicated_host_id, incarnation_id, name, vcpus, memory_mib, disk_gib, workload, disks, created_by_migration)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *`,
      [
        vmId,
        host.tenant_id,
        host.id,
        target.id,
        p.name,
        spec.vcpus,
        spec.memoryMiB,
        spec.diskGiB,
        JSON.stringify(p.spec.workload ?? {}),
        p.spec.disks ? JSON.stringify(p.spec.disks) : null,
        p.migrationId ?? null,
      ],
    );
    vm = rows[0]!;
  } catch (err) {
    // The same id placed concurrently on another host (this host's lock does not cover that).
    if (pgErrorCode(err) === '23505' && pgConstraint(err) === 'vms_pkey')
      throw new InventoryError('CONFLICT', `vmId: ${vmId} already names a different VM`, 'vmId');
    throw err;
  }
  // After the insert (the attachment names the VM), in the same transaction: a refused volume places nothing.
  await attachVolumes(c, { vmId, tenantId: host.tenant_id, zone: host.zone, disks: p.spec.disks });
  await changeAllocation(c, target.id, spec);
  await audit(c, {
    actor: p.actor,
    action: p.onClone ? 'vm.provisioned_on_clone' : 'vm.placed',
    entityType: 'vm',
    entityId: vmId,
    dedicatedHostId: host.id,
    migrationId: p.migrationId,
    details: { name: p.name, spec, ...(p.spec.disks ? { disks: p.spec.disks } : {}) },
    physical: { incarnationId: target.id, serverId: target.server_id },
  });
  // The live incarnations as they are now (the rows were read under lock; only the target's allocation changed).
  const placedOn = target;
  const after = live.map((i) =>
    i.id === placedOn.id
      ? {
          ...i,
          allocated_vcpus: i.allocated_vcpus + spec.vcpus,
          allocated_memory_mib: i.allocated_memory_mib + spec.memoryMiB,
          allocated_disk_gib: i.allocated_disk_gib + spec.diskGiB,
        }
      : i,
  );
  return { vm, host, live: after };
}

/**
 * A VM leaves the running set: deleted (by its tenant or its migration) or lost (its migration found it running
 * nowhere). A running VM gives its resources back to its incarnation; a lost one did so when it was found lost. The
 * caller holds the host and VM rows.
 */
async function endVm(
  c: PoolClient,
  dedicatedHostId: string,
  vm: VmRow,
  end: { state: 'deleted' | 'lost'; actor: string; migrationId?: string; reason?: string },
): Promise<VmRow> {
  const inc = await incarnationRow(c, vm.incarnation_id, true);
  if (vm.state === 'running') await changeAllocation(c, vm.incarnation_id, negate(resOf(vm)));
  await detachVolumesOf(c, vm.id);
  const { rows } = await c.query<VmRow>(
    end.state === 'deleted'
      ? `UPDATE vms SET state = 'deleted', deleted_at = now(), updated_at = now() WHERE id = $1 RETURNING *`
      : `UPDATE vms SET state = 'lost', lost_at = now(), lost_reason = $2, updated_at = now() WHERE id = $1 RETURNING *`,
    end.state === 'deleted' ? [vm.id] : [vm.id, end.reason ?? null],
  );
  await audit(c, {
    actor: end.actor,
    action: end.state === 'deleted' ? 'vm.deleted' : 'vm.lost',
    entityType: 'vm',
    entityId: vm.id,
    dedicatedHostId,
    migrationId: end.migrationId,
    details: end.reason ? { name: vm.name, reason: end.reason } : { name: vm.name },
    physical: { incarnationId: vm.incarnation_id, serverId: inc?.server_id },
  });
  return rows[0]!;
}

/** The VM and its host, both locked (host first, the order every writer takes). */
async function lockVm(c: PoolClient, vmId: string, tenantId?: string): Promise<{ host: HostRow; vm: VmRow }> {
  const first = await vmRow(c, vmId, false);
  if (!visibleTo(first, tenantId)) throw notFound('VM', vmId, 'vmId');
  // A deleted VM outlives its host: the repeated delete still answers with the record.
  const host = await findHost(c, first.dedicated_host_id, { lock: true, includeDeleted: first.state === 'deleted' });
  return { host, vm: (await vmRow(c, vmId, true))! };
}

/** Marks a VM deleted and frees its allocation (a lost VM's was freed when it was found lost). Idempotent. */
export async function deleteVm(c: PoolClient, p: { vmId: string; tenantId?: string; migrationId?: string; actor: string }): Promise<Vm> {
  const { host, vm } = await lockVm(c, p.vmId, p.tenantId);
  if (vm.state === 'deleted') return toVm(vm);
  // A lost VM is gone already: the tenant deleting it only closes the record, on any host state.
  if (vm.state !== 'lost') checkMigrationGate(host, p.migrationId);
  return toVm(await endVm(c, host.id, vm, { state: 'deleted', actor: p.actor, migrationId: p.migrationId }));
}

/** State `lost`, allocation freed, audit `vm.lost` with the reason; only the host's running migration records it. Idempotent. */
export async function markVmLost(c: PoolClient, p: { vmId: string; migrationId: string; reason: string; actor: string }): Promise<Vm> {
  const { host, vm } = await lockVm(c, p.vmId);
  if (vm.state !== 'running') return toVm(vm);
  checkMigrationGate(host, p.migrationId);
  return toVm(await endVm(c, host.id, vm, { state: 'lost', actor: p.actor, migrationId: p.migrationId, reason: p.reason }));
}

export async function getVm(c: PoolClient, id: string, tenantId?: string): Promise<Vm> {
  const vm = await vmRow(c, id, false);
  if (!visibleTo(vm, tenantId)) throw notFound('VM', id, 'vmId');
  return toVm(vm);
}

export async function listVms(c: PoolClient, p: { dedicatedHostId: string; tenantId?: string; includeDeleted: boolean }): Promise<Vm[]> {
  await findHost(c, p.dedicatedHostId, { tenantId: p.tenantId });
  const { rows } = await c.query<VmRow>(`SELECT * FROM vms WHERE dedicated_host_id = $1 AND ($2 OR state <> 'deleted') ORDER BY created_at, id`, [
    p.dedicatedHostId,
    p.includeDeleted,
  ]);
  return rows.map(toVm);
}

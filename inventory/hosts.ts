import type { PoolClient } from 'pg';
import { subtractResources, type Resources } from '../common/resources';
import { audit } from './audit';
import { allocatedOf, capacityFrom, pickFreeServer } from './capacity';
import { forUpdate, iso, isoNN, newId, resOf } from './db';
import { enqueueDeprovision } from './deprovision-outbox';
import { InventoryError, notFound } from './errors';
import { checkHostQuota } from './quotas';
import { lockServers, updateServer } from './servers';
import { visibleTo } from './tenant-visibility';
import { getTenant } from './tenants';
import type { CapacityView, DedicatedHost, DeleteHostResult, DeprovisionAfterState, HostIncarnation, HostView } from './types';

/**
 * Dedicated hosts (table `dedicated_hosts`, the logical host a tenant sees) and their incarnations (table
 * `host_incarnations`, one per server the host has lived on). A host's id, tenant and amounts never change; its current
 * incarnation changes only when a migration finalizes (host-migrations.ts).
 *
 * Locking: an operation on a host first locks the host row (FOR NO KEY UPDATE), which serializes everything that
 * changes one host's placements; then its incarnations (in id order), then servers.
 */

export interface HostRow {
  id: string;
  tenant_id: string;
  name: string;
  zone: string;
  resource_class: string;
  vcpus: number;
  memory_mib: number;
  disk_gib: number;
  state: DedicatedHost['state'];
  current_incarnation_id: string;
  migration_id: string | null;
  created_at: Date;
  updated_at: Date;
  deleted_at: Date | null;
}

export interface IncarnationRow {
  id: string;
  dedicated_host_id: string;
  server_id: string;
  role: HostIncarnation['role'];
  state: HostIncarnation['state'];
  vcpus: number;
  memory_mib: number;
  disk_gib: number;
  allocated_vcpus: number;
  allocated_memory_mib: number;
  allocated_disk_gib: number;
  migration_id: string | null;
  created_at: Date;
  deleted_at: Date | null;
}

export const toHost = (r: HostRow): DedicatedHost => ({
  id: r.id,
  tenantId: r.tenant_id,
  name: r.name,
  zone: r.zone,
  resourceClass: r.resource_class,
  capacity: resOf(r),
  state: r.state,
  currentIncarnationId: r.current_incarnation_id,
  migrationId: r.migration_id,
  createdAt: isoNN(r.created_at),
  updatedAt: isoNN(r.updated_at),
  ...(r.state === 'deleted' ? { deletedAt: iso(r.deleted_at) } : {}),
});

export const toIncarnation = (r: IncarnationRow): HostIncarnation => ({
  id: r.id,
  dedicatedHostId: r.dedicated_host_id,
  serverId: r.server_id,
  role: r.role,
  state: r.state,
  capacity: resOf(r),
  allocated: allocatedOf(r),
  available: subtractResources(resOf(r), allocatedOf(r)),
  migrationId: r.migration_id,
  createdAt: isoNN(r.created_at),
  deletedAt: iso(r.deleted_at),
});

/** The row, deleted or not, or undefined. */
async function hostRow(c: PoolClient, id: string, lock: boolean): Promise<HostRow | undefined> {
  const { rows } = await c.query<HostRow>(`SELECT * FROM dedicated_hosts WHERE id = $1${forUpdate(lock)}`, [id]);
  return rows[0];
}

/**
 * The host row, locked when asked. A deleted host, and another tenant's (tenant-visibility.ts), answer NOT_FOUND
 * exactly like a missing one; `includeDeleted` is for records that outlive their host (a deleted VM's).
 */
export async function findHost(c: PoolClient, id: string, opts: { tenantId?: string; lock?: boolean; includeDeleted?: boolean } = {}): Promise<HostRow> {
  const host = await hostRow(c, id, opts.lock ?? false);
  if (!visibleTo(host, opts.tenantId) || (host.state === 'deleted' && !opts.includeDeleted)) throw notFound('dedicated host', id, 'dedicatedHostId');
  return host;
}

/** The host locked (FOR NO KEY UPDATE): the first lock of every operation that changes the host's placements. */
export const lockHost = (c: PoolClient, id: string, tenantId?: string): Promise<HostRow> => findHost(c, id, { tenantId, lock: true });

export async function liveIncarnations(c: PoolClient, hostId: string, lock: boolean): Promise<IncarnationRow[]> {
  const { rows } = await c.query<IncarnationRow>(
    `SELECT * FROM host_incarnations WHERE dedicated_host_id = $1 AND state = 'live' ORDER BY id${forUpdate(lock)}`,
    [hostId],
  );
  return rows;
}

export async function incarnationRow(c: PoolClient, id: string, lock = false): Promise<IncarnationRow | undefined> {
  const { rows } = await c.query<IncarnationRow>(`SELECT * FROM host_incarnations WHERE id = $1${forUpdate(lock)}`, [id]);
  return rows[0];
}

/** A new live incarnation with the host's amounts (claim 4); its server must be allocated by commit. */
export async function insertIncarnation(
  c: PoolClient,
  p: { id: string; hostId: string; serverId: string; role: 'primary' | 'clone'; amounts: Resources; migrationId: string | null },
): Promise<IncarnationRow> {
  const { rows } = await c.query<IncarnationRow>(
    `INSERT INTO host_incarnations (id, dedicated_host_id, server_id, role, vcpus, memory_mib, disk_gib, migration_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *`,
    [p.id, p.hostId, p.serverId, p.role, p.amounts.vcpus, p.amounts.memoryMiB, p.amounts.diskGiB, p.migrationId],
  );
  return rows[0]!;
}

/** Marks an incarnation deleted; it must hold no running VM (the database checks at commit). */
export async function deleteIncarnation(c: PoolClient, id: string): Promise<IncarnationRow> {
  const { rows } = await c.query<IncarnationRow>(`UPDATE host_incarnations SET state = 'deleted', deleted_at = now() WHERE id = $1 RETURNING *`, [id]);
  return rows[0]!;
}

/** Only the host's own migration may change its placements while it migrates; nobody else's migration ever may. */
export function checkMigrationGate(host: HostRow, migrationId: string | undefined): void {
  if (host.migration_id === (migrationId ?? null)) return;
  if (host.migration_id && !migrationId)
    throw new InventoryError(
      'WRONG_STATE',
      `host ${host.id} is migrating (migration ${host.migration_id}): VMs are created and deleted through the migration`,
      'dedicatedHostId',
      { migrationId: host.migration_id },
    );
  if (!host.migration_id) throw new InventoryError('WRONG_STATE', `migration ${migrationId} is not running on host ${host.id}`, 'migrationId');
  throw new InventoryError('CONFLICT', `host ${host.id} is migrating under migration ${host.migration_id}, not ${migrationId}`, 'migrationId');
}

/** Capacity per incarnation and what can still be added to the host (see CapacityView), from one snapshot. */
export async function capacityView(c: PoolClient, id: string): Promise<CapacityView> {
  // One snapshot for both reads, so the two incarnations are seen consistently.
  await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  try {
    const host = await findHost(c, id);
    return capacityFrom(host, await liveIncarnations(c, host.id, false));
  } finally {
    await c.query('COMMIT');
  }
}

/* ---------------------------------------------------------------- the host as the API shows it */

const HOST_VIEW_SQL = `
  SELECT h.*, ci.server_id AS view_server_id,
         coalesce(v.vcpus, 0)::int AS used_vcpus, coalesce(v.memory_mib, 0)::int AS used_memory_mib,
         coalesce(v.disk_gib, 0)::int AS used_disk_gib, coalesce(v.n, 0)::int AS vm_count
    FROM dedicated_hosts h
    JOIN host_incarnations ci ON ci.id = h.current_incarnation_id
    LEFT JOIN LATERAL (
      SELECT sum(vcpus) AS vcpus, sum(memory_mib) AS memory_mib, sum(disk_gib) AS disk_gib, count(*) AS n
        FROM vms WHERE dedicated_host_id = h.id AND state = 'running') v ON true
   WHERE h.state <> 'deleted'`;

type HostViewRow = HostRow & { view_server_id: string; used_vcpus: number; used_memory_mib: number; used_disk_gib: number; vm_count: number };

function toHostView(r: HostViewRow): HostView {
  const allocated = { vcpus: r.used_vcpus, memoryMiB: r.used_memory_mib, diskGiB: r.used_disk_gib };
  return {
    ...toHost(r),
    allocated,
    // Equal to CapacityView.aggregateAvailable: running VMs are exactly what the incarnations have allocated.
    available: subtractResources(resOf(r), allocated),
    vmCount: r.vm_count,
    serverId: r.view_server_id,
  };
}

export async function getHost(c: PoolClient, id: string, tenantId?: string): Promise<HostView> {
  const { rows } = await c.query<HostViewRow>(`${HOST_VIEW_SQL} AND h.id = $1`, [id]);
  if (!visibleTo(rows[0], tenantId)) throw notFound('dedicated host', id, 'dedicatedHostId');
  return toHostView(rows[0]);
}

export async function listHosts(c: PoolClient, tenantId: string | undefined): Promise<HostView[]> {
  const { rows } = await c.query<HostViewRow>(`${HOST_VIEW_SQL} AND ($1::text IS NULL OR h.tenant_id = $1) ORDER BY h.created_at, h.id`, [tenantId ?? null]);
  return rows.map(toHostView);
}

export async function getIncarnation(c: PoolClient, id: string): Promise<HostIncarnation> {
  const inc = await incarnationRow(c, id);
  if (!inc) throw notFound('host incarnation', id, 'incarnationId');
  return toIncarnation(inc);
}

export async function listIncarnations(c: PoolClient, p: { dedicatedHostId: string; includeDeleted: boolean }): Promise<HostIncarnation[]> {
  const { rows } = await c.query<IncarnationRow>(
    `SELECT * FROM host_incarnations WHERE dedicated_host_id = $1 AND ($2 OR state = 'live') ORDER BY created_at, id`,
    [p.dedicatedHostId, p.includeDeleted],
  );
  return rows.map(toIncarnation);
}

/* ---------------------------------------------------------------- creating and deleting hosts */

/** A logical host on a free server of the zone and class, with the class's amounts. Idempotent if `dedicatedHostId` is given. */
export async function createDedicatedHost(
  c: PoolClient,
  p: { tenantId: string; name: string; zone: string; resourceClass: string; dedicatedHostId?: string; actor: string },
): Promise<HostView> {
  await getTenant(c, p.tenantId);
  if (p.dedicatedHostId) {
    // Serialize concurrent retries of one request on the id (the host row does not exist yet to lock).
    await c.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`dedicated_host:${p.dedicatedHostId}`]);
    const prev = await hostRow(c, p.dedicatedHostId, false);
    if (prev) {
      if (prev.state !== 'deleted' && prev.tenant_id === p.tenantId && prev.name === p.name && prev.zone === p.zone && prev.resource_class === p.resourceClass)
        return getHost(c, prev.id);
      throw new InventoryError('CONFLICT', `dedicatedHostId: ${p.dedicatedHostId} already names another host`, 'dedicatedHostId');
    }
  }
  // The tenant's quota, under its row lock: concurrent creates of one tenant queue here, so only one takes the last slot.
  await checkHostQuota(c, p);
  const zone = await c.query('SELECT 1 FROM zones WHERE id = $1', [p.zone]);
  // A well-formed name the fleet does not have is a missing object (404), not bad input: the API document cannot know the fleet.
  if (!zone.rowCount) throw new InventoryError('NOT_FOUND', `zone: unknown zone ${p.zone}`, 'zone');
  const { rows: classes } = await c.query<{ vcpus: number; memory_mib: number; disk_gib: number }>(
    'SELECT vcpus, memory_mib, disk_gib FROM resource_classes WHERE id = $1',
    [p.resourceClass],
  );
  if (!classes[0]) throw new InventoryError('NOT_FOUND', `resourceClass: unknown resource class ${p.resourceClass}`, 'resourceClass');
  const amounts = resOf(classes[0]);
  const server = await pickFreeServer(c, { zone: p.zone, resourceClass: p.resourceClass, need: amounts });
  if (!server)
    throw new InventoryError('NO_MATCHING_SERVER', `no available server of class ${p.resourceClass} in zone ${p.zone}`, undefined, {
      zone: p.zone,
      resourceClass: p.resourceClass,
    });
  const hostId = p.dedicatedHostId ?? newId('dh');
  const incId = newId('inc');
  await updateServer(c, server.id, { state: 'allocated' });
  await c.query(
    `INSERT INTO dedicated_hosts (id, tenant_id, name, zone, resource_class, vcpus, memory_mib, disk_gib, current_incarnation_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
    [hostId, p.tenantId, p.name, p.zone, p.resourceClass, amounts.vcpus, amounts.memoryMiB, amounts.diskGiB, incId],
  );
  await insertIncarnation(c, { id: incId, hostId, serverId: server.id, role: 'primary', amounts, migrationId: null });
  const base = { actor: p.actor, dedicatedHostId: hostId };
  await audit(c, {
    ...base,
    action: 'host.created',
    entityType: 'dedicated_host',
    entityId: hostId,
    details: { name: p.name, zone: p.zone, resourceClass: p.resourceClass, capacity: amounts },
    physical: { serverId: server.id, incarnationId: incId },
  });
  await audit(c, {
    ...base,
    action: 'incarnation.created',
    entityType: 'host_incarnation',
    entityId: incId,
    physical: { serverId: server.id, role: 'primary' },
  });
  await audit(c, { ...base, action: 'server.allocated', entityType: 'physical_server', entityId: server.id, physical: { incarnationId: incId } });
  return getHost(c, hostId);
}

/**
 * Deletes a host that has no VMs (running or lost: a lost VM's record is the tenant's to close first) and is not
 * migrating: the host and its current incarnation are marked deleted, and its server goes to the scheduler through
 * the de-provisioning outbox, as after a finalized migration (claim 5). Refusals: NOT_FOUND (no such host, another
 * tenant's, or already deleted: so a repeated delete changes nothing), HOST_MIGRATING, HOST_HAS_VMS.
 */
export async function deleteDedicatedHost(
  c: PoolClient,
  p: { dedicatedHostId: string; tenantId?: string; afterState: DeprovisionAfterState; actor: string },
): Promise<DeleteHostResult> {
  const host = await lockHost(c, p.dedicatedHostId, p.tenantId);
  if (host.migration_id)
    throw new InventoryError('HOST_MIGRATING', `dedicatedHostId: host ${host.id} is migrating; it can be deleted once the migration ends`, 'dedicatedHostId', {
      migrationId: host.migration_id,
    });
  const { rows: vms } = await c.query<{ id: string }>(`SELECT id FROM vms WHERE dedicated_host_id = $1 AND state <> 'deleted' ORDER BY id`, [host.id]);
  if (vms.length > 0)
    throw new InventoryError(
      'HOST_HAS_VMS',
      `dedicatedHostId: host ${host.id} still has ${vms.length} VM(s) (${vms
        .slice(0, 5)
        .map((v) => v.id)
        .join(', ')}${vms.length > 5 ? ', …' : ''}); delete them first`,
      'dedicatedHostId',
      { vmIds: vms.map((v) => v.id) },
    );
  const inc = (await liveIncarnations(c, host.id, true)).find((i) => i.id === host.current_incarnation_id);
  if (!inc) throw new Error(`inventory invariant broken: host ${host.id} has no live current incarnation`);
  await lockServers(c, [inc.server_id]);
  const deleted = await deleteIncarnation(c, inc.id);
  const { rows } = await c.query<HostRow>(`UPDATE dedicated_hosts SET state = 'deleted', deleted_at = now(), updated_at = now() WHERE id = $1 RETURNING *`, [
    host.id,
  ]);
  const base = { actor: p.actor, dedicatedHostId: host.id };
  await audit(c, {
    ...base,
    action: 'host.deleted',
    entityType: 'dedicated_host',
    entityId: host.id,
    details: { name: host.name },
    physical: { incarnationId: inc.id, serverId: inc.server_id },
  });
  await audit(c, { ...base, action: 'incarnation.deleted', entityType: 'host_incarnation', entityId: inc.id, physical: { serverId: inc.server_id } });
  const deprovisionJob = await enqueueDeprovision(c, { ...base, incarnationId: inc.id, serverId: inc.server_id, afterState: p.afterState, migrationId: null });
  return { host: toHost(rows[0]!), deletedIncarnation: toIncarnation(deleted), deprovisionJob };
}

import type { PoolClient } from 'pg';
import { targetMismatch } from '../common/target-match';
import { audit } from './audit';
import { pickFreeServer } from './capacity';
import { iso, isoNN, newId, resOf } from './db';
import { enqueueDeprovision, jobOfIncarnation } from './deprovision-outbox';
import { InventoryError, notFound } from './errors';
import { deleteIncarnation, findHost, incarnationRow, insertIncarnation, liveIncarnations, lockHost, toHost, toIncarnation, type HostRow } from './hosts';
import { lockServers, serverRow, toServer, updateServer, type ServerRow } from './servers';
import type { DeprovisionAfterState, FinalizeResult, HostIncarnation, HostMigrationRecord, MigrationSnapshot, PhysicalServer, RollbackResult } from './types';
import { runningVmIdsOn, runningVms, toVm } from './vms';

/**
 * The inventory's record of each host migration (table `host_migrations`): which placements it holds, so that every
 * step the workflow's activities take is idempotent by migration id. The steps in order: begin (host → migrating),
 * reserve a target server (claim 2), create the clone incarnation (claim 4), then either finalize (the swap, claims
 * 3 and 5) or roll back. The VM moves in between are in migration-placements.ts.
 */

export interface MigrationRow {
  id: string;
  dedicated_host_id: string;
  state: HostMigrationRecord['state'];
  source_incarnation_id: string;
  source_server_id: string;
  target_server_id: string | null;
  clone_incarnation_id: string | null;
  after_state: HostMigrationRecord['afterState'];
  started_at: Date;
  ended_at: Date | null;
}

export const toMigration = (r: MigrationRow): HostMigrationRecord => ({
  id: r.id,
  dedicatedHostId: r.dedicated_host_id,
  state: r.state,
  sourceIncarnationId: r.source_incarnation_id,
  sourceServerId: r.source_server_id,
  targetServerId: r.target_server_id,
  cloneIncarnationId: r.clone_incarnation_id,
  afterState: r.after_state,
  startedAt: isoNN(r.started_at),
  endedAt: iso(r.ended_at),
});

export async function migrationRow(c: PoolClient, id: string): Promise<MigrationRow | undefined> {
  const { rows } = await c.query<MigrationRow>('SELECT * FROM host_migrations WHERE id = $1', [id]);
  return rows[0];
}

/** This host's migration by id (any state), or NOT_FOUND naming migrationId. */
async function migrationOf(c: PoolClient, host: HostRow, migrationId: string): Promise<MigrationRow> {
  const m = await migrationRow(c, migrationId);
  if (!m || m.dedicated_host_id !== host.id)
    throw new InventoryError('NOT_FOUND', `migrationId: no migration ${migrationId} of host ${host.id}`, 'migrationId');
  return m;
}

/** The migration, which must be the one running on this (locked) host. */
export async function requireRunningMigration(c: PoolClient, host: HostRow, migrationId: string): Promise<MigrationRow> {
  const m = await migrationOf(c, host, migrationId);
  if (m.state !== 'running' || host.migration_id !== migrationId)
    throw new InventoryError('WRONG_STATE', `migration ${migrationId} is ${m.state.replace('_', ' ')}, not running`, 'migrationId');
  return m;
}

const listOf = (ids: string[]) => `${ids.slice(0, 5).join(', ')}${ids.length > 5 ? ', …' : ''}`;

export async function getMigration(c: PoolClient, id: string): Promise<HostMigrationRecord> {
  const m = await migrationRow(c, id);
  if (!m) throw notFound('migration', id, 'migrationId');
  return toMigration(m);
}

async function snapshot(c: PoolClient, host: HostRow, m: MigrationRow): Promise<MigrationSnapshot> {
  const inc = await incarnationRow(c, m.source_incarnation_id);
  const srv = await serverRow(c, m.source_server_id, false);
  return {
    migration: toMigration(m),
    host: toHost(host),
    source: { incarnation: toIncarnation(inc!), server: toServer(srv!) },
    vms: (await runningVms(c, host.id)).map(toVm),
  };
}

/** Host active → migrating under migrationId; returns what the migration starts from. Idempotent. */
export async function beginMigration(c: PoolClient, p: { dedicatedHostId: string; migrationId: string; actor: string }): Promise<MigrationSnapshot> {
  const host = await lockHost(c, p.dedicatedHostId);
  const prev = await migrationRow(c, p.migrationId);
  if (prev) {
    if (prev.dedicated_host_id !== host.id) throw new InventoryError('CONFLICT', `migrationId: ${p.migrationId} is a migration of another host`, 'migrationId');
    if (prev.state === 'running') return snapshot(c, host, prev);
    throw new InventoryError(
      'CONFLICT',
      `migrationId: migration ${p.migrationId} already ended (${prev.state.replace('_', ' ')}); a new migration needs a new id`,
      'migrationId',
    );
  }
  if (host.migration_id)
    throw new InventoryError('CONFLICT', `host ${host.id} is already migrating (migration ${host.migration_id})`, 'dedicatedHostId', {
      migrationId: host.migration_id,
    });
  const source = (await incarnationRow(c, host.current_incarnation_id, true))!;
  const { rows } = await c.query<MigrationRow>(
    `INSERT INTO host_migrations (id, dedicated_host_id, source_incarnation_id, source_server_id) VALUES ($1, $2, $3, $4) RETURNING *`,
    [p.migrationId, host.id, source.id, source.server_id],
  );
  const hosts = await setHostMigration(c, host.id, { migrationId: p.migrationId });
  await audit(c, {
    actor: p.actor,
    action: 'host.migration_started',
    entityType: 'dedicated_host',
    entityId: host.id,
    dedicatedHostId: host.id,
    migrationId: p.migrationId,
    physical: { sourceIncarnationId: source.id, sourceServerId: source.server_id },
  });
  return snapshot(c, hosts, rows[0]!);
}

/** Host → migrating under a migration, or back to active (`migrationId: null`), optionally onto a new current incarnation. */
async function setHostMigration(c: PoolClient, hostId: string, p: { migrationId: string | null; currentIncarnationId?: string }): Promise<HostRow> {
  const { rows } = await c.query<HostRow>(
    `UPDATE dedicated_hosts SET state = CASE WHEN $2::text IS NULL THEN 'active' ELSE 'migrating' END::host_state, migration_id = $2,
            current_incarnation_id = coalesce($3, current_incarnation_id), updated_at = now()
      WHERE id = $1 RETURNING *`,
    [hostId, p.migrationId, p.currentIncarnationId ?? null],
  );
  return rows[0]!;
}

/** Reserves a target server matching the host (claim 2): named, or picked. Idempotent. */
export async function reserveTargetServer(
  c: PoolClient,
  p: { dedicatedHostId: string; migrationId: string; targetServerId?: string; actor: string },
): Promise<PhysicalServer> {
  const host = await lockHost(c, p.dedicatedHostId);
  const m = await requireRunningMigration(c, host, p.migrationId);
  if (m.target_server_id) {
    if (p.targetServerId && p.targetServerId !== m.target_server_id)
      throw new InventoryError('CONFLICT', `targetServerId: migration ${m.id} already holds server ${m.target_server_id}`, 'targetServerId');
    return toServer((await serverRow(c, m.target_server_id, false))!);
  }
  const need = resOf(host);
  let target: ServerRow | undefined;
  if (p.targetServerId) {
    // A named target: wait for its lock (no SKIP LOCKED) so the answer about it is definitive.
    target = await serverRow(c, p.targetServerId, true);
    if (!target) throw notFound('physical server', p.targetServerId, 'targetServerId');
    const why =
      targetMismatch(
        { zone: host.zone, resourceClass: host.resource_class, capacity: need },
        { id: target.id, zone: target.zone, resourceClass: target.resource_class, capacity: resOf(target) },
        m.source_server_id,
      ) ?? (target.state !== 'available' ? `is not available (it is ${target.state})` : null);
    if (why) throw new InventoryError('INVALID_INPUT', `targetServerId: server ${target.id} ${why}`, 'targetServerId');
  } else {
    target = await pickFreeServer(c, { zone: host.zone, resourceClass: host.resource_class, need, notId: m.source_server_id });
    if (!target)
      throw new InventoryError(
        'NO_MATCHING_SERVER',
        `no available server of class ${host.resource_class} in zone ${host.zone} other than the source`,
        undefined,
        { zone: host.zone, resourceClass: host.resource_class },
      );
  }
  const reserved = await updateServer(c, target.id, { state: 'reserved', reservedByMigration: m.id });
  await c.query('UPDATE host_migrations SET target_server_id = $2 WHERE id = $1', [m.id, target.id]);
  await audit(c, {
    actor: p.actor,
    action: 'server.reserved',
    entityType: 'physical_server',
    entityId: target.id,
    dedicatedHostId: host.id,
    migrationId: m.id,
    physical: { named: Boolean(p.targetServerId) },
  });
  return toServer(reserved);
}

/** The clone incarnation on the reserved server, with the host's amounts (claim 4). Idempotent. */
export async function createCloneIncarnation(
  c: PoolClient,
  p: { dedicatedHostId: string; migrationId: string; serverId: string; incarnationId?: string; actor: string },
): Promise<HostIncarnation> {
  const host = await lockHost(c, p.dedicatedHostId);
  const m = await requireRunningMigration(c, host, p.migrationId);
  if (m.clone_incarnation_id) {
    const inc = (await incarnationRow(c, m.clone_incarnation_id))!;
    if (p.incarnationId && p.incarnationId !== inc.id)
      throw new InventoryError('CONFLICT', `incarnationId: migration ${m.id} already has clone ${inc.id}`, 'incarnationId');
    if (p.serverId !== inc.server_id)
      throw new InventoryError('CONFLICT', `serverId: migration ${m.id} already has its clone on server ${inc.server_id}`, 'serverId');
    return toIncarnation(inc);
  }
  if (!m.target_server_id) throw new InventoryError('WRONG_STATE', `serverId: migration ${m.id} has not reserved a target server yet`, 'serverId');
  if (m.target_server_id !== p.serverId)
    throw new InventoryError('INVALID_INPUT', `serverId: migration ${m.id} reserved server ${m.target_server_id}, not ${p.serverId}`, 'serverId');
  const server = (await serverRow(c, p.serverId, true))!;
  if (server.state !== 'reserved' || server.reserved_by_migration !== m.id)
    throw new Error(`inventory invariant broken: server ${server.id} is ${server.state} but migration ${m.id} holds it`);
  const incId = p.incarnationId ?? newId('inc');
  if (await incarnationRow(c, incId)) throw new InventoryError('CONFLICT', `incarnationId: ${incId} already names another incarnation`, 'incarnationId');
  await updateServer(c, server.id, { state: 'allocated' });
  const clone = await insertIncarnation(c, { id: incId, hostId: host.id, serverId: server.id, role: 'clone', amounts: resOf(host), migrationId: m.id });
  await c.query('UPDATE host_migrations SET clone_incarnation_id = $2 WHERE id = $1', [m.id, incId]);
  const base = { actor: p.actor, dedicatedHostId: host.id, migrationId: m.id };
  await audit(c, {
    ...base,
    action: 'incarnation.created',
    entityType: 'host_incarnation',
    entityId: incId,
    physical: { serverId: server.id, role: 'clone', capacity: resOf(host) },
  });
  await audit(c, { ...base, action: 'server.allocated', entityType: 'physical_server', entityId: server.id, physical: { incarnationId: incId } });
  return toIncarnation(clone);
}

/** The migration's end: host state and the record's, in one statement each. */
async function endMigration(c: PoolClient, id: string, state: 'finalized' | 'rolled_back', afterState: DeprovisionAfterState | null): Promise<MigrationRow> {
  const { rows } = await c.query<MigrationRow>(
    `UPDATE host_migrations SET state = $2, ended_at = now(), after_state = coalesce($3, after_state) WHERE id = $1 RETURNING *`,
    [id, state, afterState],
  );
  return rows[0]!;
}

async function finalizeResult(c: PoolClient, m: MigrationRow): Promise<FinalizeResult> {
  const host = await findHost(c, m.dedicated_host_id, { includeDeleted: true });
  return {
    migration: toMigration(m),
    host: toHost(host),
    currentIncarnation: toIncarnation((await incarnationRow(c, m.clone_incarnation_id!))!),
    deletedIncarnation: toIncarnation((await incarnationRow(c, m.source_incarnation_id))!),
    deprovisionJob: await jobOfIncarnation(c, m.source_incarnation_id),
  };
}

/** Swaps the host to its clone and deletes the old incarnation with its outbox row, atomically (claims 3, 5). Idempotent. */
export async function finalizeMigration(
  c: PoolClient,
  p: { dedicatedHostId: string; migrationId: string; afterState: DeprovisionAfterState; actor: string },
): Promise<FinalizeResult> {
  const host = await lockHost(c, p.dedicatedHostId);
  const m = await migrationOf(c, host, p.migrationId);
  if (m.state === 'finalized') return finalizeResult(c, m);
  if (m.state === 'rolled_back') throw new InventoryError('WRONG_STATE', `migration ${m.id} was rolled back; it cannot be finalized`, 'migrationId');
  if (!m.clone_incarnation_id) throw new InventoryError('WRONG_STATE', `migration ${m.id} has no clone incarnation to finalize onto`, 'migrationId');
  const live = await liveIncarnations(c, host.id, true);
  const old = live.find((i) => i.id === m.source_incarnation_id)!;
  const clone = live.find((i) => i.id === m.clone_incarnation_id)!;
  const left = await runningVmIdsOn(c, old.id);
  if (left.length > 0)
    throw new InventoryError('WRONG_STATE', `${left.length} VM(s) still run on the old incarnation (${listOf(left)}); move or delete them first`, undefined, {
      vmIds: left,
    });
  await lockServers(c, [old.server_id, clone.server_id]);
  // The swap (claim 3): the clone becomes the host's primary under the same host id; the old one is deleted.
  await deleteIncarnation(c, old.id);
  await c.query(`UPDATE host_incarnations SET role = 'primary' WHERE id = $1`, [clone.id]);
  await setHostMigration(c, host.id, { migrationId: null, currentIncarnationId: clone.id });
  await updateServer(c, clone.server_id, { reservedByMigration: null });
  const ended = await endMigration(c, m.id, 'finalized', p.afterState);
  const base = { actor: p.actor, dedicatedHostId: host.id, migrationId: m.id };
  await audit(c, {
    ...base,
    action: 'host.migration_finalized',
    entityType: 'dedicated_host',
    entityId: host.id,
    physical: { fromIncarnationId: old.id, fromServerId: old.server_id, toIncarnationId: clone.id, toServerId: clone.server_id },
  });
  await audit(c, { ...base, action: 'incarnation.promoted', entityType: 'host_incarnation', entityId: clone.id, physical: { serverId: clone.server_id } });
  await audit(c, { ...base, action: 'incarnation.deleted', entityType: 'host_incarnation', entityId: old.id, physical: { serverId: old.server_id } });
  // Deleting the old host object prompts the scheduler (claim 5): the outbox row, NOTIFY at commit.
  await enqueueDeprovision(c, { ...base, incarnationId: old.id, serverId: old.server_id, afterState: p.afterState });
  return finalizeResult(c, ended);
}

async function rollbackResult(c: PoolClient, m: MigrationRow): Promise<RollbackResult> {
  const host = await findHost(c, m.dedicated_host_id, { includeDeleted: true });
  const clone = m.clone_incarnation_id ? await incarnationRow(c, m.clone_incarnation_id) : undefined;
  const srv = m.target_server_id ? await serverRow(c, m.target_server_id, false) : undefined;
  return {
    migration: toMigration(m),
    host: toHost(host),
    deletedClone: clone ? toIncarnation(clone) : null,
    releasedServer: srv ? toServer(srv) : null,
  };
}

/** Deletes the clone, releases the target server, host back to active. Idempotent. */
export async function rollbackMigration(c: PoolClient, p: { dedicatedHostId: string; migrationId: string; actor: string }): Promise<RollbackResult> {
  const host = await lockHost(c, p.dedicatedHostId);
  const m = await migrationOf(c, host, p.migrationId);
  if (m.state === 'rolled_back') return rollbackResult(c, m);
  if (m.state === 'finalized') throw new InventoryError('WRONG_STATE', `migration ${m.id} is finalized; the host already lives on its clone`, 'migrationId');
  const base = { actor: p.actor, dedicatedHostId: host.id, migrationId: m.id };
  const live = await liveIncarnations(c, host.id, true);
  const clone = m.clone_incarnation_id ? live.find((i) => i.id === m.clone_incarnation_id) : undefined;
  if (clone) {
    const left = await runningVmIdsOn(c, clone.id);
    if (left.length > 0)
      throw new InventoryError('WRONG_STATE', `${left.length} VM(s) still run on the clone (${listOf(left)}); move them back or delete them first`, undefined, {
        vmIds: left,
      });
    await deleteIncarnation(c, clone.id);
    await audit(c, {
      ...base,
      action: 'incarnation.deleted',
      entityType: 'host_incarnation',
      entityId: clone.id,
      physical: { serverId: clone.server_id, role: 'clone' },
    });
  }
  if (m.target_server_id) {
    const srv = (await serverRow(c, m.target_server_id, true))!;
    // Whether still reserved or already allocated to the clone: only if this migration still holds it.
    if (srv.reserved_by_migration === m.id) {
      await updateServer(c, srv.id, { state: 'available', reservedByMigration: null });
      await audit(c, { ...base, action: 'server.released', entityType: 'physical_server', entityId: srv.id, physical: { from: srv.state } });
    }
  }
  await setHostMigration(c, host.id, { migrationId: null });
  const ended = await endMigration(c, m.id, 'rolled_back', null);
  await audit(c, { ...base, action: 'host.migration_rolled_back', entityType: 'dedicated_host', entityId: host.id });
  return rollbackResult(c, ended);
}

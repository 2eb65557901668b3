import type { PoolClient } from 'pg';
import { audit } from './audit';
import { forUpdate, isoNN, resOf } from './db';
import { InventoryError, notFound } from './errors';
import { IDLE_SERVER_STATES, type PhysicalServer, type ServerState } from './types';

/**
 * Physical servers (table `physical_servers`). A server changes state only through hosts (allocated), migrations
 * (reserved, allocated, deprovisioning), the scheduler (after-state, failed) and, while idle, an operator.
 */

export interface ServerRow {
  id: string;
  zone: string;
  resource_class: string;
  vcpus: number;
  memory_mib: number;
  disk_gib: number;
  nic_bandwidth_bps: number;
  agent_url: string;
  backend: 'sim' | 'qemu';
  state: ServerState;
  reserved_by_migration: string | null;
  created_at: Date;
  updated_at: Date;
}

export const toServer = (r: ServerRow): PhysicalServer => ({
  id: r.id,
  zone: r.zone,
  resourceClass: r.resource_class,
  capacity: resOf(r),
  nicBandwidthBps: r.nic_bandwidth_bps,
  agentUrl: r.agent_url,
  backend: r.backend,
  state: r.state,
  reservedByMigration: r.reserved_by_migration,
  createdAt: isoNN(r.created_at),
  updatedAt: isoNN(r.updated_at),
});

export const isIdle = (state: ServerState): boolean => (IDLE_SERVER_STATES as readonly ServerState[]).includes(state);

export async function serverRow(c: PoolClient, id: string, lock: boolean): Promise<ServerRow | undefined> {
  const { rows } = await c.query<ServerRow>(`SELECT * FROM physical_servers WHERE id = $1${forUpdate(lock)}`, [id]);
  return rows[0];
}

/** Locks servers in id order, the order every writer locks several servers in (the scheduler and migrations do). */
export async function lockServers(c: PoolClient, ids: string[]): Promise<void> {
  await c.query('SELECT id FROM physical_servers WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE', [ids]);
}

/**
 * Sets a server's state and/or the migration holding it (`reservedByMigration: null` releases it). The caller holds
 * the server's row lock and has checked the transition; the database checks the rest at commit.
 */
export async function updateServer(c: PoolClient, id: string, change: { state?: ServerState; reservedByMigration?: string | null }): Promise<ServerRow> {
  const { rows } = await c.query<ServerRow>(
    `UPDATE physical_servers SET state = coalesce($2::server_state, state),
            reserved_by_migration = CASE WHEN $3 THEN $4 ELSE reserved_by_migration END, updated_at = now()
      WHERE id = $1 RETURNING *`,
    [id, change.state ?? null, change.reservedByMigration !== undefined, change.reservedByMigration ?? null],
  );
  return rows[0]!;
}

export async function getServer(c: PoolClient, id: string): Promise<PhysicalServer> {
  const srv = await serverRow(c, id, false);
  if (!srv) throw notFound('physical server', id, 'serverId');
  return toServer(srv);
}

export async function listServers(c: PoolClient, p: { zone?: string; resourceClass?: string; state?: ServerState }): Promise<PhysicalServer[]> {
  const { rows } = await c.query<ServerRow>(
    `SELECT * FROM physical_servers
      WHERE ($1::text IS NULL OR zone = $1) AND ($2::text IS NULL OR resource_class = $2)
        AND ($3::server_state IS NULL OR state = $3)
      ORDER BY id`,
    [p.zone ?? null, p.resourceClass ?? null, p.state ?? null],
  );
  return rows.map(toServer);
}

/** Operator: takes an idle server out of (or back into) the pool. */
export async function setServerState(
  c: PoolClient,
  p: { serverId: string; state: (typeof IDLE_SERVER_STATES)[number]; actor: string },
): Promise<PhysicalServer> {
  const srv = await serverRow(c, p.serverId, true);
  if (!srv) throw notFound('physical server', p.serverId, 'serverId');
  if (srv.state === p.state) return toServer(srv);
  // Servers in use change state only through hosts, migrations and the scheduler.
  if (!isIdle(srv.state))
    throw new InventoryError('WRONG_STATE', `serverId: server ${srv.id} is ${srv.state}; only idle servers change state by hand`, 'serverId');
  const updated = await updateServer(c, srv.id, { state: p.state });
  await audit(c, { actor: p.actor, action: 'server.state_set', entityType: 'physical_server', entityId: srv.id, physical: { from: srv.state, to: p.state } });
  return toServer(updated);
}

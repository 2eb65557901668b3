import type { Pool, PoolClient } from 'pg';
import type { Resources } from '../common/resources';
import type {
  AuditEntityType,
  AuditEvent,
  DedicatedHost,
  DeprovisionJob,
  HostIncarnation,
  HostMigrationRecord,
  PhysicalServer,
  Tenant,
  Vm,
} from './types';

/** Postgres errors worth one more try of the whole (idempotent) transaction. */
const RETRYABLE = new Set(['40P01' /* deadlock_detected */, '40001' /* serialization_failure */]);

/**
 * Runs `fn` in one transaction. A connection that broke mid-way (terminated, network) is destroyed, never returned to
 * the pool. Deadlocks are retried: every operation is idempotent, so running it again is safe.
 */
export async function withTransaction<T>(pool: Pool, fn: (c: PoolClient) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect();
    let broken: Error | undefined;
    const onError = (err: Error) => {
      broken = err;
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      try {
        await client.query('ROLLBACK');
      } catch (rollbackErr) {
        broken = rollbackErr as Error;
      }
      const code = (err as { code?: string }).code;
      if (!broken && code && RETRYABLE.has(code) && attempt < 3) continue;
      throw err;
    } finally {
      client.off('error', onError);
      client.release(broken);
    }
  }
}

export function pgErrorCode(err: unknown): string | undefined {
  return (err as { code?: string } | null)?.code;
}

export function pgConstraint(err: unknown): string | undefined {
  return (err as { constraint?: string } | null)?.constraint;
}

const iso = (d: Date | null): string | null => (d ? d.toISOString() : null);
const isoNN = (d: Date): string => d.toISOString();

/* Row shapes as pg returns them (integer → number, timestamptz → Date, jsonb → object, bigint → string). */

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
  state: PhysicalServer['state'];
  reserved_by_migration: string | null;
  created_at: Date;
  updated_at: Date;
}

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

export interface VmRow {
  id: string;
  tenant_id: string;
  dedicated_host_id: string;
  incarnation_id: string;
  name: string;
  vcpus: number;
  memory_mib: number;
  disk_gib: number;
  workload: Record<string, unknown>;
  state: Vm['state'];
  created_by_migration: string | null;
  created_at: Date;
  updated_at: Date;
  deleted_at: Date | null;
  lost_at: Date | null;
  lost_reason: string | null;
}

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

export interface OutboxRow {
  id: string;
  incarnation_id: string;
  server_id: string;
  agent_url: string;
  migration_id: string | null;
  after_state: DeprovisionJob['afterState'];
  state: DeprovisionJob['state'];
  claimed_by: string | null;
  claimed_at: Date | null;
  attempts: number;
  last_error: string | null;
  created_at: Date;
  done_at: Date | null;
}

export interface TenantRow {
  id: string;
  name: string;
  created_at: Date;
}

export interface EventRow {
  id: string;
  at: Date;
  actor: string;
  action: string;
  entity_type: AuditEntityType;
  entity_id: string;
  dedicated_host_id: string | null;
  migration_id: string | null;
  details: Record<string, unknown>;
  physical: Record<string, unknown>;
}

const res = (vcpus: number, memoryMiB: number, diskGiB: number): Resources => ({ vcpus, memoryMiB, diskGiB });

export const toServer = (r: ServerRow): PhysicalServer => ({
  id: r.id,
  zone: r.zone,
  resourceClass: r.resource_class,
  capacity: res(r.vcpus, r.memory_mib, r.disk_gib),
  nicBandwidthBps: r.nic_bandwidth_bps,
  agentUrl: r.agent_url,
  backend: r.backend,
  state: r.state,
  reservedByMigration: r.reserved_by_migration,
  createdAt: isoNN(r.created_at),
  updatedAt: isoNN(r.updated_at),
});

export const toHost = (r: HostRow): DedicatedHost => ({
  id: r.id,
  tenantId: r.tenant_id,
  name: r.name,
  zone: r.zone,
  resourceClass: r.resource_class,
  capacity: res(r.vcpus, r.memory_mib, r.disk_gib),
  state: r.state,
  currentIncarnationId: r.current_incarnation_id,
  migrationId: r.migration_id,
  createdAt: isoNN(r.created_at),
  updatedAt: isoNN(r.updated_at),
});

export const toIncarnation = (r: IncarnationRow): HostIncarnation => ({
  id: r.id,
  dedicatedHostId: r.dedicated_host_id,
  serverId: r.server_id,
  role: r.role,
  state: r.state,
  capacity: res(r.vcpus, r.memory_mib, r.disk_gib),
  allocated: res(r.allocated_vcpus, r.allocated_memory_mib, r.allocated_disk_gib),
  available: res(r.vcpus - r.allocated_vcpus, r.memory_mib - r.allocated_memory_mib, r.disk_gib - r.allocated_disk_gib),
  migrationId: r.migration_id,
  createdAt: isoNN(r.created_at),
  deletedAt: iso(r.deleted_at),
});

export const toVm = (r: VmRow): Vm => ({
  id: r.id,
  tenantId: r.tenant_id,
  dedicatedHostId: r.dedicated_host_id,
  incarnationId: r.incarnation_id,
  name: r.name,
  spec: res(r.vcpus, r.memory_mib, r.disk_gib),
  workload: r.workload,
  state: r.state,
  createdByMigration: r.created_by_migration,
  createdAt: isoNN(r.created_at),
  updatedAt: isoNN(r.updated_at),
  deletedAt: iso(r.deleted_at),
  ...(r.state === 'lost' ? { lostAt: iso(r.lost_at), lostReason: r.lost_reason } : {}),
});

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

export const toJob = (r: OutboxRow): DeprovisionJob => ({
  id: Number(r.id),
  incarnationId: r.incarnation_id,
  serverId: r.server_id,
  agentUrl: r.agent_url,
  migrationId: r.migration_id,
  afterState: r.after_state,
  state: r.state,
  claimedBy: r.claimed_by,
  claimedAt: iso(r.claimed_at),
  attempts: r.attempts,
  lastError: r.last_error,
  createdAt: isoNN(r.created_at),
  doneAt: iso(r.done_at),
});

export const toTenant = (r: TenantRow): Tenant => ({ id: r.id, name: r.name, createdAt: isoNN(r.created_at) });

export const toEvent = (r: EventRow): AuditEvent => ({
  id: Number(r.id),
  at: isoNN(r.at),
  actor: r.actor,
  action: r.action,
  entityType: r.entity_type,
  entityId: r.entity_id,
  dedicatedHostId: r.dedicated_host_id,
  migrationId: r.migration_id,
  details: r.details,
  physical: r.physical,
});

export interface AuditInput {
  actor: string;
  action: string;
  entityType: AuditEntityType;
  entityId: string;
  dedicatedHostId?: string | null;
  migrationId?: string | null;
  details?: Record<string, unknown>;
  physical?: Record<string, unknown>;
}

/** Appends one audit event inside the caller's transaction, so it commits or vanishes with the change. */
export async function audit(c: PoolClient, e: AuditInput): Promise<void> {
  await c.query(
    `INSERT INTO audit_events (actor, action, entity_type, entity_id, dedicated_host_id, migration_id, details, physical)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [
      e.actor,
      e.action,
      e.entityType,
      e.entityId,
      e.dedicatedHostId ?? null,
      e.migrationId ?? null,
      JSON.stringify(e.details ?? {}),
      JSON.stringify(e.physical ?? {}),
    ],
  );
}

import type { PoolClient } from 'pg';
import { isoNN } from './db';
import type { AuditEntityType, AuditEvent } from './types';

/**
 * The audit log (table `audit_events`, append-only in the database). Every change of the inventory writes its events
 * in its own transaction, so an event commits or vanishes with the change it describes.
 */

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
  /** Safe for the host's tenant. */
  details?: Record<string, unknown>;
  /** Physical placement (servers, incarnations): operators only. */
  physical?: Record<string, unknown>;
}

/** The columns of an event, in the order `audit()` and the one-statement VM move (vms.ts) insert them. */
export const AUDIT_COLUMNS = 'actor, action, entity_type, entity_id, dedicated_host_id, migration_id, details, physical';

/** Appends one audit event inside the caller's transaction. */
export async function audit(c: PoolClient, e: AuditInput): Promise<void> {
  await c.query(`INSERT INTO audit_events (${AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, [
    e.actor,
    e.action,
    e.entityType,
    e.entityId,
    e.dedicatedHostId ?? null,
    e.migrationId ?? null,
    JSON.stringify(e.details ?? {}),
    JSON.stringify(e.physical ?? {}),
  ]);
}

/** Events oldest first, filtered by host and/or migration; page with afterId. */
export async function listEvents(c: PoolClient, p: { dedicatedHostId?: string; migrationId?: string; afterId?: number; limit: number }): Promise<AuditEvent[]> {
  const { rows } = await c.query<EventRow>(
    `SELECT * FROM audit_events
      WHERE ($1::text IS NULL OR dedicated_host_id = $1) AND ($2::text IS NULL OR migration_id = $2) AND id > $3
      ORDER BY id LIMIT $4`,
    [p.dedicatedHostId ?? null, p.migrationId ?? null, p.afterId ?? 0, p.limit],
  );
  return rows.map(toEvent);
}

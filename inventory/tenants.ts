import type { PoolClient } from 'pg';
import { audit } from './audit';
import { isoNN, newId } from './db';
import { notFound } from './errors';
import { hashToken, newTenantToken } from './tokens';
import type { Tenant } from './types';

/** Tenants (table `tenants`) and their bearer tokens, stored as hashes (tokens.ts). */

export interface TenantRow {
  id: string;
  name: string;
  created_at: Date;
}

export const toTenant = (r: TenantRow): Tenant => ({ id: r.id, name: r.name, createdAt: isoNN(r.created_at) });

/** A tenant and its bearer token: returned only here. */
export async function createTenant(c: PoolClient, p: { name: string; actor: string }): Promise<Tenant & { token: string }> {
  const token = newTenantToken();
  const id = newId('tn');
  const { rows } = await c.query<TenantRow>('INSERT INTO tenants (id, name, token_hash) VALUES ($1, $2, $3) RETURNING id, name, created_at', [
    id,
    p.name,
    hashToken(token),
  ]);
  await audit(c, { actor: p.actor, action: 'tenant.created', entityType: 'tenant', entityId: id, details: { name: p.name } });
  return { ...toTenant(rows[0]!), token };
}

export async function findTenantByToken(c: PoolClient, token: string): Promise<Tenant | null> {
  const { rows } = await c.query<TenantRow>('SELECT id, name, created_at FROM tenants WHERE token_hash = $1', [hashToken(token)]);
  return rows[0] ? toTenant(rows[0]) : null;
}

export async function getTenant(c: PoolClient, id: string): Promise<Tenant> {
  const { rows } = await c.query<TenantRow>('SELECT id, name, created_at FROM tenants WHERE id = $1', [id]);
  if (!rows[0]) throw notFound('tenant', id, 'tenantId');
  return toTenant(rows[0]);
}

/**
 * Operator: a new token for the tenant, returned only here; the old one (or none, after a revoke) stops working in the
 * same transaction. Audited without the token.
 */
export async function rotateTenantToken(c: PoolClient, p: { tenantId: string; actor: string }): Promise<Tenant & { token: string }> {
  const token = newTenantToken();
  const { rows } = await c.query<TenantRow>(
    `UPDATE tenants SET token_hash = $2, token_rotated_at = now(), token_revoked_at = NULL WHERE id = $1 RETURNING id, name, created_at`,
    [p.tenantId, hashToken(token)],
  );
  if (!rows[0]) throw notFound('tenant', p.tenantId, 'tenantId');
  await audit(c, { actor: p.actor, action: 'tenant.token_rotated', entityType: 'tenant', entityId: p.tenantId });
  return { ...toTenant(rows[0]), token };
}

/** Operator: the tenant's token stops working at once; the tenant keeps its hosts and gets a new token by a rotation. Idempotent. */
export async function revokeTenantToken(c: PoolClient, p: { tenantId: string; actor: string }): Promise<Tenant & { revokedAt: string }> {
  const { rows: was } = await c.query<{ token_revoked_at: Date | null }>('SELECT token_revoked_at FROM tenants WHERE id = $1 FOR UPDATE', [p.tenantId]);
  if (!was[0]) throw notFound('tenant', p.tenantId, 'tenantId');
  const { rows } = await c.query<TenantRow & { token_revoked_at: Date }>(
    `UPDATE tenants SET token_hash = NULL, token_revoked_at = coalesce(token_revoked_at, now()) WHERE id = $1 RETURNING id, name, created_at, token_revoked_at`,
    [p.tenantId],
  );
  if (!was[0].token_revoked_at) await audit(c, { actor: p.actor, action: 'tenant.token_revoked', entityType: 'tenant', entityId: p.tenantId });
  return { ...toTenant(rows[0]!), revokedAt: isoNN(rows[0]!.token_revoked_at) };
}

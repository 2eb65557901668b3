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

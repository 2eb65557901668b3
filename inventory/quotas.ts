import type { PoolClient } from 'pg';
import { audit } from './audit';
import { isoNN } from './db';
import { InventoryError } from './errors';
import { getTenant } from './tenants';
import type { TenantQuotas } from './types';

/**
 * Per-tenant quotas (table `tenant_quotas`): what one tenant may hold, so that no tenant can take every server of a
 * zone or flood the API. A missing row or column is the default. The host and VM quotas are enforced here, inside
 * the transaction that creates the host or VM and under the lock that serializes those creates (the tenant row for
 * hosts, the host row for VMs): two concurrent creates cannot both take the last slot. The request rate is enforced
 * by the API's rate limiter, which reads it from here.
 */

/** Defaults: 2 dedicated hosts per zone and resource class (as clouds allow for dedicated hosts), 256 VMs per host, 50 requests/s. */
export const DEFAULT_QUOTAS: Readonly<Omit<TenantQuotas, 'tenantId' | 'updatedAt'>> = Object.freeze({
  hostsPerZoneClass: 2,
  vmsPerHost: 256,
  requestsPerSecond: 50,
});

export type QuotaName = keyof typeof DEFAULT_QUOTAS;

interface QuotaRow {
  hosts_per_zone_class: number | null;
  vms_per_host: number | null;
  requests_per_second: number | null;
  updated_at: Date | null;
}

const toQuotas = (tenantId: string, r: QuotaRow | undefined): TenantQuotas => ({
  tenantId,
  hostsPerZoneClass: r?.hosts_per_zone_class ?? DEFAULT_QUOTAS.hostsPerZoneClass,
  vmsPerHost: r?.vms_per_host ?? DEFAULT_QUOTAS.vmsPerHost,
  requestsPerSecond: r?.requests_per_second ?? DEFAULT_QUOTAS.requestsPerSecond,
  updatedAt: r?.updated_at ? isoNN(r.updated_at) : null,
});

async function quotaRow(c: PoolClient, tenantId: string): Promise<QuotaRow | undefined> {
  const { rows } = await c.query<QuotaRow>(
    'SELECT hosts_per_zone_class, vms_per_host, requests_per_second, updated_at FROM tenant_quotas WHERE tenant_id = $1',
    [tenantId],
  );
  return rows[0];
}

/** The tenant's quotas, defaults filled in. NOT_FOUND for an unknown tenant. */
export async function getQuotas(c: PoolClient, tenantId: string): Promise<TenantQuotas> {
  await getTenant(c, tenantId);
  return toQuotas(tenantId, await quotaRow(c, tenantId));
}

/** Operator: sets the named quotas (null: back to the default); the others are kept. Audited with old and new values. */
export async function setQuotas(
  c: PoolClient,
  p: { tenantId: string; hostsPerZoneClass?: number | null; vmsPerHost?: number | null; requestsPerSecond?: number | null; actor: string },
): Promise<TenantQuotas> {
  await c.query('SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE', [p.tenantId]);
  const before = await getQuotas(c, p.tenantId);
  const col = (v: number | null | undefined, column: string) => (v === undefined ? column : v === null ? 'NULL' : String(v));
  // Values are validated integers (inputs.ts): safe to put in the statement; the tenant id is a parameter.
  await c.query(
    `INSERT INTO tenant_quotas (tenant_id, hosts_per_zone_class, vms_per_host, requests_per_second)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (tenant_id) DO UPDATE SET
       hosts_per_zone_class = ${col(p.hostsPerZoneClass, 'tenant_quotas.hosts_per_zone_class')},
       vms_per_host = ${col(p.vmsPerHost, 'tenant_quotas.vms_per_host')},
       requests_per_second = ${col(p.requestsPerSecond, 'tenant_quotas.requests_per_second')},
       updated_at = now()`,
    [p.tenantId, p.hostsPerZoneClass ?? null, p.vmsPerHost ?? null, p.requestsPerSecond ?? null],
  );
  const after = await getQuotas(c, p.tenantId);
  const changed = (Object.keys(DEFAULT_QUOTAS) as QuotaName[]).filter((k) => before[k] !== after[k]);
  await audit(c, {
    actor: p.actor,
    action: 'tenant.quotas_set',
    entityType: 'tenant',
    entityId: p.tenantId,
    details: Object.fromEntries(changed.map((k) => [k, { from: before[k], to: after[k] }])),
  });
  return after;
}

function exceeded(quota: QuotaName, limit: number, used: number, message: string, extra: Record<string, unknown> = {}): InventoryError {
  return new InventoryError('QUOTA_EXCEEDED', `${quota}: ${message} (quota ${limit}, in use ${used}); ask the operator to raise it`, quota, {
    quota,
    limit,
    used,
    ...extra,
  });
}

/**
 * Before a new host of `tenantId` in (zone, class): locks the tenant row, so every create of this tenant waits for
 * the one before it to commit, then counts its hosts there. QUOTA_EXCEEDED names the quota.
 */
export async function checkHostQuota(c: PoolClient, p: { tenantId: string; zone: string; resourceClass: string }): Promise<void> {
  const { rowCount } = await c.query('SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE', [p.tenantId]);
  if (!rowCount) await getTenant(c, p.tenantId); // throws NOT_FOUND naming tenantId
  const limit = toQuotas(p.tenantId, await quotaRow(c, p.tenantId)).hostsPerZoneClass;
  const { rows } = await c.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM dedicated_hosts WHERE tenant_id = $1 AND zone = $2 AND resource_class = $3 AND state <> 'deleted'`,
    [p.tenantId, p.zone, p.resourceClass],
  );
  const used = rows[0]!.n;
  if (used >= limit)
    throw exceeded('hostsPerZoneClass', limit, used, `the tenant has ${used} dedicated host(s) of class ${p.resourceClass} in zone ${p.zone}`, {
      zone: p.zone,
      resourceClass: p.resourceClass,
    });
}

/** Before a new VM on a host whose row the caller has locked: counts the host's VMs that are not deleted. */
export async function checkVmQuota(c: PoolClient, p: { tenantId: string; dedicatedHostId: string }): Promise<void> {
  const limit = toQuotas(p.tenantId, await quotaRow(c, p.tenantId)).vmsPerHost;
  const { rows } = await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM vms WHERE dedicated_host_id = $1 AND state <> 'deleted'`, [p.dedicatedHostId]);
  const used = rows[0]!.n;
  if (used >= limit) throw exceeded('vmsPerHost', limit, used, `dedicated host ${p.dedicatedHostId} has ${used} VM(s)`, { dedicatedHostId: p.dedicatedHostId });
}

/** The request rates of every tenant that has one set (the API's rate limiter caches these). */
export async function requestRates(c: PoolClient): Promise<Map<string, number>> {
  const { rows } = await c.query<{ tenant_id: string; requests_per_second: number }>(
    'SELECT tenant_id, requests_per_second FROM tenant_quotas WHERE requests_per_second IS NOT NULL',
  );
  return new Map(rows.map((r) => [r.tenant_id, r.requests_per_second]));
}

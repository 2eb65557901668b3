import type { TestDatabase } from '../support/database';
import { DEFAULT_QUOTAS, type Inventory } from '../../inventory';
import { dbState, expectInventoryError, freshZone, inventoryPerFile, migrationId, vmId } from './helpers';

/**
 * Per-tenant quotas (inventory/quotas.ts): a tenant holds at most its quota of dedicated hosts per zone and class
 * (default 2) and of VMs per host; a refusal names the quota and changes nothing; concurrent creates cannot pass it;
 * other tenants are not affected; the operator raises a quota per tenant.
 */
let db: TestDatabase;
let inv: Inventory;

inventoryPerFile((d, i) => {
  db = d;
  inv = i;
});

const small = { vcpus: 1, memoryMiB: 512, diskGiB: 1 };
const createHost = (tenantId: string, zone: string, name: string, resourceClass = 'std-64') =>
  inv.createDedicatedHost({ tenantId, name, zone, resourceClass, actor: `tenant:${tenantId}` });

test('the default allows 2 hosts per zone and class; the third is QUOTA_EXCEEDED naming the quota and changes nothing; another tenant is unaffected', async () => {
  expect(DEFAULT_QUOTAS.hostsPerZoneClass).toBe(2);
  const { zone } = await freshZone(inv, { std: 6, mem: 1 });
  const t = await inv.createTenant('greedy');
  await createHost(t.id, zone, 'one');
  await createHost(t.id, zone, 'two');
  const before = await dbState(db.pool);
  const err = await expectInventoryError(createHost(t.id, zone, 'three'), 'QUOTA_EXCEEDED', 'hostsPerZoneClass');
  expect(err.details).toMatchObject({ quota: 'hostsPerZoneClass', limit: 2, used: 2, zone, resourceClass: 'std-64' });
  expect(err.message).toMatch(/^hostsPerZoneClass: .*quota 2/);
  expect(await dbState(db.pool)).toEqual(before);
  // Another class in the same zone is its own count.
  await createHost(t.id, zone, 'mem', 'mem-32');
  // Another tenant is not affected by the first one's use.
  const other = await inv.createTenant('modest');
  await createHost(other.id, zone, 'theirs');
  expect((await inv.listServers({ zone, state: 'available' })).length).toBe(3);
});

test('concurrent creates cannot pass the quota: of 6 at once, exactly the quota succeed', async () => {
  const { zone } = await freshZone(inv, { std: 8 });
  const t = await inv.createTenant('racer');
  const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => createHost(t.id, zone, `h${i}`)));
  const ok = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  expect(ok.length).toBe(2);
  expect(refused.map((r) => (r.reason as { code?: string }).code)).toEqual(Array(4).fill('QUOTA_EXCEEDED'));
  expect((await inv.listHosts({ tenantId: t.id })).length).toBe(2);
});

test('the operator raises and resets a quota per tenant, audited; a retry of a host creation at the quota gets its first answer', async () => {
  const { zone } = await freshZone(inv, { std: 4 });
  const t = await inv.createTenant('grows');
  const id = `dh-q-${Math.random().toString(36).slice(2, 8)}`;
  await createHost(t.id, zone, 'a');
  const first = await inv.createDedicatedHost({ tenantId: t.id, name: 'b', zone, resourceClass: 'std-64', dedicatedHostId: id, actor: 'x' });
  // The same request again (an idempotent retry) is the same host, not a third one refused.
  expect((await inv.createDedicatedHost({ tenantId: t.id, name: 'b', zone, resourceClass: 'std-64', dedicatedHostId: id, actor: 'x' })).id).toBe(first.id);
  await expectInventoryError(createHost(t.id, zone, 'c'), 'QUOTA_EXCEEDED', 'hostsPerZoneClass');

  const raised = await inv.setTenantQuotas({ tenantId: t.id, hostsPerZoneClass: 3, actor: 'operator' });
  expect(raised).toMatchObject({ tenantId: t.id, hostsPerZoneClass: 3, vmsPerHost: DEFAULT_QUOTAS.vmsPerHost, updatedAt: expect.any(String) });
  await createHost(t.id, zone, 'c');
  await expectInventoryError(createHost(t.id, zone, 'd'), 'QUOTA_EXCEEDED', 'hostsPerZoneClass');
  const events = await db.pool.query(`SELECT details FROM audit_events WHERE action = 'tenant.quotas_set' AND entity_id = $1`, [t.id]);
  expect(events.rows.map((r) => r.details)).toEqual([{ hostsPerZoneClass: { from: 2, to: 3 } }]);
  // null: back to the default; other quotas kept.
  await inv.setTenantQuotas({ tenantId: t.id, vmsPerHost: 7, actor: 'operator' });
  expect(await inv.setTenantQuotas({ tenantId: t.id, hostsPerZoneClass: null, actor: 'operator' })).toMatchObject({ hostsPerZoneClass: 2, vmsPerHost: 7 });
  await expectInventoryError(inv.setTenantQuotas({ tenantId: t.id, vmsPerHost: -1, actor: 'operator' }), 'INVALID_INPUT', 'vmsPerHost');
  await expectInventoryError(inv.setTenantQuotas({ tenantId: t.id, requestsPerSecond: 0, actor: 'operator' }), 'INVALID_INPUT', 'requestsPerSecond');
  await expectInventoryError(inv.setTenantQuotas({ tenantId: 'tn-missing', vmsPerHost: 3, actor: 'operator' }), 'NOT_FOUND', 'tenantId');
  expect(await inv.tenantRequestRates()).not.toContain(t.id);
  await inv.setTenantQuotas({ tenantId: t.id, requestsPerSecond: 9, actor: 'operator' });
  expect((await inv.tenantRequestRates()).get(t.id)).toBe(9);
});

test('VMs per host: placing beyond the quota (also on the clone mid-migration, also concurrently) is QUOTA_EXCEEDED and changes nothing; a deleted VM frees its slot', async () => {
  const { zone } = await freshZone(inv, { std: 3 });
  const t = await inv.createTenant('many vms');
  await inv.setTenantQuotas({ tenantId: t.id, vmsPerHost: 3, actor: 'operator' });
  const host = await createHost(t.id, zone, 'vms');
  const place = (id = vmId()) => inv.placeVm({ vmId: id, tenantId: t.id, dedicatedHostId: host.id, name: id, spec: small, actor: 'x' });
  const results = await Promise.allSettled(Array.from({ length: 5 }, () => place()));
  expect(results.filter((r) => r.status === 'fulfilled').length).toBe(3);
  const before = await dbState(db.pool);
  const err = await expectInventoryError(place(), 'QUOTA_EXCEEDED', 'vmsPerHost');
  expect(err.details).toMatchObject({ quota: 'vmsPerHost', limit: 3, used: 3 });
  expect(await dbState(db.pool)).toEqual(before);

  const [vm] = await inv.listVms({ dedicatedHostId: host.id });
  await inv.deleteVm({ vmId: vm!.id, actor: 'x' });
  await place();

  // Mid-migration, a VM provisioned on the clone counts the same way.
  const mig = migrationId();
  const actor = `migration:${mig}`;
  await inv.beginMigration({ dedicatedHostId: host.id, migrationId: mig, actor });
  const target = await inv.reserveTargetServer({ migrationId: mig, dedicatedHostId: host.id, actor });
  await inv.createCloneIncarnation({ migrationId: mig, dedicatedHostId: host.id, serverId: target.id, actor });
  await expectInventoryError(
    inv.provisionVmOnClone({ vmId: vmId(), migrationId: mig, dedicatedHostId: host.id, name: 'on clone', spec: small, actor }),
    'QUOTA_EXCEEDED',
    'vmsPerHost',
  );
  await inv.setTenantQuotas({ tenantId: t.id, vmsPerHost: 4, actor: 'operator' });
  await inv.provisionVmOnClone({ vmId: vmId(), migrationId: mig, dedicatedHostId: host.id, name: 'on clone', spec: small, actor });
});

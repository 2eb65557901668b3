import type { Inventory } from '../../inventory';
import { expectInventoryError, freshZone, migrationId, inventoryPerFile, placeVms, tenantWithHost } from './helpers';

/**
 * A VM its migration found running nowhere (its server rebooted) is recorded `lost`: out of its incarnation's
 * allocation, audited with the reason, visible to its tenant, and deletable by the tenant afterwards.
 */
let inv: Inventory;

inventoryPerFile((_db, i) => {
  inv = i;
});

const small = { vcpus: 2, memoryMiB: 2048, diskGiB: 20 };

test('markVmLost frees the allocation, audits the reason, is idempotent, and needs the running migration', async () => {
  const { zone } = await freshZone(inv, { std: 2 });
  const { host, tenantId } = await tenantWithHost(inv, zone);
  const [a, b] = await placeVms(inv, host, [small, small]);
  const mig = migrationId();
  const actor = `migration:${mig}`;
  const reason = 'found running neither on s1 nor on s2 (its server restarted or failed)';
  // Outside a migration nobody may declare a VM lost.
  await expectInventoryError(inv.markVmLost({ vmId: a!.id, migrationId: mig, reason, actor }), 'WRONG_STATE', 'migrationId');
  await inv.beginMigration({ dedicatedHostId: host.id, migrationId: mig, actor });
  await expectInventoryError(inv.markVmLost({ vmId: a!.id, migrationId: mig, reason: '', actor }), 'INVALID_INPUT', 'reason');

  const lost = await inv.markVmLost({ vmId: a!.id, migrationId: mig, reason, actor });
  expect(lost).toMatchObject({ id: a!.id, state: 'lost', lostReason: reason, lostAt: expect.any(String), deletedAt: null });
  expect(await inv.markVmLost({ vmId: a!.id, migrationId: mig, reason: 'again', actor })).toMatchObject({ state: 'lost', lostReason: reason });
  expect((await inv.getIncarnation(host.currentIncarnationId)).allocated).toEqual(small); // only b counts now
  const events = (await inv.listEvents({ dedicatedHostId: host.id })).filter((e) => e.action === 'vm.lost');
  expect(events).toEqual([expect.objectContaining({ entityId: a!.id, migrationId: mig, actor, details: { name: a!.name, reason } })]);
  // The tenant sees it among its VMs; a lost VM is not moved.
  expect((await inv.listVms({ dedicatedHostId: host.id, tenantId })).map((v) => [v.id, v.state])).toEqual([
    [a!.id, 'lost'],
    [b!.id, 'running'],
  ]);
  await inv.rollbackMigration({ dedicatedHostId: host.id, migrationId: mig, actor });

  // After the migration, the tenant closes the record: deleted, and nothing is freed twice.
  const deleted = await inv.deleteVm({ vmId: a!.id, tenantId, actor: `tenant:${tenantId}` });
  expect(deleted.state).toBe('deleted');
  expect((await inv.getIncarnation(host.currentIncarnationId)).allocated).toEqual(small);
  expect((await inv.listVms({ dedicatedHostId: host.id })).map((v) => v.id)).toEqual([b!.id]);
});

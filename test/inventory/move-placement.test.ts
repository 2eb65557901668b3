import type { TestDatabase } from '../support/database';
import type { Inventory } from '../../inventory';
import { expectInventoryError, freshZone, migrationId, inventoryPerFile, placeVms, tenantWithHost } from './helpers';

/**
 * moveVmPlacement records an arrival in one statement when all is as expected (so a host's arrivals hold its
 * incarnation rows for one statement each, not a transaction of round trips); everything else takes the
 * step-by-step transaction. Both must keep the same answers and invariants.
 */
let db: TestDatabase;
let inv: Inventory;

inventoryPerFile((d, i) => {
  db = d;
  inv = i;
});

const tiny = { vcpus: 1, memoryMiB: 1024, diskGiB: 10 };

async function migratingHost(vmCount: number) {
  const { zone } = await freshZone(inv, { std: 2 });
  const { host } = await tenantWithHost(inv, zone);
  const vms = await placeVms(inv, host, Array(vmCount).fill(tiny));
  const mig = migrationId();
  const actor = `migration:${mig}`;
  await inv.beginMigration({ dedicatedHostId: host.id, migrationId: mig, actor });
  const target = await inv.reserveTargetServer({ migrationId: mig, dedicatedHostId: host.id, actor });
  const clone = await inv.createCloneIncarnation({ migrationId: mig, dedicatedHostId: host.id, serverId: target.id, actor });
  return { host, vms, mig, actor, clone };
}

test('an arrival is one statement without a transaction, and records what the transaction recorded', async () => {
  const { host, vms, mig, actor, clone } = await migratingHost(2);
  // A transaction checks a client out (pool.connect() without a callback); pool.query checks one out with a callback.
  const connect = jest.spyOn(db.pool, 'connect');
  const query = jest.spyOn(db.pool, 'query');
  try {
    const moved = await inv.moveVmPlacement({ vmId: vms[0]!.id, migrationId: mig, toIncarnationId: clone.id, actor });
    expect(connect.mock.calls.filter((args) => typeof args[0] !== 'function')).toEqual([]);
    expect(query).toHaveBeenCalledTimes(1);
    expect(moved).toEqual({ ...vms[0], incarnationId: clone.id, updatedAt: expect.any(String) });
  } finally {
    connect.mockRestore();
    query.mockRestore();
  }
  expect((await inv.getIncarnation(clone.id)).allocated).toEqual(tiny);
  expect((await inv.getIncarnation(host.currentIncarnationId)).allocated).toEqual(tiny);
  const events = (await inv.listEvents({ dedicatedHostId: host.id })).filter((e) => e.action === 'vm.moved');
  expect(events).toEqual([
    expect.objectContaining({
      actor,
      entityType: 'vm',
      entityId: vms[0]!.id,
      dedicatedHostId: host.id,
      migrationId: mig,
      details: { name: vms[0]!.name },
      physical: { fromIncarnationId: host.currentIncarnationId, fromServerId: expect.any(String), toIncarnationId: clone.id, toServerId: clone.serverId },
    }),
  ]);
  // A retry after success goes the long way and answers the same VM, recording nothing more.
  const again = await inv.moveVmPlacement({ vmId: vms[0]!.id, migrationId: mig, toIncarnationId: clone.id, actor });
  expect(again.incarnationId).toBe(clone.id);
  expect((await inv.listEvents({ dedicatedHostId: host.id })).filter((e) => e.action === 'vm.moved')).toHaveLength(1);
});

test('concurrent arrivals of one host, each requested twice at once: every VM moves once, allocations stay exact', async () => {
  const { host, vms, mig, actor, clone } = await migratingHost(40);
  const moves = vms.flatMap((v) => [v, v]).map((v) => inv.moveVmPlacement({ vmId: v.id, migrationId: mig, toIncarnationId: clone.id, actor }));
  const results = await Promise.all(moves);
  for (const r of results) expect(r.incarnationId).toBe(clone.id);
  expect((await inv.getIncarnation(clone.id)).allocated).toEqual({ vcpus: 40, memoryMiB: 40 * 1024, diskGiB: 400 });
  expect((await inv.getIncarnation(host.currentIncarnationId)).allocated).toEqual({ vcpus: 0, memoryMiB: 0, diskGiB: 0 });
  const events = (await inv.listEvents({ dedicatedHostId: host.id, limit: 500 })).filter((e) => e.action === 'vm.moved');
  expect(events.map((e) => e.entityId).sort()).toEqual(vms.map((v) => v.id).sort());
  await inv.finalizeMigration({ migrationId: mig, dedicatedHostId: host.id, actor });
});

test('arrivals racing the rollback of their migration either land before it or are refused after it', async () => {
  const { host, vms, mig, actor, clone } = await migratingHost(20);
  const moves = vms.map((v) => inv.moveVmPlacement({ vmId: v.id, migrationId: mig, toIncarnationId: clone.id, actor }));
  // Rollback needs the clone empty: it is refused while arrivals are recorded, or wins and refuses what follows.
  const rollback = inv.rollbackMigration({ migrationId: mig, dedicatedHostId: host.id, actor }).then(
    () => 'rolled back',
    (err: { code?: string }) => err.code,
  );
  const settled = await Promise.allSettled(moves);
  const outcome = await rollback;
  const refusals = settled.flatMap((s) => (s.status === 'rejected' ? [(s.reason as { code?: string }).code] : []));
  expect(refusals).toEqual(Array(refusals.length).fill('WRONG_STATE'));
  const landed = settled.length - refusals.length;
  // Rollback wins only on an empty clone (so before every arrival); it is refused only because arrivals landed.
  if (outcome === 'rolled back') expect(landed).toBe(0);
  else expect([outcome, landed > 0]).toEqual(['WRONG_STATE', true]);
  const { rows } = await db.pool.query<{ incarnation_id: string; n: number }>(
    `SELECT incarnation_id, count(*)::int AS n FROM vms WHERE dedicated_host_id = $1 AND state = 'running' GROUP BY 1 ORDER BY 1`,
    [host.id],
  );
  // All 20 VMs still run, each counted exactly once in the allocation of the incarnation it is on.
  expect(rows.reduce((sum, r) => sum + r.n, 0)).toBe(20);
  for (const r of rows) expect((await inv.getIncarnation(r.incarnation_id)).allocated.vcpus).toBe(r.n);
  expect((await inv.getIncarnation(clone.id)).allocated.vcpus).toBe(outcome === 'rolled back' ? 0 : landed);
});

test('refusals are the step-by-step ones', async () => {
  const { vms, mig, actor, clone } = await migratingHost(1);
  await expectInventoryError(inv.moveVmPlacement({ vmId: 'vm-nope', migrationId: mig, toIncarnationId: clone.id, actor }), 'NOT_FOUND', 'vmId');
  await expectInventoryError(inv.moveVmPlacement({ vmId: vms[0]!.id, migrationId: 'mig-other', toIncarnationId: clone.id, actor }), 'NOT_FOUND', 'migrationId');
  await expectInventoryError(inv.moveVmPlacement({ vmId: vms[0]!.id, migrationId: mig, toIncarnationId: 'inc-nope', actor }), 'NOT_FOUND', 'toIncarnationId');
});

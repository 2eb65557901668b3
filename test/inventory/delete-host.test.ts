import { Client } from 'pg';
import type { TestDatabase } from '../support/database';
import { DEPROVISION_CHANNEL, type Inventory } from '../../inventory';
import { OP, claimJob, dbState, expectInventoryError, freshZone, migrationId, inventoryPerFile, placeVms, tenantWithHost } from './helpers';

/**
 * deleteDedicatedHost: an empty host that is not migrating is deleted with its incarnation, and its server goes to
 * the scheduler through the same outbox row a finalized migration writes (claim 5). Everything else is refused with a
 * reason and changes nothing.
 */
let db: TestDatabase;
let inv: Inventory;

inventoryPerFile((d, i) => {
  db = d;
  inv = i;
});

const small = { vcpus: 2, memoryMiB: 2048, diskGiB: 20 };

const claim = (schedulerId: string, jobId: number) => claimJob(inv, schedulerId, jobId);

test('an empty host is deleted with its incarnation; its server goes through the outbox to the scheduler and back to the pool', async () => {
  const { zone, std } = await freshZone(inv, { std: 1 });
  const { host, tenantId } = await tenantWithHost(inv, zone);
  expect(host.serverId).toBe(std[0]);
  const listener = new Client({ connectionString: db.url });
  await listener.connect();
  let res: Awaited<ReturnType<Inventory['deleteDedicatedHost']>>;
  try {
    const heard: string[] = [];
    listener.on('notification', (n) => {
      if (n.channel === DEPROVISION_CHANNEL) heard.push(n.payload ?? '');
    });
    await listener.query(`LISTEN ${DEPROVISION_CHANNEL}`);

    res = await inv.deleteDedicatedHost({ dedicatedHostId: host.id, tenantId, actor: `tenant:${tenantId}` });
    expect(res.host).toMatchObject({ id: host.id, tenantId, state: 'deleted', deletedAt: expect.any(String), currentIncarnationId: host.currentIncarnationId });
    expect(res.deletedIncarnation).toMatchObject({ id: host.currentIncarnationId, serverId: std[0], state: 'deleted', deletedAt: expect.any(String) });
    expect(res.deprovisionJob).toMatchObject({
      incarnationId: host.currentIncarnationId,
      serverId: std[0],
      agentUrl: expect.stringMatching(/^http:/),
      migrationId: null,
      afterState: 'available',
      state: 'pending',
      claimedBy: null,
    });
    expect((await inv.getServer(std[0]!)).state).toBe('deprovisioning');

    // The scheduler hears of it at commit, as after a finalize...
    const deadline = Date.now() + 5_000;
    while (heard.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(heard).toEqual([String(res.deprovisionJob.id)]);
  } finally {
    await listener.end();
  }

  // ...and takes it through the path it takes for a finalized migration's old server.
  expect((await inv.listDeprovisionJobs({ state: 'pending' })).map((j) => j.id)).toContain(res.deprovisionJob.id);
  const claimed = await claim('sched-del', res.deprovisionJob.id);
  expect(claimed).toMatchObject({ incarnationId: host.currentIncarnationId, serverId: std[0], claimedBy: 'sched-del', attempts: 1 });
  const done = await inv.completeDeprovisionJob({ jobId: claimed!.id, schedulerId: 'sched-del' });
  expect(done).toMatchObject({ state: 'done', migrationId: null });
  expect((await inv.getServer(std[0]!)).state).toBe('available');

  // The host is gone for everyone; its audit trail stays, in order.
  await expectInventoryError(inv.getHost(host.id), 'NOT_FOUND', 'dedicatedHostId');
  await expectInventoryError(inv.listVms({ dedicatedHostId: host.id }), 'NOT_FOUND', 'dedicatedHostId');
  expect((await inv.listHosts()).map((h) => h.id)).not.toContain(host.id);
  expect((await inv.listHosts({ tenantId })).map((h) => h.id)).toEqual([]);
  const actions = (await inv.listEvents({ dedicatedHostId: host.id })).map((e) => e.action);
  expect(actions).toEqual([
    'host.created',
    'incarnation.created',
    'server.allocated',
    'host.deleted',
    'incarnation.deleted',
    'server.deprovisioning',
    'deprovision.enqueued',
    'deprovision.claimed',
    'server.deprovisioned',
    'deprovision.completed',
  ]);

  // The server it freed takes the next host.
  const next = await inv.createDedicatedHost({ tenantId, name: 'next', zone, resourceClass: 'std-64', ...OP });
  expect(next.serverId).toBe(std[0]);
});

test('deleting again, or another tenant deleting, answers NOT_FOUND and changes nothing', async () => {
  const { zone } = await freshZone(inv, { std: 2 });
  const { host, tenantId } = await tenantWithHost(inv, zone);
  const { tenantId: otherTenant } = await tenantWithHost(inv, zone);
  let before = await dbState(db.pool);
  await expectInventoryError(
    inv.deleteDedicatedHost({ dedicatedHostId: host.id, tenantId: otherTenant, actor: `tenant:${otherTenant}` }),
    'NOT_FOUND',
    'dedicatedHostId',
  );
  await expectInventoryError(inv.deleteDedicatedHost({ dedicatedHostId: 'dh-missing', ...OP }), 'NOT_FOUND', 'dedicatedHostId');
  await expectInventoryError(inv.deleteDedicatedHost({ dedicatedHostId: host.id, afterState: 'gone' as never, ...OP }), 'INVALID_INPUT', 'afterState');
  expect(await dbState(db.pool)).toEqual(before);

  await inv.deleteDedicatedHost({ dedicatedHostId: host.id, tenantId, actor: `tenant:${tenantId}`, afterState: 'maintenance' });
  before = await dbState(db.pool);
  await expectInventoryError(inv.deleteDedicatedHost({ dedicatedHostId: host.id, tenantId, actor: `tenant:${tenantId}` }), 'NOT_FOUND', 'dedicatedHostId');
  await expectInventoryError(inv.deleteDedicatedHost({ dedicatedHostId: host.id, ...OP }), 'NOT_FOUND', 'dedicatedHostId');
  expect(await dbState(db.pool)).toEqual(before);
  // A deleted host's id is not reused by an idempotent create.
  await expectInventoryError(
    inv.createDedicatedHost({ dedicatedHostId: host.id, tenantId, name: host.name, zone, resourceClass: 'std-64', ...OP }),
    'CONFLICT',
    'dedicatedHostId',
  );
});

test('a host with VMs is refused HOST_HAS_VMS naming them, a lost VM included; once they are deleted it goes', async () => {
  const { zone } = await freshZone(inv, { std: 2 });
  const { host, tenantId } = await tenantWithHost(inv, zone);
  const [a, b] = await placeVms(inv, host, [small, small]);
  const actor = `tenant:${tenantId}`;
  let before = await dbState(db.pool);
  const err = await expectInventoryError(inv.deleteDedicatedHost({ dedicatedHostId: host.id, tenantId, actor }), 'HOST_HAS_VMS', 'dedicatedHostId');
  expect(err.details).toEqual({ vmIds: [a!.id, b!.id].sort() });
  expect(await dbState(db.pool)).toEqual(before);

  // A migration finds `a` lost and rolls back: the lost VM's record still belongs to the host.
  const mig = migrationId();
  await inv.beginMigration({ dedicatedHostId: host.id, migrationId: mig, actor: `migration:${mig}` });
  await inv.markVmLost({ vmId: a!.id, migrationId: mig, reason: 'its server restarted', actor: `migration:${mig}` });
  await inv.rollbackMigration({ dedicatedHostId: host.id, migrationId: mig, actor: `migration:${mig}` });
  await inv.deleteVm({ vmId: b!.id, tenantId, actor });
  before = await dbState(db.pool);
  const lostErr = await expectInventoryError(inv.deleteDedicatedHost({ dedicatedHostId: host.id, tenantId, actor }), 'HOST_HAS_VMS', 'dedicatedHostId');
  expect(lostErr.details).toEqual({ vmIds: [a!.id] });
  expect(await dbState(db.pool)).toEqual(before);

  await inv.deleteVm({ vmId: a!.id, tenantId, actor });
  expect((await inv.deleteDedicatedHost({ dedicatedHostId: host.id, tenantId, actor })).host.state).toBe('deleted');
  // The VMs' records outlive the host: deleting one again still answers with it.
  expect(await inv.deleteVm({ vmId: b!.id, tenantId, actor })).toMatchObject({ id: b!.id, state: 'deleted', dedicatedHostId: host.id });
});

test('a migrating host is refused HOST_MIGRATING, even without VMs; after the rollback it can be deleted', async () => {
  const { zone } = await freshZone(inv, { std: 2 });
  const { host, tenantId } = await tenantWithHost(inv, zone);
  const mig = migrationId();
  const m = `migration:${mig}`;
  await inv.beginMigration({ dedicatedHostId: host.id, migrationId: mig, actor: m });
  const target = await inv.reserveTargetServer({ dedicatedHostId: host.id, migrationId: mig, actor: m });
  await inv.createCloneIncarnation({ dedicatedHostId: host.id, migrationId: mig, serverId: target.id, actor: m });
  const before = await dbState(db.pool);
  const err = await expectInventoryError(
    inv.deleteDedicatedHost({ dedicatedHostId: host.id, tenantId, actor: `tenant:${tenantId}` }),
    'HOST_MIGRATING',
    'dedicatedHostId',
  );
  expect(err.details).toEqual({ migrationId: mig });
  expect(await dbState(db.pool)).toEqual(before);

  await inv.rollbackMigration({ dedicatedHostId: host.id, migrationId: mig, actor: m });
  const res = await inv.deleteDedicatedHost({ dedicatedHostId: host.id, tenantId, actor: `tenant:${tenantId}` });
  expect(res.deprovisionJob).toMatchObject({ serverId: host.serverId, migrationId: null });
  expect((await inv.getServer(target.id)).state).toBe('available');
});

test('a delete racing a placement or another delete: exactly one outcome wins, under row locks', async () => {
  const { zone } = await freshZone(inv, { std: 2 });
  const { host, tenantId } = await tenantWithHost(inv, zone);
  const actor = `tenant:${tenantId}`;
  const [placed, deleted] = await Promise.allSettled([
    inv.placeVm({ vmId: 'vm-race-1', tenantId, dedicatedHostId: host.id, name: 'racer', spec: small, actor }),
    inv.deleteDedicatedHost({ dedicatedHostId: host.id, tenantId, actor }),
  ]);
  if (placed.status === 'fulfilled') {
    expect(deleted).toMatchObject({ status: 'rejected', reason: { code: 'HOST_HAS_VMS' } });
    expect((await inv.getHost(host.id)).vmCount).toBe(1);
  } else {
    expect(placed.reason).toMatchObject({ code: 'NOT_FOUND', field: 'dedicatedHostId' });
    expect(deleted.status).toBe('fulfilled');
  }

  const { host: h2 } = await tenantWithHost(inv, zone);
  const twice = await Promise.allSettled([
    inv.deleteDedicatedHost({ dedicatedHostId: h2.id, ...OP }),
    inv.deleteDedicatedHost({ dedicatedHostId: h2.id, ...OP }),
  ]);
  expect(twice.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
  expect(twice.find((r) => r.status === 'rejected')).toMatchObject({ reason: { code: 'NOT_FOUND' } });
  const jobs = (await inv.listDeprovisionJobs()).filter((j) => j.incarnationId === h2.currentIncarnationId);
  expect(jobs).toHaveLength(1);
});

test('the database refuses a deleted host that still holds VMs', async () => {
  const { zone } = await freshZone(inv, { std: 1 });
  const { host } = await tenantWithHost(inv, zone);
  await placeVms(inv, host, [small]);
  const c = await db.pool.connect();
  try {
    await c.query('BEGIN');
    await c.query(`UPDATE dedicated_hosts SET state = 'deleted', deleted_at = now() WHERE id = $1`, [host.id]);
    await expect(c.query('COMMIT')).rejects.toMatchObject({ constraint: 'deleted_host_holds_nothing' });
  } finally {
    await c.query('ROLLBACK').catch(() => undefined);
    c.release();
  }
  expect((await inv.getHost(host.id)).state).toBe('active');
});

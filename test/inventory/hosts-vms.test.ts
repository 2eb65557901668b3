import type { TestDatabase } from '../support/database';
import { tenantEventView, type Inventory } from '../../inventory';
import { OP, STD, countEvents, dbState, expectInventoryError, freshZone, placeVms, tenantWithHost, vmId, inventoryPerFile } from './helpers';

let db: TestDatabase;
let inv: Inventory;

inventoryPerFile((d, i) => {
  db = d;
  inv = i;
});

describe('tenants', () => {
  test('a token is returned once, stored only as a hash, and finds its tenant', async () => {
    const t = await inv.createTenant('acme');
    expect(t.token).toMatch(/^dhm_[A-Za-z0-9_-]{43}$/);
    expect(await inv.findTenantByToken(t.token)).toEqual({ id: t.id, name: 'acme', createdAt: t.createdAt });
    expect(await inv.findTenantByToken(`${t.token}x`)).toBeNull();
    expect(await inv.findTenantByToken('')).toBeNull();
    const { rows } = await db.pool.query('SELECT token_hash FROM tenants WHERE id = $1', [t.id]);
    expect(rows[0].token_hash).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.stringify(await db.pool.query('SELECT * FROM tenants'))).not.toContain(t.token);
    const ev = await db.pool.query(`SELECT * FROM audit_events WHERE entity_id = $1`, [t.id]);
    expect(ev.rows.map((r) => r.action)).toEqual(['tenant.created']);
  });
});

describe('dedicated hosts', () => {
  test('a host gets a free server of its zone and class and an incarnation with the class amounts', async () => {
    const { zone, std } = await freshZone(inv, { std: 2, mem: 1 });
    const { tenantId, host } = await tenantWithHost(inv, zone);
    expect(host).toMatchObject({
      tenantId,
      zone,
      resourceClass: 'std-64',
      capacity: STD,
      state: 'active',
      migrationId: null,
      allocated: { vcpus: 0, memoryMiB: 0, diskGiB: 0 },
      available: STD,
      vmCount: 0,
      serverId: std[0],
    });
    const inc = await inv.getIncarnation(host.currentIncarnationId);
    expect(inc).toMatchObject({ dedicatedHostId: host.id, serverId: std[0], role: 'primary', state: 'live', capacity: STD });
    expect((await inv.getServer(std[0]!)).state).toBe('allocated');
    const events = await inv.listEvents({ dedicatedHostId: host.id });
    expect(events.map((e) => e.action)).toEqual(['host.created', 'incarnation.created', 'server.allocated']);
    expect(events.every((e) => e.actor === `tenant:${tenantId}`)).toBe(true);
    // Tenants see the host's own events, without physical placement.
    const forTenant = events.map(tenantEventView);
    expect(forTenant.map((e) => e?.action ?? null)).toEqual(['host.created', null, null]);
    expect(Object.keys(forTenant[0]!)).not.toContain('physical');
    expect(JSON.stringify(forTenant)).not.toContain(std[0]!);
  });

  test('createDedicatedHost with a caller-chosen id is idempotent', async () => {
    const { zone } = await freshZone(inv, { std: 2 });
    const t = await inv.createTenant('idem');
    const input = { tenantId: t.id, name: 'h', zone, resourceClass: 'std-64', dedicatedHostId: `dh-idem-${zone}`, actor: OP.actor };
    const [a, b] = await Promise.all([inv.createDedicatedHost(input), inv.createDedicatedHost(input)]);
    expect(b).toEqual(a);
    expect((await inv.listHosts({ tenantId: t.id })).map((h) => h.id)).toEqual([a.id]);
    await expectInventoryError(inv.createDedicatedHost({ ...input, name: 'other' }), 'CONFLICT', 'dedicatedHostId');
  });

  test('no free server → NO_MATCHING_SERVER; unknown zone, class, tenant name their field; nothing changes', async () => {
    const { zone } = await freshZone(inv, { std: 1 });
    const { tenantId } = await tenantWithHost(inv, zone);
    const before = await dbState(db.pool);
    await expectInventoryError(inv.createDedicatedHost({ tenantId, name: 'x', zone, resourceClass: 'std-64', ...OP }), 'NO_MATCHING_SERVER');
    await expectInventoryError(inv.createDedicatedHost({ tenantId, name: 'x', zone, resourceClass: 'mem-32', ...OP }), 'NO_MATCHING_SERVER');
    await expectInventoryError(inv.createDedicatedHost({ tenantId, name: 'x', zone: 'nowhere', resourceClass: 'std-64', ...OP }), 'NOT_FOUND', 'zone');
    await expectInventoryError(inv.createDedicatedHost({ tenantId, name: 'x', zone, resourceClass: 'gpu-8', ...OP }), 'NOT_FOUND', 'resourceClass');
    await expectInventoryError(inv.createDedicatedHost({ tenantId: 'tn-nobody', name: 'x', zone, resourceClass: 'std-64', ...OP }), 'NOT_FOUND', 'tenantId');
    await expectInventoryError(inv.createDedicatedHost({ tenantId, name: '', zone, resourceClass: 'std-64', ...OP }), 'INVALID_INPUT', 'name');
    await expectInventoryError(inv.createDedicatedHost({ tenantId: 'Bad Id!', name: 'x', zone, resourceClass: 'std-64', ...OP }), 'INVALID_INPUT', 'tenantId');
    expect(await dbState(db.pool)).toEqual(before);
  });

  test('parallel creates for the last free servers: each server goes to exactly one host', async () => {
    const { zone, std } = await freshZone(inv, { std: 3 });
    // One tenant each: creates of one tenant queue on its row (its quota), and this race is between tenants.
    const tenants = await Promise.all(Array.from({ length: 10 }, (_, i) => inv.createTenant(`racer ${i}`)));
    const results = await Promise.allSettled(
      tenants.map((t, i) => inv.createDedicatedHost({ tenantId: t.id, name: `h${i}`, zone, resourceClass: 'std-64', ...OP })),
    );
    const won = results.filter((r) => r.status === 'fulfilled').map((r) => (r as PromiseFulfilledResult<{ serverId: string }>).value.serverId);
    const lost = results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason.code);
    expect(won.sort()).toEqual([...std].sort());
    expect(lost).toEqual(Array(7).fill('NO_MATCHING_SERVER'));
  });
});

describe('VM placement', () => {
  test('placeVm allocates on the current incarnation; same vmId again is the same VM, placed once', async () => {
    const { zone } = await freshZone(inv, { std: 1 });
    const { tenantId, host } = await tenantWithHost(inv, zone);
    const id = vmId();
    const input = {
      vmId: id,
      tenantId,
      dedicatedHostId: host.id,
      name: 'web-1',
      spec: { vcpus: 8, memoryMiB: 16384, diskGiB: 100, workload: { dirtyRateMiBps: 50, workingSetMiB: 512 } },
      actor: `tenant:${tenantId}`,
    };
    const vm = await inv.placeVm(input);
    expect(vm).toMatchObject({
      id,
      tenantId,
      dedicatedHostId: host.id,
      incarnationId: host.currentIncarnationId,
      spec: { vcpus: 8, memoryMiB: 16384, diskGiB: 100 },
      workload: { dirtyRateMiBps: 50, workingSetMiB: 512 },
      state: 'running',
    });
    const events = await countEvents(db.pool);
    expect(await inv.placeVm(input)).toEqual(vm);
    expect(await countEvents(db.pool)).toBe(events);
    expect((await inv.getIncarnation(host.currentIncarnationId)).allocated).toEqual({ vcpus: 8, memoryMiB: 16384, diskGiB: 100 });
    const view = await inv.getHost(host.id);
    expect(view).toMatchObject({ vmCount: 1, available: { vcpus: 56, memoryMiB: 262144 - 16384, diskGiB: 1900 } });
    await expectInventoryError(inv.placeVm({ ...input, name: 'another' }), 'CONFLICT', 'vmId');
    expect((await inv.listEvents({ dedicatedHostId: host.id })).filter((e) => e.entityId === id).map((e) => e.action)).toEqual(['vm.placed']);
  });

  test('a VM that does not fit is refused naming the short resource; nothing changes', async () => {
    const { zone } = await freshZone(inv, { std: 1 });
    const { host } = await tenantWithHost(inv, zone);
    await placeVms(inv, host, [{ vcpus: 60, memoryMiB: 1024, diskGiB: 10 }]);
    const before = await dbState(db.pool);
    const err = await expectInventoryError(
      inv.placeVm({ vmId: vmId(), dedicatedHostId: host.id, name: 'big', spec: { vcpus: 8, memoryMiB: 1024, diskGiB: 10 }, ...OP }),
      'INSUFFICIENT_CAPACITY',
      'vcpus',
    );
    expect(err.message).toMatch(/vcpus.*needs 8, available 4/);
    expect(err.details).toEqual({ resource: 'vcpus', needed: 8, available: 4 });
    await expectInventoryError(
      inv.placeVm({ vmId: vmId(), dedicatedHostId: host.id, name: 'big', spec: { vcpus: 1, memoryMiB: 262144, diskGiB: 10 }, ...OP }),
      'INSUFFICIENT_CAPACITY',
      'memoryMiB',
    );
    expect(await dbState(db.pool)).toEqual(before);
  });

  test('bad VM input names the field; unknown and foreign ids are NOT_FOUND; nothing changes', async () => {
    const { zone } = await freshZone(inv, { std: 2 });
    const { tenantId, host } = await tenantWithHost(inv, zone);
    const other = await tenantWithHost(inv, zone);
    const [vm] = await placeVms(inv, host, [{ vcpus: 1, memoryMiB: 1024, diskGiB: 10 }]);
    const before = await dbState(db.pool);
    const base = { vmId: vmId(), dedicatedHostId: host.id, name: 'x', spec: { vcpus: 1, memoryMiB: 1024, diskGiB: 10 }, ...OP };
    await expectInventoryError(inv.placeVm({ ...base, spec: { ...base.spec, vcpus: 0 } }), 'INVALID_INPUT', 'spec.vcpus');
    await expectInventoryError(inv.placeVm({ ...base, spec: { ...base.spec, memoryMiB: -5 } }), 'INVALID_INPUT', 'spec.memoryMiB');
    await expectInventoryError(inv.placeVm({ ...base, spec: { ...base.spec, memoryMiB: 1e12 } }), 'INVALID_INPUT', 'spec.memoryMiB');
    await expectInventoryError(inv.placeVm({ ...base, spec: { ...base.spec, diskGiB: 1.5 } }), 'INVALID_INPUT', 'spec.diskGiB');
    await expectInventoryError(inv.placeVm({ ...base, spec: { ...base.spec, gpus: 1 } as never }), 'INVALID_INPUT', 'spec');
    await expectInventoryError(inv.placeVm({ ...base, vmId: 'VM 1' }), 'INVALID_INPUT', 'vmId');
    await expectInventoryError(inv.placeVm({ ...base, dedicatedHostId: 'dh-nope' }), 'NOT_FOUND', 'dedicatedHostId');
    await expectInventoryError(inv.placeVm({ ...base, tenantId: other.tenantId }), 'NOT_FOUND', 'dedicatedHostId');
    await expectInventoryError(inv.placeVm({ ...base, incarnationId: other.host.currentIncarnationId }), 'NOT_FOUND', 'incarnationId');
    await expectInventoryError(inv.placeVm({ ...base, actor: '' }), 'INVALID_INPUT', 'actor');
    await expectInventoryError(inv.deleteVm({ vmId: 'vm-nope', ...OP }), 'NOT_FOUND', 'vmId');
    await expectInventoryError(inv.deleteVm({ vmId: vm!.id, tenantId: other.tenantId, ...OP }), 'NOT_FOUND', 'vmId');
    await expectInventoryError(inv.getHost(host.id, { tenantId: other.tenantId }), 'NOT_FOUND', 'dedicatedHostId');
    await expectInventoryError(inv.getVm(vm!.id, { tenantId: other.tenantId }), 'NOT_FOUND', 'vmId');
    await expectInventoryError(inv.listVms({ dedicatedHostId: host.id, tenantId: other.tenantId }), 'NOT_FOUND', 'dedicatedHostId');
    await expectInventoryError(inv.getServer('srv-nope'), 'NOT_FOUND', 'serverId');
    await expectInventoryError(inv.getIncarnation('inc-nope'), 'NOT_FOUND', 'incarnationId');
    expect(await dbState(db.pool)).toEqual(before);
    expect((await inv.listHosts({ tenantId })).map((h) => h.id)).toEqual([host.id]);
  });

  test('deleteVm frees the allocation and is idempotent', async () => {
    const { zone } = await freshZone(inv, { std: 1 });
    const { host } = await tenantWithHost(inv, zone);
    const [a, b] = await placeVms(inv, host, [
      { vcpus: 4, memoryMiB: 4096, diskGiB: 40 },
      { vcpus: 2, memoryMiB: 2048, diskGiB: 20 },
    ]);
    const del = await inv.deleteVm({ vmId: a!.id, ...OP });
    expect(del).toMatchObject({ id: a!.id, state: 'deleted', dedicatedHostId: host.id });
    expect(del.deletedAt).not.toBeNull();
    const events = await countEvents(db.pool);
    expect(await inv.deleteVm({ vmId: a!.id, ...OP })).toEqual(del);
    expect(await countEvents(db.pool)).toBe(events);
    expect((await inv.getIncarnation(host.currentIncarnationId)).allocated).toEqual({ vcpus: 2, memoryMiB: 2048, diskGiB: 20 });
    expect((await inv.listVms({ dedicatedHostId: host.id })).map((v) => v.id)).toEqual([b!.id]);
    expect((await inv.listVms({ dedicatedHostId: host.id, includeDeleted: true })).map((v) => v.id)).toEqual([a!.id, b!.id]);
    const ev = (await inv.listEvents({ dedicatedHostId: host.id })).filter((e) => e.entityId === a!.id);
    expect(ev.map((e) => [e.action, e.actor])).toEqual([
      ['vm.placed', `tenant:${host.tenantId}`],
      ['vm.deleted', 'operator'],
    ]);
  });

  test('parallel placements never overshoot capacity', async () => {
    const { zone } = await freshZone(inv, { std: 1 });
    const { host } = await tenantWithHost(inv, zone);
    // 40 × 5 vCPU asked of 64: exactly 12 fit. Real parallel connections (the pool has 20).
    const results = await Promise.allSettled(
      Array.from({ length: 40 }, (_, i) =>
        inv.placeVm({ vmId: vmId(), dedicatedHostId: host.id, name: `p${i}`, spec: { vcpus: 5, memoryMiB: 1024, diskGiB: 10 }, ...OP }),
      ),
    );
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason.code);
    expect(ok).toHaveLength(12);
    expect(refused).toEqual(Array(28).fill('INSUFFICIENT_CAPACITY'));
    const inc = await inv.getIncarnation(host.currentIncarnationId);
    expect(inc.allocated.vcpus).toBe(60);
    const { rows } = await db.pool.query(`SELECT sum(vcpus)::int AS v FROM vms WHERE dedicated_host_id = $1 AND state = 'running'`, [host.id]);
    expect(rows[0].v).toBe(60);
    // Mixed deletes and placements in parallel still balance to the sum of running VMs.
    const running = await inv.listVms({ dedicatedHostId: host.id });
    await Promise.allSettled([
      ...running.slice(0, 6).map((v) => inv.deleteVm({ vmId: v.id, ...OP })),
      ...Array.from({ length: 20 }, (_, i) =>
        inv.placeVm({ vmId: vmId(), dedicatedHostId: host.id, name: `q${i}`, spec: { vcpus: 3, memoryMiB: 1024, diskGiB: 10 }, ...OP }),
      ),
    ]);
    const after = await inv.getIncarnation(host.currentIncarnationId);
    const { rows: r2 } = await db.pool.query(`SELECT sum(vcpus)::int AS v FROM vms WHERE dedicated_host_id = $1 AND state = 'running'`, [host.id]);
    expect(after.allocated.vcpus).toBe(r2[0].v);
    expect(after.allocated.vcpus).toBeLessThanOrEqual(64);
  });
});

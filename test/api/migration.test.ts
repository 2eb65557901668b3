import { eventually } from '../support/system';
import { testFleet } from '../support/fleets';
import { startApiTestSystem, type ApiTestSystem } from './helpers';
import { MAX_AUTO_STREAMS } from '../../workflows/vm-order';

/**
 * A whole live migration driven through the HTTP API (claims 1a–1g, 3, 6–8 as a user and an operator see them):
 * the operator starts it, the tenant creates and deletes VMs while it runs (the new VM lands on the clone, the delete
 * goes through the workflow), GET /v1/migrations/:id shows the phase, the VMs and live progress, and afterwards the
 * host keeps its id with `migration` back to null.
 */
describe('a migration through the HTTP API', () => {
  let t: ApiTestSystem;
  beforeAll(async () => {
    t = await startApiTestSystem({ fleet: testFleet({ servers: 4 }), timeScale: 200 });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('start, create and delete VMs mid-way, watch it, and find the same host afterwards', async () => {
    const op = t.operatorToken;
    const tenant = await t.tenant('migrating customer');
    const other = await t.tenant('other customer');
    const host = await t.host(tenant.token, { name: 'prod-db' });
    const workload = { dirtyRateMiBps: 2, workingSetMiB: 64 };
    const big = await t.vm(tenant.token, host.id, { name: 'big', vcpus: 4, memoryMiB: 8192, workload });
    const mid = await t.vm(tenant.token, host.id, { name: 'mid', vcpus: 2, memoryMiB: 2048, workload });
    const small = await t.vm(tenant.token, host.id, { name: 'small', vcpus: 1, memoryMiB: 1024, workload });
    const before = await t.call('GET', `/v1/dedicated-hosts/${host.id}`, { token: op });
    const sourceServerId = before.body.physicalServerId;

    // 1a/1b: the operator asks; the migration object is the workflow migration-<hostId>.
    const start = await t.call('POST', `/v1/dedicated-hosts/${host.id}/migrations`, {
      token: op,
      body: { policy: { maxParallel: 1, bandwidthCapBps: 10e6, maxDowntimeMs: 300 } },
    });
    expect(start.status).toBe(202);
    expect(start.body).toEqual({ id: `migration-${host.id}`, dedicatedHostId: host.id, phase: 'validating' });
    const migrationId = start.body.id;

    // The first (largest) VM moving, with live progress from its activity's heartbeats.
    const moving = await eventually(
      'a VM moving with progress',
      async () => {
        const r = await t.call('GET', `/v1/migrations/${migrationId}`, { token: op });
        const v = r.body?.vms?.find((x: any) => x.state === 'moving');
        return r.status === 200 && v?.progress?.bytesSent > 0 ? r : null;
      },
      30_000,
      100,
    );
    expect(moving.body).toMatchObject({ phase: 'migrating-vms', workflowStatus: 'RUNNING', dedicatedHostId: host.id, requestedBy: 'operator' });
    const movingVm = moving.body.vms.find((v: any) => v.state === 'moving');
    expect(movingVm.vmId).toBe(big.id);
    expect(movingVm.progress).toMatchObject({ memoryBytes: 8192 * 1024 * 1024, state: 'running' });
    expect(moving.body.vms.map((v: any) => v.vmId).sort()).toEqual([big.id, mid.id, small.id].sort());
    const target = moving.body.target;
    expect(target.serverId).not.toBe(sourceServerId);
    expect(moving.body.source.serverId).toBe(sourceServerId);

    // The tenant sees one logical host that is migrating, without any physical detail (claim 3).
    const seen = await t.call('GET', `/v1/dedicated-hosts/${host.id}`, { token: tenant.token });
    expect(seen.body).toMatchObject({ id: host.id, state: 'migrating', migration: { id: migrationId, phase: 'migrating-vms' } });
    expect(JSON.stringify(seen.body)).not.toContain(sourceServerId);
    expect(JSON.stringify(seen.body)).not.toContain(target.serverId);
    // ...and another tenant learns nothing of it.
    expect((await t.call('GET', `/v1/dedicated-hosts/${host.id}`, { token: other.token })).status).toBe(404);
    const intrude = await t.call('POST', `/v1/dedicated-hosts/${host.id}/vms`, {
      token: other.token,
      body: { name: 'x', vcpus: 1, memoryMiB: 256, diskGiB: 5 },
    });
    expect(intrude.status).toBe(404);
    expect((await t.call('DELETE', `/v1/vms/${small.id}`, { token: other.token })).status).toBe(404);
    expect((await t.call('GET', `/v1/migrations/${migrationId}`, { token: tenant.token })).status).toBe(403);

    // 1f/6/7: a VM created now goes through the workflow's update and lands on the clone; its retry is deduplicated.
    const countsBefore = await t.counts();
    const newVmBody = { name: 'added mid-way', vcpus: 2, memoryMiB: 4096, diskGiB: 40 };
    const created = await t.call('POST', `/v1/dedicated-hosts/${host.id}/vms`, { token: tenant.token, body: newVmBody, idempotencyKey: 'mid-way-1' });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name: 'added mid-way', dedicatedHostId: host.id, state: 'running' });
    expect(created.body).not.toHaveProperty('incarnationId');
    const retried = await t.call('POST', `/v1/dedicated-hosts/${host.id}/vms`, { token: tenant.token, body: newVmBody, idempotencyKey: 'mid-way-1' });
    expect(retried).toMatchObject({ status: 201, body: created.body });
    expect(Number((await t.counts()).vms)).toBe(Number(countsBefore.vms) + 1);
    // Even if the key's stored answer were lost (say the API crashed before storing it), the retry derives the same
    // VM id and update id from the key, and the workflow answers a repeated update id with its first outcome.
    await t.sys.db.pool.query('DELETE FROM api_idempotency_keys WHERE key = $1', ['mid-way-1']);
    const rerun = await t.call('POST', `/v1/dedicated-hosts/${host.id}/vms`, { token: tenant.token, body: newVmBody, idempotencyKey: 'mid-way-1' });
    expect(rerun.status).toBe(201);
    expect(rerun.headers.get('idempotent-replayed')).toBeNull();
    expect(rerun.body).toEqual(created.body);
    expect(Number((await t.counts()).vms)).toBe(Number(countsBefore.vms) + 1);
    const placed = await t.call('GET', `/v1/vms/${created.body.id}`, { token: op });
    expect(placed.body).toMatchObject({ incarnationId: target.incarnationId, physicalServerId: target.serverId, dedicatedHostId: host.id });
    expect((await t.sys.agent(target.serverId).getVm(created.body.id))?.state).toBe('running');
    // Claim 7: what the host and its clone cannot hold together is refused, naming the resource; nothing is created.
    const tooBig = await t.call('POST', `/v1/dedicated-hosts/${host.id}/vms`, {
      token: tenant.token,
      body: { name: 'too big', vcpus: 2, memoryMiB: 60_000, diskGiB: 10 },
    });
    expect(tooBig.status).toBe(409);
    expect(tooBig.body.error).toMatchObject({ code: 'INSUFFICIENT_CAPACITY', field: 'memoryMiB' });
    expect(Number((await t.counts()).vms)).toBe(Number(countsBefore.vms) + 1);

    // Claim 8: delete a VM that is still waiting to move; it goes through the workflow.
    const waiting = (await t.call('GET', `/v1/migrations/${migrationId}`, { token: op })).body.vms.find((v: any) => v.state === 'pending');
    expect(waiting).toBeDefined();
    const del = await t.call('DELETE', `/v1/vms/${waiting.vmId}`, { token: tenant.token });
    expect(del).toMatchObject({ status: 200, body: { id: waiting.vmId, state: 'deleted', dedicatedHostId: host.id } });

    // The migration object shows all of it.
    const during = await t.call('GET', `/v1/migrations/${migrationId}`, { token: op });
    const stateOf = (id: string) => during.body.vms.find((v: any) => v.vmId === id)?.state;
    expect(stateOf(waiting.vmId)).toBe('deleted');
    expect(stateOf(created.body.id)).toBe('provisioned-on-clone');
    expect(during.body.vms.filter((v: any) => v.vmId === created.body.id)).toHaveLength(1);
    expect(during.body.requestsHandled).toBeGreaterThanOrEqual(2);
    // Tenants keep seeing every VM on their logical host, wherever it physically is.
    const list = await t.call('GET', `/v1/dedicated-hosts/${host.id}/vms`, { token: tenant.token });
    expect(list.body.vms.map((v: any) => v.id).sort()).toEqual([big.id, mid.id, small.id, created.body.id].filter((id) => id !== waiting.vmId).sort());
    for (const v of list.body.vms) expect(v).toMatchObject({ dedicatedHostId: host.id, state: 'running' });
    const listed = await eventually('listed as running', async () => {
      const r = await t.call('GET', `/v1/migrations?dedicatedHostId=${host.id}`, { token: op });
      return r.body.migrations?.some((m: any) => m.id === migrationId && m.workflowStatus === 'RUNNING') ? r : null;
    });
    expect(listed.status).toBe(200);

    // 1g/5: it completes; the object still answers afterwards.
    const done = await eventually(
      'migration completed',
      async () => {
        const r = await t.call('GET', `/v1/migrations/${migrationId}`, { token: op });
        return r.body?.workflowStatus === 'COMPLETED' ? r : null;
      },
      60_000,
      200,
    );
    expect(done.body.phase).toBe('completed');
    expect(done.body.counts).toMatchObject({ moved: 2, deleted: 1, 'provisioned-on-clone': 1, failed: 0 });
    expect(done.body.finishedAt).toEqual(expect.any(String));
    for (const v of done.body.vms) expect(v).not.toHaveProperty('progress');

    // Claim 3: the same host id, active, migration null; now on the clone's server.
    const after = await t.call('GET', `/v1/dedicated-hosts/${host.id}`, { token: tenant.token });
    expect(after.body).toMatchObject({ id: host.id, name: 'prod-db', state: 'active', migration: null, vmCount: 3, capacity: host.capacity });
    const afterOp = await t.call('GET', `/v1/dedicated-hosts/${host.id}`, { token: op });
    expect(afterOp.body.physicalServerId).toBe(target.serverId);
    const vmsAfter = await t.call('GET', `/v1/dedicated-hosts/${host.id}/vms`, { token: op });
    for (const v of vmsAfter.body.vms) expect(v).toMatchObject({ dedicatedHostId: host.id, physicalServerId: target.serverId, state: 'running' });
    // The old server goes back to the pool (the scheduler de-provisions it).
    await eventually('old server available', async () => {
      const r = await t.call('GET', '/v1/physical-servers', { token: op });
      return r.body.servers.find((s: any) => s.id === sourceServerId)?.state === 'available';
    });
    // A tenant's audit log tells the story without physical details.
    const events = await t.call('GET', `/v1/dedicated-hosts/${host.id}/events`, { token: tenant.token });
    const actions = events.body.events.map((e: any) => e.action);
    expect(actions).toEqual(expect.arrayContaining(['vm.provisioned_on_clone', 'vm.deleted']));
    expect(JSON.stringify(events.body)).not.toContain(target.serverId);
    expect(JSON.stringify(events.body)).not.toContain(sourceServerId);
    // Outside a migration, VMs take the normal path again.
    const later = await t.vm(tenant.token, host.id, { name: 'after' });
    expect((await t.call('GET', `/v1/vms/${later.id}`, { token: op })).body.physicalServerId).toBe(target.serverId);
  });
  it("without a policy the migration runs dhm's own schedule for the host's link; fields the operator gives win", async () => {
    const op = t.operatorToken;
    const tenant = await t.tenant('scheduled customer');
    const start = async (body: unknown) => {
      const host = await t.host(tenant.token, { name: `h-${Math.random().toString(36).slice(2, 8)}` });
      await t.vm(tenant.token, host.id, { name: 'a', memoryMiB: 1024 });
      const r = await t.call('POST', `/v1/dedicated-hosts/${host.id}/migrations`, { token: op, body });
      expect(r.status).toBe(202);
      const m = await eventually(
        'migration done',
        async () => {
          const g = await t.call('GET', `/v1/migrations/${r.body.id}`, { token: op });
          return ['completed', 'rolled-back', 'failed'].includes(g.body?.phase) ? g.body : null;
        },
        60_000,
        100,
      );
      expect(m.phase).toBe('completed');
      return m.policy as Record<string, unknown>;
    };
    const server = (await t.call('GET', '/v1/physical-servers', { token: op })).body.servers[0];
    const linkBytesPerSec = server.nicBandwidthBps / 8;
    // dhm's own schedule: a ceiling of MAX_AUTO_STREAMS moves (the workflow runs ⌈B/S⌉ of them from the link it
    // measures), the operator's downtime limit as the target, and measured inputs; the link figures are the fallback
    // from the test fleet's sim agents, which cap a stream at 40 % of the NIC.
    expect(await start({})).toMatchObject({
      maxParallel: MAX_AUTO_STREAMS,
      measureInputs: true,
      order: 'largest-first',
      maxDowntimeMs: 300,
      onVmFailure: 'retry-with-auto-converge',
      linkBytesPerSec,
      streamCapBytesPerSec: 0.4 * linkBytesPerSec,
      autoConvergeAboveDirtyRateMiBps: expect.any(Number),
    });
    const mixed = await start({ policy: { maxParallel: 1, maxDowntimeMs: 250 } });
    expect(mixed).toMatchObject({ maxParallel: 1, maxDowntimeMs: 250, order: 'largest-first', linkBytesPerSec });
  });
});

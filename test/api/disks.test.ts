import type { Fleet } from '../../common/fleet';
import { testFleet } from '../support/fleets';
import { eventually } from '../support/system';
import { startApiTestSystem, type ApiTestSystem } from './helpers';

/**
 * VM disks through the real API (issue 17): tenants' network volumes, VMs with local and network disks, and the
 * refusals — an unknown or another tenant's volume 404, local disks beyond the server's free storage 409 naming
 * diskGiB, a disk kind the host's servers cannot serve 409 — each changing nothing.
 */

/** The test fleet plus a zone whose servers do not reach a storage service (local disks only). */
function fleet(): Fleet {
  const f = testFleet({ servers: 5 });
  const std = f.resourceClasses.std!;
  return {
    ...f,
    zones: [...f.zones, 'zone-local'],
    servers: [
      ...f.servers,
      ...[1, 2].map((i) => ({
        id: `zone-local-std-${i}`,
        zone: 'zone-local',
        resourceClass: 'std',
        capacity: std,
        nicBandwidthBps: 10e9,
        agentPort: 0,
        backend: 'sim' as const,
        networkStorage: false,
      })),
    ],
  };
}

let t: ApiTestSystem;
let a: { id: string; token: string };
let b: { id: string; token: string };

beforeAll(async () => {
  t = await startApiTestSystem({ fleet: fleet(), timeScale: 500 });
  a = await t.tenant('disk tenant a');
  b = await t.tenant('disk tenant b');
});
afterAll(async () => {
  await t?.stop();
});

describe('volumes and disks through the API', () => {
  it('a tenant creates, lists, reads and deletes its own volumes; another tenant gets 404; operators name the tenant', async () => {
    const created = await t.call('POST', '/v1/volumes', { token: a.token, body: { name: 'pg-data', zone: 'zone-a', sizeGiB: 100 }, idempotencyKey: 'vol-1' });
    expect([created.status, created.body]).toEqual([
      201,
      expect.objectContaining({ name: 'pg-data', zone: 'zone-a', sizeGiB: 100, state: 'available', attachedVmId: null }),
    ]);
    expect(created.body.tenantId).toBeUndefined();
    const id = created.body.id;
    const replay = await t.call('POST', '/v1/volumes', { token: a.token, body: { name: 'pg-data', zone: 'zone-a', sizeGiB: 100 }, idempotencyKey: 'vol-1' });
    expect([replay.status, replay.body.id]).toEqual([201, id]);
    expect((await t.call('GET', '/v1/volumes', { token: a.token })).body.volumes.map((v: { id: string }) => v.id)).toEqual([id]);
    expect((await t.call('GET', '/v1/volumes', { token: b.token })).body.volumes).toEqual([]);
    for (const [method, token] of [
      ['GET', b.token],
      ['DELETE', b.token],
    ] as const) {
      const r = await t.call(method, `/v1/volumes/${id}`, { token });
      expect([method, r.status, r.body.error.code]).toEqual([method, 404, 'NOT_FOUND']);
    }
    const asOperator = await t.call('GET', `/v1/volumes/${id}`, { token: t.operatorToken });
    expect(asOperator.body).toMatchObject({ id, tenantId: a.id });
    const noTenant = await t.call('POST', '/v1/volumes', { token: t.operatorToken, body: { name: 'x', zone: 'zone-a', sizeGiB: 1 } });
    expect([noTenant.status, noTenant.body.error.field]).toEqual([400, 'tenantId']);
    const unknownTenant = await t.call('POST', '/v1/volumes', {
      token: t.operatorToken,
      body: { name: 'x', zone: 'zone-a', sizeGiB: 1, tenantId: 'tn-nobody' },
    });
    expect([unknownTenant.status, unknownTenant.body.error.field]).toEqual([404, 'tenantId']);
    const unknownZone = await t.call('POST', '/v1/volumes', { token: a.token, body: { name: 'x', zone: 'zone-nowhere', sizeGiB: 1 } });
    expect([unknownZone.status, unknownZone.body.error.field]).toEqual([404, 'zone']);
    const deleted = await t.call('DELETE', `/v1/volumes/${id}`, { token: a.token });
    expect([deleted.status, deleted.body.state]).toEqual([200, 'deleted']);
    expect((await t.call('GET', `/v1/volumes/${id}`, { token: a.token })).status).toBe(404);
  });

  it('a VM with a local and a network disk shows both; its volume is attached while it runs and free again once it is deleted', async () => {
    const host = await t.host(a.token, { name: 'disks' });
    const vol = (await t.call('POST', '/v1/volumes', { token: a.token, body: { name: 'shared', zone: 'zone-a', sizeGiB: 20 } })).body;
    const disks = [
      { name: 'root', kind: 'local', sizeGiB: 8 },
      { name: 'data', kind: 'network', volumeId: vol.id },
    ];
    const vm = await t.vm(a.token, host.id, { diskGiB: 10, disks });
    expect(vm.disks).toEqual(disks);
    expect((await t.call('GET', `/v1/vms/${vm.id}`, { token: a.token })).body.disks).toEqual(disks);
    expect((await t.call('GET', `/v1/volumes/${vol.id}`, { token: a.token })).body.attachedVmId).toBe(vm.id);
    // A VM created without disks shows its default one.
    const plain = await t.vm(a.token, host.id, { diskGiB: 6 });
    expect(plain.disks).toEqual([{ name: 'root', kind: 'local', sizeGiB: 6 }]);
    const busy = await t.call('DELETE', `/v1/volumes/${vol.id}`, { token: a.token });
    expect([busy.status, busy.body.error.code, busy.body.error.field]).toEqual([409, 'CONFLICT', 'volumeId']);
    expect((await t.call('DELETE', `/v1/vms/${vm.id}`, { token: a.token })).status).toBe(200);
    expect((await t.call('GET', `/v1/volumes/${vol.id}`, { token: a.token })).body.attachedVmId).toBeNull();
    expect((await t.call('DELETE', `/v1/volumes/${vol.id}`, { token: a.token })).status).toBe(200);
  });

  it("refused before anything starts, nothing changed: unknown or another tenant's volume 404, local disks beyond free storage 409 naming diskGiB, a kind the servers cannot serve 409, bad disk lists 400", async () => {
    const host = await t.host(a.token, { name: 'refusals' });
    const localOnly = await t.host(a.token, { name: 'no storage', zone: 'zone-local' });
    const theirs = (await t.call('POST', '/v1/volumes', { token: b.token, body: { name: 'theirs', zone: 'zone-a', sizeGiB: 5 } })).body;
    const mine = (await t.call('POST', '/v1/volumes', { token: a.token, body: { name: 'mine', zone: 'zone-local', sizeGiB: 5 } })).body;
    // Most of the host's 1000 GiB of local storage is taken: a VM asking for more than what is left is refused.
    await t.vm(a.token, host.id, { diskGiB: 900, disks: [{ name: 'root', kind: 'local', sizeGiB: 900 }] });
    const before = await t.counts();
    const create = (hostId: string, body: object) =>
      t.call('POST', `/v1/dedicated-hosts/${hostId}/vms`, { token: a.token, body: { name: 'refused', vcpus: 1, memoryMiB: 256, diskGiB: 10, ...body } });
    const net = (volumeId: string) => ({
      disks: [
        { name: 'root', kind: 'local', sizeGiB: 5 },
        { name: 'data', kind: 'network', volumeId },
      ],
    });
    const cases: Array<[string, Promise<{ status: number; body: any }>, number, string, string]> = [
      ['unknown volume', create(host.id, net('vol-nothing')), 404, 'NOT_FOUND', 'disks.1.volumeId'],
      ["another tenant's volume", create(host.id, net(theirs.id)), 404, 'NOT_FOUND', 'disks.1.volumeId'],
      ['a volume of another zone', create(host.id, net(mine.id)), 409, 'CONFLICT', 'disks.1.volumeId'],
      [
        'more local storage than is free',
        create(host.id, { diskGiB: 101, disks: [{ name: 'root', kind: 'local', sizeGiB: 101 }] }),
        409,
        'INSUFFICIENT_CAPACITY',
        'diskGiB',
      ],
      ['a network disk on servers without storage', create(localOnly.id, net(mine.id)), 409, 'CONFLICT', 'disks.1.kind'],
      ['local disks beyond diskGiB', create(host.id, { disks: [{ name: 'root', kind: 'local', sizeGiB: 11 }] }), 400, 'INVALID_INPUT', 'disks'],
      [
        'two disks of one name',
        create(host.id, {
          disks: [
            { name: 'a', kind: 'local', sizeGiB: 1 },
            { name: 'a', kind: 'local', sizeGiB: 1 },
          ],
        }),
        400,
        'INVALID_INPUT',
        'disks.1.name',
      ],
      ['an unknown disk kind', create(host.id, { disks: [{ name: 'a', kind: 'tape', sizeGiB: 1 }] }), 400, 'INVALID_INPUT', 'disks.0.kind'],
      [
        'nine disks',
        create(host.id, { disks: Array.from({ length: 9 }, (_, i) => ({ name: `d${i}`, kind: 'local', sizeGiB: 1 })) }),
        400,
        'INVALID_INPUT',
        'disks',
      ],
    ];
    for (const [what, p, status, code, field] of cases) {
      const r = await p;
      expect([what, r.status, r.body?.error?.code, r.body?.error?.field]).toEqual([what, status, code, field]);
    }
    // No physical placement in what the tenant reads.
    const kind = await create(localOnly.id, net(mine.id));
    expect(kind.body.error.message).not.toMatch(/zone-local-std/);
    expect(await t.counts()).toEqual(before);
    // The same disks on a server that serves them work.
    const ok = await create(localOnly.id, { disks: [{ name: 'root', kind: 'local', sizeGiB: 10 }] });
    expect(ok.status).toBe(201);
  });
});

describe('a host with disks migrates; de-provisioning wipes the source before it returns to the pool', () => {
  it('disk figures in the migration object, the volume stays attached, and the old server is wiped before it is available again', async () => {
    const op = t.operatorToken;
    const host = await t.host(a.token, { name: 'moving disks' });
    const vol = (await t.call('POST', '/v1/volumes', { token: a.token, body: { name: 'follows', zone: 'zone-a', sizeGiB: 5 } })).body;
    const local = await t.vm(a.token, host.id, {
      name: 'local',
      memoryMiB: 512,
      diskGiB: 10,
      workload: { dirtyRateMiBps: 1, workingSetMiB: 16, diskUsedGiB: 2, diskWriteMiBps: 2 } as never,
    });
    const net = await t.vm(a.token, host.id, { name: 'net', memoryMiB: 512, diskGiB: 1, disks: [{ name: 'data', kind: 'network', volumeId: vol.id }] });
    const source = (await t.call('GET', `/v1/dedicated-hosts/${host.id}`, { token: op })).body.physicalServerId;
    const sourceServer = await t.sys.inventory.getServer(source);
    const sourceAgent = await t.sys.agents.forServer(source);
    expect((await sourceAgent.info()).localStorage.diskBytes).toBe(10 * 2 ** 30);
    const started = await t.call('POST', `/v1/dedicated-hosts/${host.id}/migrations`, { token: op, body: {} });
    expect(started.status).toBe(202);
    const done = await eventually(
      'the migration to end',
      async () => {
        const g = await t.call('GET', `/v1/migrations/${started.body.id}`, { token: op });
        return ['completed', 'rolled-back', 'failed'].includes(g.body?.phase) ? g.body : null;
      },
      60_000,
      100,
    );
    expect(done.phase).toBe('completed');
    const byId = new Map<string, any>(done.vms.map((v: any) => [v.vmId, v]));
    expect(byId.get(local.id)).toMatchObject({ state: 'moved', diskMiB: 2048, figures: { diskBytesCopied: expect.any(Number) } });
    expect(byId.get(local.id).figures.diskBytesCopied).toBeGreaterThanOrEqual(2 * 2 ** 30);
    expect(byId.get(net.id).figures.diskBytesCopied).toBeUndefined();
    expect((await t.call('GET', `/v1/volumes/${vol.id}`, { token: a.token })).body.attachedVmId).toBe(net.id);
    // The scheduler tears the old incarnation down: the copy left on the source is wiped, then the server is free.
    const freed = await eventually('the old server back in the pool', async () => (await t.sys.inventory.getServer(source)).state === 'available', 60_000, 100);
    expect(freed).toBe(true);
    expect((await sourceAgent.info()).localStorage).toEqual({ diskBytes: 0, wipedBytes: 10 * 2 ** 30 });
    expect(sourceServer.state).toBe('allocated');
  });
});

import type { TestDatabase } from '../support/database';
import type { Inventory } from '../../inventory';
import { dbState, expectInventoryError, freshZone, inventoryPerFile, migrateToClone, migrationId, tenantWithHost, vmId } from './helpers';

/** Network volumes (issue 17): a tenant's aggregate; VMs attach them as network disks; refusals change nothing. */

let db: TestDatabase;
let inv: Inventory;

inventoryPerFile((d, i) => {
  db = d;
  inv = i;
});

const small = { vcpus: 1, memoryMiB: 1024, diskGiB: 10 };

describe('volumes', () => {
  test("create, list, get and delete are the tenant's own; another tenant's volume answers like a missing one", async () => {
    const { zone } = await freshZone(inv, { std: 1 });
    const a = await inv.createTenant('a');
    const b = await inv.createTenant('b');
    const vol = await inv.createVolume({ tenantId: a.id, name: 'data', zone, sizeGiB: 50, volumeId: 'vol-a1', actor: `tenant:${a.id}` });
    expect(vol).toMatchObject({ id: 'vol-a1', tenantId: a.id, zone, name: 'data', sizeGiB: 50, state: 'available', attachedVmId: null, deletedAt: null });
    // Idempotent by id; the same id for something else is a conflict.
    expect(await inv.createVolume({ tenantId: a.id, name: 'data', zone, sizeGiB: 50, volumeId: 'vol-a1', actor: 'x' })).toEqual(vol);
    await expectInventoryError(inv.createVolume({ tenantId: a.id, name: 'data', zone, sizeGiB: 51, volumeId: 'vol-a1', actor: 'x' }), 'CONFLICT', 'volumeId');
    await expectInventoryError(inv.createVolume({ tenantId: a.id, name: 'data', zone: 'no-such-zone', sizeGiB: 1, actor: 'x' }), 'NOT_FOUND', 'zone');
    await expectInventoryError(inv.createVolume({ tenantId: a.id, name: 'data', zone, sizeGiB: 0, actor: 'x' }), 'INVALID_INPUT', 'sizeGiB');

    expect((await inv.listVolumes({ tenantId: a.id })).map((v) => v.id)).toEqual(['vol-a1']);
    expect(await inv.listVolumes({ tenantId: b.id })).toEqual([]);
    expect((await inv.listVolumes()).map((v) => v.id)).toContain('vol-a1');
    expect(await inv.getVolume('vol-a1', { tenantId: a.id })).toEqual(vol);
    await expectInventoryError(inv.getVolume('vol-a1', { tenantId: b.id }), 'NOT_FOUND', 'volumeId');
    await expectInventoryError(inv.deleteVolume({ volumeId: 'vol-a1', tenantId: b.id, actor: 'x' }), 'NOT_FOUND', 'volumeId');

    const deleted = await inv.deleteVolume({ volumeId: 'vol-a1', tenantId: a.id, actor: `tenant:${a.id}` });
    expect(deleted).toMatchObject({ state: 'deleted', deletedAt: expect.any(String) });
    await expectInventoryError(inv.getVolume('vol-a1'), 'NOT_FOUND', 'volumeId');
    await expectInventoryError(inv.deleteVolume({ volumeId: 'vol-a1', actor: 'x' }), 'NOT_FOUND', 'volumeId');
    const { rows } = await db.pool.query(`SELECT action FROM audit_events WHERE entity_type = 'volume' AND entity_id = 'vol-a1' ORDER BY id`);
    expect(rows.map((r) => r.action)).toEqual(['volume.created', 'volume.deleted']);
  });

  test('a VM attaches the volumes its disks name, keeps its disks as given, and gives the volumes back when deleted', async () => {
    const { zone } = await freshZone(inv, { std: 1 });
    const { tenantId, host } = await tenantWithHost(inv, zone);
    await inv.createVolume({ tenantId, name: 'data', zone, sizeGiB: 50, volumeId: 'vol-d1', actor: 'x' });
    const disks = [
      { name: 'root', kind: 'local' as const, sizeGiB: 8 },
      { name: 'data', kind: 'network' as const, volumeId: 'vol-d1' },
    ];
    const id = vmId();
    const vm = await inv.placeVm({ vmId: id, tenantId, dedicatedHostId: host.id, name: 'db', spec: { ...small, disks }, actor: 'x' });
    expect(vm.disks).toEqual(disks);
    expect(JSON.stringify((await inv.getVm(id)).disks)).toBe(JSON.stringify(disks)); // the spec's key order, not jsonb's
    expect((await inv.getVolume('vol-d1')).attachedVmId).toBe(id);
    // A retry with the same request is the first answer; another disk list under the same id is a conflict.
    expect((await inv.placeVm({ vmId: id, tenantId, dedicatedHostId: host.id, name: 'db', spec: { ...small, disks }, actor: 'x' })).id).toBe(id);
    await expectInventoryError(inv.placeVm({ vmId: id, tenantId, dedicatedHostId: host.id, name: 'db', spec: small, actor: 'x' }), 'CONFLICT', 'vmId');
    // Attached: the volume cannot be deleted, nor attached by a second VM.
    await expectInventoryError(inv.deleteVolume({ volumeId: 'vol-d1', tenantId, actor: 'x' }), 'CONFLICT', 'volumeId');
    await expectInventoryError(
      inv.placeVm({ vmId: vmId(), tenantId, dedicatedHostId: host.id, name: 'db2', spec: { ...small, disks: [disks[1]!] }, actor: 'x' }),
      'CONFLICT',
      'disks.0.volumeId',
    );
    await inv.deleteVm({ vmId: id, tenantId, actor: 'x' });
    expect((await inv.getVolume('vol-d1')).attachedVmId).toBeNull();
    // VMs without disks keep working as before: no disks recorded, the default applies.
    const plain = await inv.placeVm({ vmId: vmId(), tenantId, dedicatedHostId: host.id, name: 'plain', spec: small, actor: 'x' });
    expect(plain.disks).toBeUndefined();
  });

  test("refusals change nothing: unknown or another tenant's volume 404, another zone's 409, local disks beyond free storage 409 naming diskGiB", async () => {
    const { zone } = await freshZone(inv, { std: 1 });
    const other = await freshZone(inv, { std: 1 });
    const { tenantId, host } = await tenantWithHost(inv, zone);
    const stranger = await inv.createTenant('stranger');
    await inv.createVolume({ tenantId: stranger.id, name: 'theirs', zone, sizeGiB: 5, volumeId: 'vol-theirs', actor: 'x' });
    await inv.createVolume({ tenantId, name: 'far', zone: other.zone, sizeGiB: 5, volumeId: 'vol-far', actor: 'x' });
    const before = await dbState(db.pool);
    const place = (spec: object) =>
      inv.placeVm({ vmId: vmId(), tenantId, dedicatedHostId: host.id, name: 'x', spec: { ...small, ...spec } as never, actor: 'x' });
    const net = (volumeId: string) => ({
      disks: [
        { name: 'root', kind: 'local', sizeGiB: 1 },
        { name: 'data', kind: 'network', volumeId },
      ],
    });
    await expectInventoryError(place(net('vol-nope')), 'NOT_FOUND', 'disks.1.volumeId');
    await expectInventoryError(place(net('vol-theirs')), 'NOT_FOUND', 'disks.1.volumeId');
    await expectInventoryError(place(net('vol-far')), 'CONFLICT', 'disks.1.volumeId');
    // The host's whole local storage is 2000 GiB: a VM reserving more is refused on diskGiB.
    await expectInventoryError(place({ diskGiB: 2001, disks: [{ name: 'root', kind: 'local', sizeGiB: 2001 }] }), 'INSUFFICIENT_CAPACITY', 'diskGiB');
    // Local disks larger than the diskGiB the VM reserves: refused by the spec's rule, naming disks.
    await expectInventoryError(place({ disks: [{ name: 'root', kind: 'local', sizeGiB: 11 }] }), 'INVALID_INPUT', 'spec.disks');
    expect(await dbState(db.pool)).toEqual(before);
  });

  test('a volume stays attached to its VM through a migration and comes back when the VM is found lost', async () => {
    const { zone } = await freshZone(inv, { std: 2 });
    const { tenantId, host } = await tenantWithHost(inv, zone);
    await inv.createVolume({ tenantId, name: 'data', zone, sizeGiB: 5, volumeId: 'vol-m1', actor: 'x' });
    const id = vmId();
    await inv.placeVm({
      vmId: id,
      tenantId,
      dedicatedHostId: host.id,
      name: 'db',
      spec: { ...small, disks: [{ name: 'data', kind: 'network', volumeId: 'vol-m1' }] },
      actor: 'x',
    });
    const mig = migrationId();
    const { clone } = await migrateToClone(inv, host.id, mig);
    expect((await inv.getVm(id)).incarnationId).toBe(clone.id);
    expect((await inv.getVolume('vol-m1')).attachedVmId).toBe(id);
    await inv.markVmLost({ vmId: id, migrationId: mig, reason: 'test', actor: 'x' });
    expect((await inv.getVolume('vol-m1')).attachedVmId).toBeNull();
  });
});

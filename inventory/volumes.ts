import type { PoolClient } from 'pg';
import { networkVolumeIds, vmDisks, type Disk } from '../common/vm-spec';
import { audit } from './audit';
import { forUpdate, iso, isoNN, newId } from './db';
import { InventoryError, notFound } from './errors';
import { visibleTo } from './tenant-visibility';
import type { Volume } from './types';

/**
 * Network volumes (table `volumes`): a tenant's volume in one zone's storage service, which every server of the zone
 * reaches. A VM names it as a `network` disk; placing the VM attaches it (to that VM only) and ending the VM detaches
 * it, so a volume follows its VM from server to server with nothing copied. Another tenant's volume answers exactly
 * like a missing one.
 */

export interface VolumeRow {
  id: string;
  tenant_id: string;
  zone: string;
  name: string;
  size_gib: number;
  state: Volume['state'];
  attached_vm_id: string | null;
  created_at: Date;
  updated_at: Date;
  deleted_at: Date | null;
}

export const toVolume = (r: VolumeRow): Volume => ({
  id: r.id,
  tenantId: r.tenant_id,
  zone: r.zone,
  name: r.name,
  sizeGiB: r.size_gib,
  state: r.state,
  attachedVmId: r.attached_vm_id,
  createdAt: isoNN(r.created_at),
  deletedAt: iso(r.deleted_at),
});

async function volumeRow(c: PoolClient, id: string, lock: boolean): Promise<VolumeRow | undefined> {
  const { rows } = await c.query<VolumeRow>(`SELECT * FROM volumes WHERE id = $1${forUpdate(lock)}`, [id]);
  return rows[0];
}

export interface CreateVolumeInput {
  tenantId: string;
  name: string;
  zone: string;
  sizeGiB: number;
  /** Optional caller-chosen id: a retry with the same id returns the same volume. */
  volumeId?: string;
  actor: string;
}

/** A new volume of the zone's storage service. Idempotent by `volumeId`. */
export async function createVolume(c: PoolClient, p: CreateVolumeInput): Promise<Volume> {
  const id = p.volumeId ?? newId('vol');
  const prev = await volumeRow(c, id, false);
  if (prev) {
    if (prev.tenant_id === p.tenantId && prev.name === p.name && prev.zone === p.zone && prev.size_gib === p.sizeGiB && prev.state === 'available')
      return toVolume(prev);
    throw new InventoryError('CONFLICT', `volumeId: ${id} already names a different volume`, 'volumeId');
  }
  const zone = await c.query('SELECT 1 FROM zones WHERE id = $1', [p.zone]);
  if (zone.rowCount === 0) throw notFound('zone', p.zone, 'zone');
  const { rows } = await c.query<VolumeRow>(`INSERT INTO volumes (id, tenant_id, zone, name, size_gib) VALUES ($1, $2, $3, $4, $5) RETURNING *`, [
    id,
    p.tenantId,
    p.zone,
    p.name,
    p.sizeGiB,
  ]);
  await audit(c, { actor: p.actor, action: 'volume.created', entityType: 'volume', entityId: id, details: { name: p.name, zone: p.zone, sizeGiB: p.sizeGiB } });
  return toVolume(rows[0]!);
}

export async function getVolume(c: PoolClient, id: string, tenantId?: string): Promise<Volume> {
  const row = await volumeRow(c, id, false);
  if (!visibleTo(row, tenantId) || row.state === 'deleted') throw notFound('volume', id, 'volumeId');
  return toVolume(row);
}

/** The volumes that are not deleted, oldest first (a tenant: its own). */
export async function listVolumes(c: PoolClient, tenantId?: string): Promise<Volume[]> {
  const { rows } = await c.query<VolumeRow>(
    `SELECT * FROM volumes WHERE state = 'available' AND ($1::text IS NULL OR tenant_id = $1) ORDER BY created_at, id`,
    [tenantId ?? null],
  );
  return rows.map(toVolume);
}

/** Deletes a volume no VM has attached (CONFLICT naming the VM otherwise). A repeat answers NOT_FOUND, like a host's. */
export async function deleteVolume(c: PoolClient, p: { volumeId: string; tenantId?: string; actor: string }): Promise<Volume> {
  const row = await volumeRow(c, p.volumeId, true);
  if (!visibleTo(row, p.tenantId) || row.state === 'deleted') throw notFound('volume', p.volumeId, 'volumeId');
  if (row.attached_vm_id)
    throw new InventoryError('CONFLICT', `volumeId: volume ${row.id} is attached to VM ${row.attached_vm_id}; delete the VM first`, 'volumeId');
  const { rows } = await c.query<VolumeRow>(`UPDATE volumes SET state = 'deleted', deleted_at = now(), updated_at = now() WHERE id = $1 RETURNING *`, [row.id]);
  await audit(c, { actor: p.actor, action: 'volume.deleted', entityType: 'volume', entityId: row.id, details: { name: row.name } });
  return toVolume(rows[0]!);
}

/**
 * Attaches the network volumes a new VM names, under their row locks: each must be the VM's tenant's (else NOT_FOUND,
 * as if missing), in the host's zone, and attached to no other VM. Fields are named as in the API's VM body
 * (`disks.N.volumeId`), as the capacity refusals name `diskGiB`. Runs inside the VM's placement, so a refusal places nothing.
 */
export async function attachVolumes(c: PoolClient, p: { vmId: string; tenantId: string; zone: string; disks: Disk[] | undefined }): Promise<void> {
  if (!networkVolumeIds(p).length) return;
  const disks = vmDisks({ diskGiB: 1, disks: p.disks });
  for (const [i, d] of disks.entries()) {
    if (d.kind !== 'network') continue;
    const field = `disks.${i}.volumeId`;
    const row = await volumeRow(c, d.volumeId, true);
    if (!visibleTo(row, p.tenantId) || row.state === 'deleted') throw notFound('volume', d.volumeId, field);
    if (row.zone !== p.zone) throw new InventoryError('CONFLICT', `${field}: volume ${row.id} is in zone ${row.zone}; the host is in zone ${p.zone}`, field);
    if (row.attached_vm_id && row.attached_vm_id !== p.vmId)
      throw new InventoryError('CONFLICT', `${field}: volume ${row.id} is attached to VM ${row.attached_vm_id}`, field);
    await c.query(`UPDATE volumes SET attached_vm_id = $2, updated_at = now() WHERE id = $1`, [row.id, p.vmId]);
  }
}

/** Gives back the volumes a VM had attached (it was deleted or found lost). */
export async function detachVolumesOf(c: PoolClient, vmId: string): Promise<void> {
  await c.query(`UPDATE volumes SET attached_vm_id = NULL, updated_at = now() WHERE attached_vm_id = $1`, [vmId]);
}

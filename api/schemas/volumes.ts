import { z } from 'zod';
import { MAX_DISK_GIB } from '../../common/resources';
import { volumeIdSchema } from '../../common/vm-spec';
import { emptyQuery, errorReply, idSchema, intAmount, isoTime, textSchema } from './common';
import type { RouteSpec } from './route-spec';

/** Network volumes of a zone's storage service. */

export const volumeParams = z.object({ id: volumeIdSchema.describe('volume id') }).strict();

export const createVolumeBody = z
  .object({
    name: textSchema(200),
    zone: idSchema.describe("the zone whose storage service holds it; VMs of the zone's hosts may attach it"),
    sizeGiB: z.number().int().min(1).max(MAX_DISK_GIB),
    tenantId: idSchema.optional().describe('operators only (required for them): the tenant the volume is for'),
  })
  .strict();

/** A network volume as its tenant sees it. */
export const tenantVolumeView = z.object({
  id: z.string(),
  name: z.string(),
  zone: z.string(),
  sizeGiB: intAmount,
  state: z.enum(['available', 'deleted']),
  attachedVmId: z.string().nullable().describe('the running VM that has it as a network disk, or null'),
  createdAt: isoTime,
  deletedAt: isoTime.nullable(),
});

export const operatorVolumeView = tenantVolumeView.extend({ tenantId: z.string() });

const volumeViewDoc = tenantVolumeView.extend({ tenantId: z.string().optional().describe('operators only') });

export const volumeListReply = z.object({ volumes: z.array(volumeViewDoc) });

const E = errorReply;

export const volumeRoutes = {
  createVolume: {
    method: 'POST',
    url: '/v1/volumes',
    summary: "Create a network volume in a zone's storage service; a VM attaches it as a network disk (nothing is copied when its host moves)",
    access: 'any',
    body: createVolumeBody,
    idempotent: true,
    rules: [
      { rule: 'requiredFor', principal: 'operator', field: 'tenantId', message: 'required when an operator creates a volume' },
      { rule: 'forbiddenFor', principal: 'tenant', field: 'tenantId', message: 'a tenant creates volumes for itself; only operators name the tenant' },
    ],
    replies: { 201: volumeViewDoc, 404: E, 409: E },
  },
  listVolumes: {
    method: 'GET',
    url: '/v1/volumes',
    summary: 'Network volumes that are not deleted (tenants: their own)',
    access: 'any',
    query: emptyQuery,
    replies: { 200: volumeListReply },
  },
  getVolume: {
    method: 'GET',
    url: '/v1/volumes/:id',
    summary: 'One network volume',
    access: 'any',
    params: volumeParams,
    query: emptyQuery,
    replies: { 200: volumeViewDoc, 404: E },
  },
  deleteVolume: {
    method: 'DELETE',
    url: '/v1/volumes/:id',
    summary: 'Delete a network volume no VM has attached',
    access: 'any',
    params: volumeParams,
    query: emptyQuery,
    idempotent: true,
    replies: { 200: volumeViewDoc, 404: E, 409: E },
  },
} satisfies Record<string, RouteSpec>;

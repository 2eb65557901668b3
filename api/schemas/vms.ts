import { z } from 'zod';
import { resourcesSchema } from '../../common/resources';
import { diskSchema, disksSchema, withVmSpecRules, workloadSchema } from '../../common/vm-spec';
import { emptyQuery, errorReply, idSchema, intAmount, isoTime, queryBool, textSchema } from './common';
import { hostParams } from './hosts';
import type { RouteSpec } from './route-spec';

/** VMs of a dedicated host. */

export const vmParams = z.object({ id: idSchema.describe('VM id') }).strict();

export const vmsQuery = z.object({ includeDeleted: queryBool.optional() }).strict();

export const createVmBody = withVmSpecRules(
  z
    .object({
      // 128: the migration workflow's limit, so a request is valid whether or not the host is migrating.
      name: textSchema(128),
      ...resourcesSchema.shape,
      workload: workloadSchema.optional().describe('sim backend: how the guest dirties memory and writes its disks'),
      disks: disksSchema.optional(),
    })
    .strict(),
);

export const tenantVmView = z.object({
  id: z.string(),
  name: z.string(),
  dedicatedHostId: z.string().describe('the logical host, always (also while and after it migrates)'),
  vcpus: intAmount,
  memoryMiB: intAmount,
  diskGiB: intAmount,
  workload: z.record(z.string(), z.unknown()),
  disks: z.array(diskSchema).describe('as normalized: a VM created without disks has one local disk "root" of diskGiB'),
  state: z
    .enum(['running', 'deleted', 'lost'])
    .describe('lost: no server runs it any more (its server failed while the host migrated); delete it to close the record'),
  createdAt: isoTime,
  deletedAt: isoTime.nullable(),
  lostReason: z.string().optional(),
});

export const operatorVmView = tenantVmView.extend({
  tenantId: z.string(),
  incarnationId: z.string(),
  physicalServerId: z.string().nullable(),
});

const vmViewDoc = tenantVmView.extend({
  tenantId: z.string().optional().describe('operators only'),
  incarnationId: z.string().optional().describe('operators only: the physical incarnation it runs on'),
  physicalServerId: z.string().nullable().optional().describe('operators only'),
});

export const vmListReply = z.object({ vms: z.array(vmViewDoc) });

const E = errorReply;

export const vmRoutes = {
  listVms: {
    method: 'GET',
    url: '/v1/dedicated-hosts/:id/vms',
    summary: 'The VMs of a dedicated host',
    access: 'any',
    params: hostParams,
    query: vmsQuery,
    replies: { 200: vmListReply, 404: E },
  },
  createVm: {
    method: 'POST',
    url: '/v1/dedicated-hosts/:id/vms',
    summary: 'Create a VM; while the host migrates it goes through the migration and lands on the clone',
    access: 'any',
    params: hostParams,
    body: createVmBody,
    idempotent: true,
    replies: { 201: vmViewDoc, 404: E, 409: E },
  },
  getVm: {
    method: 'GET',
    url: '/v1/vms/:id',
    summary: 'One VM',
    access: 'any',
    params: vmParams,
    query: emptyQuery,
    replies: { 200: vmViewDoc, 404: E },
  },
  deleteVm: {
    method: 'DELETE',
    url: '/v1/vms/:id',
    summary: 'Delete a VM (while its host migrates: through the migration, wherever the VM is)',
    access: 'any',
    params: vmParams,
    query: emptyQuery,
    idempotent: true,
    replies: { 200: vmViewDoc, 404: E, 409: E },
  },
} satisfies Record<string, RouteSpec>;

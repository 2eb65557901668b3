import { z } from 'zod';
import { emptyQuery, errorReply, idSchema, isoTime, phaseSchema, resourcesView, textSchema } from './common';
import type { RouteSpec } from './route-spec';

/** Dedicated hosts: the tenant's one logical host, and the operator's view with its placement. */

export const hostParams = z.object({ id: idSchema.describe('dedicated host id') }).strict();

export const createHostBody = z
  .object({
    name: textSchema(200),
    zone: idSchema,
    resourceClass: idSchema,
    tenantId: idSchema.optional().describe('operators only (required for them): the tenant the host is for'),
  })
  .strict();

export const hostDeletedReply = z.object({
  id: z.string(),
  deleted: z.literal(true),
  deletedAt: isoTime,
});

export const migrationRef = z
  .object({ id: z.string(), phase: z.union([phaseSchema, z.literal('unknown')]) })
  .nullable()
  .describe('the running migration of the host, or null');

/** A dedicated host as its tenant sees it: one logical host, no physical placement (claim 3). */
export const tenantHostView = z.object({
  id: z.string(),
  name: z.string(),
  zone: z.string(),
  resourceClass: z.string(),
  state: z.enum(['active', 'migrating']),
  capacity: resourcesView,
  available: resourcesView,
  vmCount: z.number().int(),
  migration: migrationRef,
  createdAt: isoTime,
});

export const operatorHostView = tenantHostView.extend({
  tenantId: z.string(),
  physicalServerId: z.string().describe('operators only: the server of the current incarnation'),
});

/** For the document: the operator-only fields are absent for tenants. */
const hostViewDoc = tenantHostView.extend({
  tenantId: z.string().optional().describe('operators only'),
  physicalServerId: z.string().optional().describe('operators only: the server of the current incarnation'),
});

export const hostListReply = z.object({ hosts: z.array(hostViewDoc) });

const E = errorReply;

export const hostRoutes = {
  createHost: {
    method: 'POST',
    url: '/v1/dedicated-hosts',
    summary: 'Create a dedicated host on a free server of the zone and resource class',
    access: 'any',
    body: createHostBody,
    idempotent: true,
    rules: [
      { rule: 'requiredFor', principal: 'operator', field: 'tenantId', message: 'required when an operator creates a host' },
      { rule: 'forbiddenFor', principal: 'tenant', field: 'tenantId', message: 'a tenant creates hosts for itself; only operators name the tenant' },
    ],
    replies: { 201: hostViewDoc, 404: E, 409: E },
  },
  listHosts: {
    method: 'GET',
    url: '/v1/dedicated-hosts',
    summary: 'Dedicated hosts (tenants: their own)',
    access: 'any',
    query: emptyQuery,
    replies: { 200: hostListReply },
  },
  getHost: {
    method: 'GET',
    url: '/v1/dedicated-hosts/:id',
    summary: 'One dedicated host',
    access: 'any',
    params: hostParams,
    query: emptyQuery,
    replies: { 200: hostViewDoc },
  },
  deleteHost: {
    method: 'DELETE',
    url: '/v1/dedicated-hosts/:id',
    summary: 'Delete an empty dedicated host that is not migrating; its server goes to the scheduler to be de-provisioned',
    access: 'any',
    params: hostParams,
    query: emptyQuery,
    idempotent: true,
    replies: { 200: hostDeletedReply, 409: E },
  },
} satisfies Record<string, RouteSpec>;

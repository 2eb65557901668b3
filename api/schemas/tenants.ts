import { z } from 'zod';
import { emptyQuery, errorReply, idSchema, isoTime, textSchema } from './common';
import type { RouteSpec } from './route-spec';

/** Tenants: creation, quotas and their bearer tokens (operators). */

export const tenantParams = z.object({ id: idSchema.describe('tenant id') }).strict();

export const createTenantBody = z.object({ name: textSchema(200) }).strict();

/** A quota: a whole number, or null to go back to the default. */
const quotaField = (min: number, what: string) => z.number().int().min(min).max(100_000).nullable().optional().describe(`${what}; null: back to the default`);

export const setQuotasBody = z
  .object({
    hostsPerZoneClass: quotaField(0, 'dedicated hosts per zone and resource class'),
    vmsPerHost: quotaField(0, 'VMs per dedicated host'),
    requestsPerSecond: quotaField(1, 'API requests per second of the tenant’s token (bursts of twice this)'),
  })
  .strict();

export const tenantCreatedReply = z.object({
  id: z.string(),
  name: z.string(),
  token: z.string().describe('the bearer token of the tenant; shown once, stored only as a hash'),
  createdAt: isoTime,
});

export const tenantQuotasReply = z.object({
  tenantId: z.string(),
  hostsPerZoneClass: z.number().int(),
  vmsPerHost: z.number().int(),
  requestsPerSecond: z.number().int(),
  updatedAt: isoTime.nullable().describe('when the operator last set one; null: all defaults'),
});

export const tenantTokenRevokedReply = z.object({ id: z.string(), revoked: z.literal(true), revokedAt: isoTime });

const E = errorReply;

export const tenantRoutes = {
  createTenant: {
    method: 'POST',
    url: '/v1/tenants',
    summary: 'Create a tenant; its token is shown once',
    access: 'operator',
    body: createTenantBody,
    idempotent: true,
    replies: { 201: tenantCreatedReply, 409: E },
  },
  getTenantQuotas: {
    method: 'GET',
    url: '/v1/tenants/:id/quotas',
    summary: 'A tenant’s quotas (defaults filled in); a tenant may read its own',
    access: 'any',
    params: tenantParams,
    query: emptyQuery,
    replies: { 200: tenantQuotasReply, 404: E },
  },
  setTenantQuotas: {
    method: 'POST',
    url: '/v1/tenants/:id/quotas',
    summary: 'Raise (or lower, or reset with null) a tenant’s quotas; the others are kept',
    access: 'operator',
    params: tenantParams,
    body: setQuotasBody,
    idempotent: true,
    replies: { 200: tenantQuotasReply, 404: E },
  },
  rotateTenantToken: {
    method: 'POST',
    url: '/v1/tenants/:id/token/rotate',
    summary: 'A new token for the tenant, shown once; the old one stops working at once',
    access: 'operator',
    params: tenantParams,
    body: z.object({}).strict(),
    bodyOptional: true,
    idempotent: true,
    replies: { 200: tenantCreatedReply, 404: E },
  },
  revokeTenantToken: {
    method: 'POST',
    url: '/v1/tenants/:id/token/revoke',
    summary: 'No token of the tenant works from now on (until a rotation); its hosts stay',
    access: 'operator',
    params: tenantParams,
    body: z.object({}).strict(),
    bodyOptional: true,
    idempotent: true,
    replies: { 200: tenantTokenRevokedReply, 404: E },
  },
} satisfies Record<string, RouteSpec>;

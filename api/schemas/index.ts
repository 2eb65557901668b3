import { eventRoutes } from './events';
import { healthRoutes } from './health';
import { hostRoutes } from './hosts';
import { migrationRoutes } from './migrations';
import type { RouteSpec } from './route-spec';
import { serverRoutes } from './servers';
import { tenantRoutes } from './tenants';
import { vmRoutes } from './vms';
import { volumeRoutes } from './volumes';

/**
 * Every request and reply of the HTTP API, one module per resource. Route modules validate with these (requests) and
 * serialize through them (replies: zod's default object mode strips undeclared keys, so a tenant view can never carry
 * a field it does not declare, such as a physical server id). `openapi.ts` turns the `routes` catalog into the
 * OpenAPI document served at /openapi.json, in the order below.
 */

export * from './common';
export * from './route-spec';
export * from './health';
export * from './tenants';
export * from './servers';
export * from './hosts';
export * from './vms';
export * from './events';
export * from './volumes';
export * from './migrations';

export const routes = {
  ...healthRoutes,
  ...tenantRoutes,
  ...serverRoutes,
  ...hostRoutes,
  ...vmRoutes,
  ...eventRoutes,
  ...volumeRoutes,
  ...migrationRoutes,
} satisfies Record<string, RouteSpec>;

export type RouteName = keyof typeof routes;

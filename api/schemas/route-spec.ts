import { z } from 'zod';
import { errorReply } from './common';

/** What a route of the catalog declares, and the answers every route of its kind has beyond its own. */

/** Who may call a route: anyone, operators only, or any authenticated principal (tenants see their own). */
export type Access = 'public' | 'operator' | 'any';

export interface RouteSpec {
  method: 'GET' | 'POST' | 'DELETE';
  url: string;
  summary: string;
  access: Access;
  params?: z.ZodType;
  query?: z.ZodType;
  body?: z.ZodType;
  /** The body may be left out (it then means `{}`). */
  bodyOptional?: boolean;
  /** Accepts an Idempotency-Key header. */
  idempotent?: boolean;
  /** Rules that depend on who asks, which no JSON Schema can state; the route enforces them and the document lists them. */
  rules?: ReadonlyArray<PrincipalRule>;
  /** The route's own answers (success, and conflicts); `standardReplies` adds the ones every route of its kind has. */
  replies: Record<number, z.ZodType>;
  /** Not JSON (the Prometheus text format). */
  contentType?: string;
}

/** `tenantId` must be given by an operator and must not be given by a tenant (who acts for itself). */
export interface PrincipalRule {
  rule: 'requiredFor' | 'forbiddenFor';
  principal: 'operator' | 'tenant';
  field: string;
  message: string;
}

/**
 * Every status a route can answer beyond its own: 400 when it reads input, 401/403 by its access rule, 404 when it
 * names an object, 413/415 when it reads a body, 422 with an Idempotency-Key, 503 when a backing service is down.
 * The server and the document both derive from this, so the document lists what the server can send.
 */
export function standardReplies(spec: RouteSpec): Record<number, z.ZodType> {
  const r: Record<number, z.ZodType> = {};
  if (spec.params || spec.query || spec.body || spec.idempotent) r[400] = errorReply;
  if (spec.access !== 'public') r[401] = errorReply;
  if (spec.access === 'operator') r[403] = errorReply;
  if (spec.params) r[404] = errorReply;
  if (spec.body) {
    r[413] = errorReply;
    r[415] = errorReply;
  }
  if (spec.idempotent) r[422] = errorReply;
  if (spec.access !== 'public') r[503] = errorReply;
  // Rate limits (per address, and per token on authenticated routes): with a Retry-After header.
  r[429] = errorReply;
  return { ...r, ...spec.replies };
}

import type { Client } from '@temporalio/client';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Pool } from 'pg';
import type { z } from 'zod';
import type { Logger } from '../common/logger';
import type { Inventory, Tenant, TenantQuotas } from '../inventory';
import type { RateLimits } from './rate-limits';
import type { HostService } from './host-service';
import { ApiError, invalidInput, internalError, toErrorResponse } from './errors';
import { IDEMPOTENCY_HEADER, idsFor, parseIdempotencyKey, requestHash, type IdempotencyStore, type StoredAnswer } from './idempotency';
import type { Access } from './schemas';

export interface ApiDeps {
  inventory: Inventory;
  hostService: HostService;
  temporal: { client: Client; taskQueue: string };
  /** The inventory's database: health checks and the idempotency-key table. */
  pool: Pool;
  operatorToken: string;
  /**
   * Seals stored idempotent answers that carry a secret (a new tenant's token), separate from the operator token.
   * Absent: a random key for this process (answers sealed by an earlier process can then no longer be replayed).
   */
  sealingKey?: string;
  /** Request rates per address and of the operator (defaults in rate-limits.ts; tenants' are their quotas). */
  rateLimits?: Partial<RateLimits>;
  /** PEM certificate and key: the API speaks HTTPS only. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** The idempotency table's bounds (defaults in idempotency.ts). */
  idempotency?: { maxKeysPerPrincipal?: number; retentionHours?: number; sweepIntervalMs?: number };
  logger: Logger;
  /** Largest accepted request body (default 64 KiB); larger ones get 413. */
  bodyLimitBytes?: number;
  /** Slow-client limits; each unset one takes its default (DEFAULT_API_LIMITS in server.ts). */
  limits?: Partial<ApiLimits>;
}

/**
 * How long a client may take, and how many may be connected: what keeps slow clients (slowloris: headers or a body
 * dribbled a byte at a time, a response never read) from holding the server's sockets for ever.
 */
export interface ApiLimits {
  /** The request line and all headers must have arrived within this long of the request's first byte (else 408 and closed). */
  headersTimeoutMs: number;
  /** The whole request, body included, must have arrived within this long (else 408 and closed). At least headersTimeoutMs. */
  requestTimeoutMs: number;
  /**
   * A socket with no bytes moving either way for this long is closed: a client that stops reading its answers (Node
   * lets a write that is still pending survive one expiry, so such a socket goes within twice this). It also bounds a
   * request's handling time, so it must stay above the longest handler (a VM request waits up to 60 s for a migration
   * to settle).
   */
  idleTimeoutMs: number;
  /** An idle keep-alive connection is closed after this long, plus Node's own 1 s (above a load balancer's usual 60 s). */
  keepAliveTimeoutMs: number;
  /** How often the two request deadlines are checked: a slow client is closed at most this long after its deadline. */
  timeoutCheckIntervalMs: number;
  /** Connections beyond this many at once are closed as soon as they are accepted. */
  maxConnections: number;
}

export type Principal = { kind: 'operator' } | { kind: 'tenant'; tenant: Tenant };

export interface ApiContext extends Omit<ApiDeps, 'idempotency'> {
  idempotency: IdempotencyStore;
  /** A tenant's quotas changed through this process: its request rate applies at once. */
  onQuotasChanged?: (tenantId: string, quotas: TenantQuotas) => void;
}

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | null;
  }
  interface FastifyContextConfig {
    access?: Access;
  }
}

/** Who is asking; the auth hook has set it on every non-public route. */
export function principalOf(req: FastifyRequest): Principal {
  if (!req.principal) throw new Error('route without authentication: the auth hook did not run');
  return req.principal;
}

/** `tenantId` filter for the inventory: the tenant's own id, or undefined for operators (they see everything). */
export function tenantScope(p: Principal): string | undefined {
  return p.kind === 'tenant' ? p.tenant.id : undefined;
}

/** The actor written to the audit log. */
export function actorOf(p: Principal): string {
  return p.kind === 'tenant' ? `tenant:${p.tenant.id}` : 'operator';
}

export function parseWith<S extends z.ZodType>(schema: S, value: unknown, where: 'body' | 'params' | 'query'): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw invalidInput(r.error, where);
  return r.data;
}

/** A body that may be omitted altogether (start/cancel a migration): absent means `{}`. */
export function parseOptionalBody<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  return parseWith(schema, value === undefined || value === null ? {} : value, 'body');
}

/** Sends `data` through its reply schema, which drops every key the schema does not declare. */
export function send<S extends z.ZodType>(reply: FastifyReply, status: number, schema: S, data: z.input<S>): FastifyReply {
  return reply.code(status).send(schema.parse(data));
}

export interface Answer<T = unknown> {
  status: number;
  schema: z.ZodType;
  body: T;
}

/**
 * Runs a POST/DELETE once per Idempotency-Key: the first request acts and its answer is stored; a retry with the same
 * key and request gets that answer (header `Idempotent-Replayed: true`). `act` receives `newId(prefix)`, which derives
 * ids from the key (random without one). Validate the input before calling this: bad input is not stored.
 */
export async function idempotent(
  ctx: ApiContext,
  req: FastifyRequest,
  reply: FastifyReply,
  act: (newId: (prefix: string) => string) => Promise<Answer>,
  opts: { sealed?: boolean } = {},
): Promise<FastifyReply> {
  const principal = principalOf(req);
  const who = principal.kind === 'tenant' ? `tenant:${principal.tenant.id}` : 'operator';
  const key = parseIdempotencyKey(req.headers[IDEMPOTENCY_HEADER]);
  const route = `${req.method} ${req.url.split('?')[0]}`;
  const newId = idsFor(who, route, key);
  if (key === undefined) {
    const a = await act(newId);
    return send(reply, a.status, a.schema, a.body);
  }
  const begun = await ctx.idempotency.begin(who, key, route, requestHash(route, req.body));
  if (begun.kind === 'mismatch')
    throw new ApiError(
      422,
      'IDEMPOTENCY_KEY_REUSED',
      `Idempotency-Key: this key was used for another request${begun.route === route ? ' (different body)' : ` (${begun.route})`}; use a new key`,
      'Idempotency-Key',
    );
  if (begun.kind === 'replay') return reply.code(begun.answer.status).header('idempotent-replayed', 'true').send(begun.answer.body);

  let answer: StoredAnswer;
  try {
    const a = await act(newId);
    answer = { status: a.status, body: a.schema.parse(a.body) };
  } catch (err) {
    const mapped = toErrorResponse(err);
    if (!mapped || mapped.status >= 500) {
      await ctx.idempotency.release(who, key).catch((e: unknown) => req.log.error({ err: e }, 'could not release an idempotency key'));
      throw err;
    }
    answer = mapped;
  }
  try {
    await ctx.idempotency.complete(who, key, answer, { sealed: opts.sealed === true && answer.status < 300 });
  } catch (err) {
    // The request did act: answer it. Its retry finds the reservation stale later and runs again on the same ids.
    req.log.error({ err }, 'could not store the answer of an idempotent request');
  }
  return reply.code(answer.status).send(answer.body);
}

export { internalError };

import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from '../common/logger';
import { DEFAULT_QUOTAS, type Inventory } from '../inventory';
import { ApiError } from './errors';

/**
 * Request rates (@fastify/rate-limit, one-second windows, in this process's memory):
 * - per address, on every request before anything else runs (no token lookup, no database): what a flood of bad
 *   tokens or of public health checks from one place meets;
 * - per principal, once the token is known: a tenant at its `requestsPerSecond` quota (inventory/quotas.ts; the
 *   operator raises it per tenant), the operator at its own limit. Tenants' rates come from one query for all of
 *   them, refreshed every few seconds, never one per request.
 * Over a limit: 429 RATE_LIMITED with Retry-After; nothing was done.
 */
export interface RateLimits {
  /** Requests per second from one client address (default 200). */
  perAddressPerSecond: number;
  /** Requests per second of the operator token (default 500). */
  operatorPerSecond: number;
  /** How stale the cached tenant rates may get (default 5 s). */
  tenantRatesTtlMs: number;
}

export const DEFAULT_RATE_LIMITS: Readonly<RateLimits> = { perAddressPerSecond: 200, operatorPerSecond: 500, tenantRatesTtlMs: 5_000 };

const WINDOW_MS = 1_000;

/** The tenants' request rates, from the inventory, cached: a stale cache is refreshed in the background. */
function tenantRates(inventory: Inventory, ttlMs: number, logger: Logger) {
  let rates = new Map<string, number>();
  let loadedAt = 0;
  let loading: Promise<void> | null = null;
  const load = () =>
    (loading ??= inventory
      .tenantRequestRates()
      .then(
        (r) => {
          rates = r;
          loadedAt = Date.now();
        },
        (err: unknown) => logger.warn({ err }, 'could not read the tenants’ request rates; keeping the last ones'),
      )
      .finally(() => (loading = null)));
  return {
    async rateOf(tenantId: string): Promise<number> {
      if (loadedAt === 0) await load();
      else if (Date.now() - loadedAt > ttlMs) void load();
      return rates.get(tenantId) ?? DEFAULT_QUOTAS.requestsPerSecond;
    },
    /** A quota set through this process applies at once. */
    set(tenantId: string, rps: number) {
      rates.set(tenantId, rps);
    },
  };
}

/** Over the limit: 429 with Retry-After (seconds until the window ends), naming the limit. */
function refuse(reply: FastifyReply, who: string, r: { max: number; ttl: number }): never {
  const retryAfterSeconds = Math.max(1, Math.ceil(r.ttl / 1000));
  void reply.header('retry-after', String(retryAfterSeconds));
  throw new ApiError(429, 'RATE_LIMITED', `too many requests ${who} (at most ${r.max} per second); retry in ${retryAfterSeconds} s`, undefined, {
    limit: r.max,
    retryAfterSeconds,
  });
}

/**
 * Registers the limiter; returns the two hooks. `perAddress` goes first among the onRequest hooks, `perPrincipal`
 * right after authentication (a no-op on public routes).
 */
export async function registerRateLimits(app: FastifyInstance, o: { inventory: Inventory; limits: RateLimits; logger: Logger }) {
  await app.register(rateLimit, { global: false, skipOnError: false });
  const rates = tenantRates(o.inventory, o.limits.tenantRatesTtlMs, o.logger);
  const addressLimit = app.createRateLimit({ max: o.limits.perAddressPerSecond, timeWindow: WINDOW_MS, keyGenerator: (req) => `addr:${req.ip}` });
  const principalLimit = app.createRateLimit({
    max: async (req) => {
      const p = req.principal;
      if (!p || p.kind === 'operator') return o.limits.operatorPerSecond;
      return rates.rateOf(p.tenant.id);
    },
    timeWindow: WINDOW_MS,
    keyGenerator: (req) => (req.principal?.kind === 'tenant' ? `tenant:${req.principal.tenant.id}` : 'operator'),
  });
  return {
    async perAddress(req: FastifyRequest, reply: FastifyReply): Promise<void> {
      const r = await addressLimit(req);
      if (!r.isAllowed && r.isExceeded) refuse(reply, 'from this address', r);
    },
    async perPrincipal(req: FastifyRequest, reply: FastifyReply): Promise<void> {
      if (!req.principal) return;
      const r = await principalLimit(req);
      if (!r.isAllowed && r.isExceeded) refuse(reply, 'with this token', r);
    },
    setTenantRate: rates.set,
  };
}

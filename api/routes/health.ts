import type { FastifyInstance } from 'fastify';
import { runReadiness } from '../../common/ops-server';
import type { ApiContext } from '../context';
import { send } from '../context';
import { healthReply, routes } from '../schemas';
import { register } from './register';

/** How long one look at Postgres and Temporal answers every health and readiness check. */
export const HEALTH_CACHE_MS = 1_000;

/**
 * Postgres and Temporal checked at most once per HEALTH_CACHE_MS, whatever the number of callers: concurrent callers
 * share the check in flight, later ones its result. A flood of public health checks costs no query per call.
 */
export function healthCache(ctx: Pick<ApiContext, 'pool' | 'temporal'>, ttlMs = HEALTH_CACHE_MS) {
  let last: { at: number; result: Promise<{ ok: boolean; checks: Record<string, string> }> } | undefined;
  return {
    /** The latest result no older than ttlMs, or a new check (one at a time). */
    check(): Promise<{ ok: boolean; checks: Record<string, string> }> {
      if (last && Date.now() - last.at < ttlMs) return last.result;
      const { client } = ctx.temporal;
      const result = runReadiness({
        postgres: async () => void (await ctx.pool.query('SELECT 1')),
        // The call's own deadline ends before the check's 2 s timeout, so no retry of it is left running after the
        // answer (a retry timer firing on a connection closed meanwhile throws outside any promise).
        temporal: async () => void (await client.withDeadline(Date.now() + 1_500, () => client.workflowService.getSystemInfo({}))),
      });
      last = { at: Date.now(), result };
      // The age counts from the answer, so a slow check is not followed by another one at once.
      void result.finally(() => {
        if (last?.result === result) last.at = Date.now();
      });
      return result;
    },
  };
}

export type HealthCache = ReturnType<typeof healthCache>;

/** GET /healthz: 200 when Postgres and Temporal both answer within 2 s, else 503 saying which did not (cached, above). */
export function registerHealthRoutes(app: FastifyInstance, health: HealthCache): void {
  register(app, routes.healthz, async (req, reply) => {
    const { ok, checks } = await health.check();
    const state = (name: string) => (checks[name] === 'ok' ? ('ok' as const) : ('unavailable' as const));
    if (!ok) req.log.warn({ checks }, 'health: a backing service does not answer');
    return send(reply, ok ? 200 : 503, healthReply, { status: ok ? 'ok' : 'unavailable', postgres: state('postgres'), temporal: state('temporal') });
  });
}

import type { FastifyInstance } from 'fastify';
import type { ApiContext } from '../context';
import { send } from '../context';
import { healthReply, routes } from '../schemas';
import { register } from './register';

const CHECK_TIMEOUT_MS = 2_000;

function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** GET /healthz: 200 when Postgres and Temporal both answer within 2 s, else 503 saying which did not. */
export function registerHealthRoutes(app: FastifyInstance, ctx: ApiContext): void {
  register(app, routes.healthz, async (req, reply) => {
    const { client } = ctx.temporal;
    const [pg, temporal] = await Promise.all([
      within(CHECK_TIMEOUT_MS, ctx.pool.query('SELECT 1')).then(
        () => 'ok' as const,
        (err: unknown) => {
          req.log.warn({ err }, 'health: Postgres does not answer');
          return 'unavailable' as const;
        },
      ),
      client.withDeadline(Date.now() + CHECK_TIMEOUT_MS, () => client.workflowService.getSystemInfo({})).then(
        () => 'ok' as const,
        (err: unknown) => {
          req.log.warn({ err }, 'health: Temporal does not answer');
          return 'unavailable' as const;
        },
      ),
    ]);
    const ok = pg === 'ok' && temporal === 'ok';
    return send(reply, ok ? 200 : 503, healthReply, { status: ok ? 'ok' : 'unavailable', postgres: pg, temporal });
  });
}

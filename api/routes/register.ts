import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { routes, type RouteSpec } from '../schemas';

/** Registers a route of the catalog (schemas/) with its access rule; the handler validates with the spec's schemas. */
export function register(
  app: FastifyInstance,
  spec: RouteSpec,
  handler: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>,
  opts: { logLevel?: 'warn' | 'info' } = {},
): void {
  app.route({ method: spec.method, url: spec.url, config: { access: spec.access }, handler, ...(opts.logLevel ? { logLevel: opts.logLevel } : {}) });
}

/** Each path of the catalog as a pattern, with the methods it serves (GET also answers HEAD, as Fastify does). */
const PATHS: ReadonlyArray<{ pattern: RegExp; methods: string[] }> = (() => {
  const byUrl = new Map<string, string[]>();
  for (const spec of Object.values(routes) as RouteSpec[]) byUrl.set(spec.url, [...(byUrl.get(spec.url) ?? []), spec.method]);
  return [...byUrl].map(([url, methods]) => ({
    pattern: new RegExp(
      `^${url
        .split('/')
        .map((seg) => (seg.startsWith(':') ? '[^/]+' : seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
        .join('/')}/?$`,
    ),
    methods: methods.includes('GET') ? [...methods, 'HEAD'] : methods,
  }));
})();

/** The methods a path serves, or null when no route has that path (then it is a 404, not a 405). */
export function allowedMethods(path: string): string[] | null {
  const hit = PATHS.find((p) => p.pattern.test(path));
  return hit ? hit.methods : null;
}

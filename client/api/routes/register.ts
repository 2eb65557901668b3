import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { RouteSpec } from '../schemas';

/** Registers a route of the catalog (schemas.ts) with its access rule; the handler validates with the spec's schemas. */
export function register(app: FastifyInstance, spec: RouteSpec, handler: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>): void {
  app.route({ method: spec.method, url: spec.url, config: { access: spec.access }, handler });
}

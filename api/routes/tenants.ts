import type { FastifyInstance } from 'fastify';
import { actorOf, idempotent, parseWith, principalOf, type ApiContext } from '../context';
import { routes, tenantCreatedReply } from '../schemas';
import { register } from './register';

/** POST /v1/tenants (operators): a tenant and its bearer token, shown once (stored hashed; sealed in the key store). */
export function registerTenantRoutes(app: FastifyInstance, ctx: ApiContext): void {
  register(app, routes.createTenant, async (req, reply) => {
    const body = parseWith(routes.createTenant.body, req.body, 'body');
    return idempotent(
      ctx,
      req,
      reply,
      async () => {
        const t = await ctx.inventory.createTenant(body.name, { actor: actorOf(principalOf(req)) });
        return { status: 201, schema: tenantCreatedReply, body: { id: t.id, name: t.name, token: t.token, createdAt: t.createdAt } };
      },
      { sealed: true },
    );
  });
}

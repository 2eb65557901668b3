import type { FastifyInstance } from 'fastify';
import { ApiError } from '../errors';
import { actorOf, idempotent, parseOptionalBody, parseWith, principalOf, send, type ApiContext } from '../context';
import { routes, tenantCreatedReply, tenantQuotasReply, tenantTokenRevokedReply } from '../schemas';
import { register } from './register';

/**
 * Tenants (operators): a tenant and its bearer token, shown once (stored hashed; sealed in the key store); its
 * quotas (a tenant reads its own; another tenant's answers 404 like a missing one); its token rotated or revoked.
 */
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

  register(app, routes.getTenantQuotas, async (req, reply) => {
    const p = principalOf(req);
    const { id } = parseWith(routes.getTenantQuotas.params, req.params, 'params');
    parseWith(routes.getTenantQuotas.query, req.query, 'query');
    if (p.kind === 'tenant' && p.tenant.id !== id) throw new ApiError(404, 'NOT_FOUND', `tenantId: no tenant ${id}`, 'id');
    return send(reply, 200, tenantQuotasReply, await ctx.inventory.getTenantQuotas(id));
  });

  register(app, routes.setTenantQuotas, async (req, reply) => {
    const { id } = parseWith(routes.setTenantQuotas.params, req.params, 'params');
    const body = parseWith(routes.setTenantQuotas.body, req.body, 'body');
    return idempotent(ctx, req, reply, async () => {
      const q = await ctx.inventory.setTenantQuotas({ tenantId: id, ...body, actor: actorOf(principalOf(req)) });
      ctx.onQuotasChanged?.(id, q);
      return { status: 200, schema: tenantQuotasReply, body: q };
    });
  });

  register(app, routes.rotateTenantToken, async (req, reply) => {
    const { id } = parseWith(routes.rotateTenantToken.params, req.params, 'params');
    parseOptionalBody(routes.rotateTenantToken.body, req.body);
    return idempotent(
      ctx,
      req,
      reply,
      async () => {
        const t = await ctx.inventory.rotateTenantToken({ tenantId: id, actor: actorOf(principalOf(req)) });
        return { status: 200, schema: tenantCreatedReply, body: { id: t.id, name: t.name, token: t.token, createdAt: t.createdAt } };
      },
      { sealed: true },
    );
  });

  register(app, routes.revokeTenantToken, async (req, reply) => {
    const { id } = parseWith(routes.revokeTenantToken.params, req.params, 'params');
    parseOptionalBody(routes.revokeTenantToken.body, req.body);
    return idempotent(ctx, req, reply, async () => {
      const t = await ctx.inventory.revokeTenantToken({ tenantId: id, actor: actorOf(principalOf(req)) });
      return { status: 200, schema: tenantTokenRevokedReply, body: { id: t.id, revoked: true as const, revokedAt: t.revokedAt } };
    });
  });
}

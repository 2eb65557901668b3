import type { FastifyInstance } from 'fastify';
import { ApiError } from '../errors';
import { actorOf, idempotent, parseWith, principalOf, send, tenantScope, type ApiContext } from '../context';
import { operatorVolumeView, routes, tenantVolumeView, volumeListReply } from '../schemas';
import { volumeView } from '../views';
import { register } from './register';

/** Network volumes: a tenant's own, in a zone's storage service. Another tenant's volume answers 404, exactly like a missing one. */
export function registerVolumeRoutes(app: FastifyInstance, ctx: ApiContext): void {
  register(app, routes.createVolume, async (req, reply) => {
    const p = principalOf(req);
    const body = parseWith(routes.createVolume.body, req.body, 'body');
    if (p.kind === 'tenant' && body.tenantId !== undefined)
      throw new ApiError(400, 'INVALID_INPUT', 'tenantId: a tenant creates volumes for itself; only operators name the tenant', 'tenantId');
    const tenantId = p.kind === 'tenant' ? p.tenant.id : body.tenantId;
    if (tenantId === undefined) throw new ApiError(400, 'INVALID_INPUT', 'tenantId: required when an operator creates a volume', 'tenantId');
    return idempotent(ctx, req, reply, async (newId) => {
      if (p.kind === 'operator') await ctx.inventory.getTenant(tenantId);
      const volume = await ctx.inventory.createVolume({
        tenantId,
        name: body.name,
        zone: body.zone,
        sizeGiB: body.sizeGiB,
        volumeId: newId('vol'),
        actor: actorOf(p),
      });
      return { status: 201, schema: p.kind === 'tenant' ? tenantVolumeView : operatorVolumeView, body: volumeView(p, volume) };
    });
  });

  register(app, routes.listVolumes, async (req, reply) => {
    const p = principalOf(req);
    parseWith(routes.listVolumes.query, req.query, 'query');
    const volumes = await ctx.inventory.listVolumes({ tenantId: tenantScope(p) });
    return send(reply, 200, volumeListReply, { volumes: volumes.map((v) => volumeView(p, v)) });
  });

  register(app, routes.getVolume, async (req, reply) => {
    const p = principalOf(req);
    const { id } = parseWith(routes.getVolume.params, req.params, 'params');
    parseWith(routes.getVolume.query, req.query, 'query');
    const volume = await ctx.inventory.getVolume(id, { tenantId: tenantScope(p) });
    return send(reply, 200, p.kind === 'tenant' ? tenantVolumeView : operatorVolumeView, volumeView(p, volume));
  });

  register(app, routes.deleteVolume, async (req, reply) => {
    const p = principalOf(req);
    const { id } = parseWith(routes.deleteVolume.params, req.params, 'params');
    parseWith(routes.deleteVolume.query, req.query, 'query');
    return idempotent(ctx, req, reply, async () => {
      const volume = await ctx.inventory.deleteVolume({ volumeId: id, tenantId: tenantScope(p), actor: actorOf(p) });
      return { status: 200, schema: p.kind === 'tenant' ? tenantVolumeView : operatorVolumeView, body: volumeView(p, volume) };
    });
  });
}

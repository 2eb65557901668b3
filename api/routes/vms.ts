import type { FastifyInstance } from 'fastify';
import { actorOf, idempotent, parseWith, principalOf, send, tenantScope, type ApiContext } from '../context';
import { operatorVmView, routes, tenantVmView } from '../schemas';
import { vmView } from '../views';
import { register } from './register';

/** One VM by id. Another tenant's VM answers 404, exactly like a missing one. */
export function registerVmRoutes(app: FastifyInstance, ctx: ApiContext): void {
  register(app, routes.getVm, async (req, reply) => {
    const p = principalOf(req);
    const { id } = parseWith(routes.getVm.params, req.params, 'params');
    parseWith(routes.getVm.query, req.query, 'query');
    const vm = await ctx.inventory.getVm(id, { tenantId: tenantScope(p) });
    return send(reply, 200, p.kind === 'tenant' ? tenantVmView : operatorVmView, await vmView(ctx, p, vm));
  });

  register(app, routes.deleteVm, async (req, reply) => {
    const p = principalOf(req);
    const { id } = parseWith(routes.deleteVm.params, req.params, 'params');
    parseWith(routes.deleteVm.query, req.query, 'query');
    return idempotent(ctx, req, reply, async (newId) => {
      // While the host migrates this goes through the workflow's deleteVm update, wherever the VM is (claim 8).
      const { vm } = await ctx.hostService.deleteVm({ vmId: id, tenantId: tenantScope(p), requestId: newId('api'), actor: actorOf(p) });
      return { status: 200, schema: p.kind === 'tenant' ? tenantVmView : operatorVmView, body: await vmView(ctx, p, vm) };
    });
  });
}

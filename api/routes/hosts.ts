import type { FastifyInstance } from 'fastify';
import { ApiError } from '../errors';
import { actorOf, idempotent, parseWith, principalOf, send, tenantScope, type ApiContext } from '../context';
import {
  eventListReply,
  hostDeletedReply,
  hostListReply,
  operatorHostView,
  operatorVmView,
  routes,
  tenantHostView,
  tenantVmView,
  vmListReply,
} from '../schemas';
import { eventViews, hostView, hostViews, vmView, vmViews } from '../views';
import { register } from './register';

const DEFAULT_EVENT_LIMIT = 200;

/** Dedicated hosts, their VMs and their audit log. Another tenant's host answers 404, exactly like a missing one. */
export function registerHostRoutes(app: FastifyInstance, ctx: ApiContext): void {
  register(app, routes.createHost, async (req, reply) => {
    const p = principalOf(req);
    const body = parseWith(routes.createHost.body, req.body, 'body');
    if (p.kind === 'tenant' && body.tenantId !== undefined)
      throw new ApiError(400, 'INVALID_INPUT', 'tenantId: a tenant creates hosts for itself; only operators name the tenant', 'tenantId');
    const tenantId = p.kind === 'tenant' ? p.tenant.id : body.tenantId;
    if (tenantId === undefined) throw new ApiError(400, 'INVALID_INPUT', 'tenantId: required when an operator creates a host', 'tenantId');
    return idempotent(ctx, req, reply, async (newId) => {
      const host = await ctx.hostService.createDedicatedHost({
        tenantId,
        name: body.name,
        zone: body.zone,
        resourceClass: body.resourceClass,
        dedicatedHostId: newId('dh'),
        actor: actorOf(p),
      });
      return { status: 201, schema: p.kind === 'tenant' ? tenantHostView : operatorHostView, body: await hostView(ctx, p, host) };
    });
  });

  register(app, routes.listHosts, async (req, reply) => {
    const p = principalOf(req);
    parseWith(routes.listHosts.query, req.query, 'query');
    const hosts = await ctx.inventory.listHosts({ tenantId: tenantScope(p) });
    return send(reply, 200, hostListReply, { hosts: await hostViews(ctx, p, hosts) });
  });

  register(app, routes.getHost, async (req, reply) => {
    const p = principalOf(req);
    const { id } = parseWith(routes.getHost.params, req.params, 'params');
    parseWith(routes.getHost.query, req.query, 'query');
    const host = await ctx.inventory.getHost(id, { tenantId: tenantScope(p) });
    return send(reply, 200, p.kind === 'tenant' ? tenantHostView : operatorHostView, await hostView(ctx, p, host));
  });

  register(app, routes.deleteHost, async (req, reply) => {
    const p = principalOf(req);
    const { id } = parseWith(routes.deleteHost.params, req.params, 'params');
    parseWith(routes.deleteHost.query, req.query, 'query');
    return idempotent(ctx, req, reply, async () => {
      // One transaction: the host and its incarnation go, and the server is queued for de-provisioning through the same
      // outbox a finished migration uses (claim 5); a host with VMs or a migration is refused naming why.
      const { host } = await ctx.inventory.deleteDedicatedHost({ dedicatedHostId: id, tenantId: tenantScope(p), actor: actorOf(p) });
      return { status: 200, schema: hostDeletedReply, body: { id, deleted: true as const, deletedAt: host.deletedAt ?? new Date().toISOString() } };
    });
  });

  register(app, routes.listVms, async (req, reply) => {
    const p = principalOf(req);
    const { id } = parseWith(routes.listVms.params, req.params, 'params');
    const q = parseWith(routes.listVms.query, req.query, 'query');
    const vms = await ctx.inventory.listVms({ dedicatedHostId: id, tenantId: tenantScope(p), includeDeleted: q.includeDeleted === 'true' });
    return send(reply, 200, vmListReply, { vms: await vmViews(ctx, p, vms) });
  });

  register(app, routes.createVm, async (req, reply) => {
    const p = principalOf(req);
    const { id } = parseWith(routes.createVm.params, req.params, 'params');
    const body = parseWith(routes.createVm.body, req.body, 'body');
    return idempotent(ctx, req, reply, async (newId) => {
      // Both ids follow from the Idempotency-Key: a retry places the same VM, or sends the same update to the
      // migration workflow, which answers a repeated request id with its first outcome.
      const { vm } = await ctx.hostService.createVm({
        dedicatedHostId: id,
        tenantId: tenantScope(p),
        vmId: newId('vm'),
        requestId: newId('api'),
        name: body.name,
        spec: {
          vcpus: body.vcpus,
          memoryMiB: body.memoryMiB,
          diskGiB: body.diskGiB,
          ...(body.workload ? { workload: body.workload } : {}),
          ...(body.disks ? { disks: body.disks } : {}),
        },
        actor: actorOf(p),
      });
      return { status: 201, schema: p.kind === 'tenant' ? tenantVmView : operatorVmView, body: await vmView(ctx, p, vm) };
    });
  });

  register(app, routes.listEvents, async (req, reply) => {
    const p = principalOf(req);
    const { id } = parseWith(routes.listEvents.params, req.params, 'params');
    const q = parseWith(routes.listEvents.query, req.query, 'query');
    await ctx.inventory.getHost(id, { tenantId: tenantScope(p) });
    const events = await ctx.inventory.listEvents({ dedicatedHostId: id, afterId: q.afterId, limit: q.limit ?? DEFAULT_EVENT_LIMIT });
    return send(reply, 200, eventListReply, {
      events: eventViews(p, events),
      nextAfterId: events.length ? events[events.length - 1]!.id : (q.afterId ?? 0),
    });
  });
}

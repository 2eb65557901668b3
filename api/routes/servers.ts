import type { FastifyInstance } from 'fastify';
import type { HostIncarnation } from '../../inventory';
import { parseWith, send, type ApiContext } from '../context';
import { routes, serverListReply } from '../schemas';
import { register } from './register';

/** GET /v1/physical-servers (operators): the fleet, each server with its state and the host incarnation it runs. */
export function registerServerRoutes(app: FastifyInstance, ctx: ApiContext): void {
  register(app, routes.listServers, async (req, reply) => {
    const q = parseWith(routes.listServers.query, req.query, 'query');
    const [servers, hosts] = await Promise.all([ctx.inventory.listServers(q), ctx.inventory.listHosts()]);
    const perHost = await Promise.all(
      hosts.map(async (h) => {
        const [incs, vms] = await Promise.all([ctx.inventory.listIncarnations({ dedicatedHostId: h.id }), ctx.inventory.listVms({ dedicatedHostId: h.id })]);
        return incs.map((inc) => ({ inc, tenantId: h.tenantId, vmCount: vms.filter((v) => v.incarnationId === inc.id).length }));
      }),
    );
    const onServer = new Map<string, { inc: HostIncarnation; tenantId: string; vmCount: number }>();
    for (const r of perHost.flat()) onServer.set(r.inc.serverId, r);
    return send(reply, 200, serverListReply, {
      servers: servers.map((s) => {
        const r = onServer.get(s.id);
        return {
          ...s,
          runs: r
            ? {
                dedicatedHostId: r.inc.dedicatedHostId,
                tenantId: r.tenantId,
                incarnationId: r.inc.id,
                role: r.inc.role,
                allocated: r.inc.allocated,
                vmCount: r.vmCount,
              }
            : null,
        };
      }),
    });
  });
}

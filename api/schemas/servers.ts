import { z } from 'zod';
import { SERVER_STATES } from '../../inventory/types';
import { idSchema, isoTime, resourcesView } from './common';
import type { RouteSpec } from './route-spec';

/** The fleet of physical servers, as operators see it. */

export const serversQuery = z.object({ zone: idSchema.optional(), resourceClass: idSchema.optional(), state: z.enum(SERVER_STATES).optional() }).strict();

export const serverView = z.object({
  id: z.string(),
  zone: z.string(),
  resourceClass: z.string(),
  capacity: resourcesView,
  nicBandwidthBps: z.number(),
  agentUrl: z.string(),
  backend: z.enum(['sim', 'qemu']),
  state: z.enum(SERVER_STATES),
  reservedByMigration: z.string().nullable(),
  runs: z
    .object({
      dedicatedHostId: z.string(),
      tenantId: z.string(),
      incarnationId: z.string(),
      role: z.enum(['primary', 'clone']),
      allocated: resourcesView,
      vmCount: z.number().int(),
    })
    .nullable()
    .describe('the live host incarnation on this server, or null'),
  updatedAt: isoTime,
});

export const serverListReply = z.object({ servers: z.array(serverView) });

export const serverRoutes = {
  listServers: {
    method: 'GET',
    url: '/v1/physical-servers',
    summary: 'The fleet: every physical server, its state and the host incarnation it runs',
    access: 'operator',
    query: serversQuery,
    replies: { 200: serverListReply },
  },
} satisfies Record<string, RouteSpec>;

import { z } from 'zod';
import { errorReply, isoTime, queryInt } from './common';
import { hostParams } from './hosts';
import type { RouteSpec } from './route-spec';

/** A dedicated host's audit log. */

export const eventsQuery = z
  .object({
    afterId: queryInt(0, Number.MAX_SAFE_INTEGER).optional().describe('only events with a larger id (paging)'),
    limit: queryInt(1, 1000).optional().describe('at most this many events are read: 1 to 1000, default 200'),
  })
  .strict();

export const tenantEventView = z.object({
  id: z.number().int(),
  at: isoTime,
  actor: z.string(),
  action: z.string(),
  entityType: z.string(),
  entityId: z.string(),
  dedicatedHostId: z.string().nullable(),
  migrationId: z.string().nullable(),
  details: z.record(z.string(), z.unknown()),
});

export const operatorEventView = tenantEventView.extend({ physical: z.record(z.string(), z.unknown()) });

const eventViewDoc = tenantEventView.extend({
  physical: z.record(z.string(), z.unknown()).optional().describe('operators only'),
});

export const eventListReply = z.object({
  events: z.array(eventViewDoc),
  nextAfterId: z.number().int().describe('pass as afterId to read on; tenants see fewer events than were read'),
});

const E = errorReply;

export const eventRoutes = {
  listEvents: {
    method: 'GET',
    url: '/v1/dedicated-hosts/:id/events',
    summary: 'The audit log of a host, oldest first (tenants: without physical details)',
    access: 'any',
    params: hostParams,
    query: eventsQuery,
    replies: { 200: eventListReply, 404: E },
  },
} satisfies Record<string, RouteSpec>;

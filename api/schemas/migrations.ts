import { z } from 'zod';
import { VM_MIGRATION_STATES, migrationPolicySchema } from '../../common/migration';
import { emptyQuery, errorReply, idSchema, isoTime, phaseSchema, queryInt, resourcesView } from './common';
import { hostParams } from './hosts';
import type { RouteSpec } from './route-spec';

/** Host migrations: starting, listing, the migration object and cancelling. */

/** The migration workflow's id, which is the API's migration id: `migration-<dedicatedHostId>`. */
export const MIGRATION_ID_PREFIX = 'migration-';

export const migrationIdSchema = z
  .string()
  .min(MIGRATION_ID_PREFIX.length + 1)
  .max(MIGRATION_ID_PREFIX.length + 64)
  .regex(/^migration-[a-z0-9][a-z0-9._-]*$/, 'must be migration-<dedicated host id>');

export const migrationParams = z.object({ id: migrationIdSchema.describe('migration id = workflow id') }).strict();

export const migrationsQuery = z
  .object({
    dedicatedHostId: idSchema.optional(),
    phase: phaseSchema.optional(),
    limit: queryInt(1, 1000).optional().describe('1 to 1000, default 100'),
  })
  .strict();

export const startMigrationBody = z
  .object({
    targetServerId: idSchema.optional().describe('a specific free server of the same zone and class; omitted: picked'),
    policy: migrationPolicySchema
      .optional()
      .describe(
        "fields left out come from dhm's own schedule for this host (inputs measured by the agents: streams from the source's measured link, largest first, auto-converge only where a measured dirty rate needs it, the downtime limit as the target)",
      ),
  })
  .strict();

export const cancelMigrationBody = z.object({}).strict();

export const migrationAcceptedReply = z.object({
  id: z.string().describe('the migration id = the workflow id, migration-<dedicatedHostId>'),
  dedicatedHostId: z.string(),
  phase: phaseSchema,
});

export const migrationCancelReply = migrationAcceptedReply.extend({ cancelRequested: z.literal(true) });

const moveProgress = z.object({
  round: z.number(),
  bytesSent: z.number().describe('memory and disk together'),
  bytesRemaining: z.number().describe('memory and disk together'),
  memoryBytes: z.number(),
  throughputBps: z.number(),
  dirtyRateBps: z.number(),
  throttlePct: z.number(),
  state: z.string(),
  memory: z.object({ bytesTotal: z.number(), bytesTransferred: z.number(), bytesRemaining: z.number() }).optional().describe('the guest memory part'),
  disk: z
    .object({ bytesTotal: z.number(), bytesCopied: z.number(), bytesRemaining: z.number() })
    .nullable()
    .optional()
    .describe('the local disks part (data, re-sent blocks, mirrored writes); null: no local disk'),
});

const serverIncarnation = z.object({ serverId: z.string(), incarnationId: z.string() });

/** The migration object: the workflow's `status` query, plus live per-VM progress of moves in flight. */
export const migrationView = z.object({
  id: z.string().describe('the workflow id'),
  runId: z.string(),
  workflowStatus: z.string().describe('RUNNING | COMPLETED | FAILED | CANCELLED | ...'),
  migrationId: z.string().describe('the inventory record of this run of the migration'),
  dedicatedHostId: z.string(),
  phase: phaseSchema,
  policy: z.record(z.string(), z.unknown()),
  requestedBy: z.string(),
  source: serverIncarnation.optional(),
  target: serverIncarnation.optional(),
  vms: z.array(
    z.object({
      vmId: z.string(),
      name: z.string(),
      spec: resourcesView,
      diskMiB: z.number().optional().describe('local-disk data its move copies ahead of the memory'),
      state: z.enum(VM_MIGRATION_STATES),
      attempts: z.number().int(),
      figures: z
        .object({
          rounds: z.number(),
          bytesSent: z.number(),
          memoryBytes: z.number(),
          downtimeMs: z.number(),
          totalTimeMs: z.number(),
          setupMs: z.number().optional().describe('the move’s time off the link (set-up, commit), ms'),
          diskBytesCopied: z.number().optional(),
        })
        .optional(),
      error: z.string().optional(),
      progress: moveProgress.optional().describe('live, from the move activity’s last heartbeat'),
    }),
  ),
  counts: z.record(z.string(), z.number().int()),
  capacity: resourcesView.optional(),
  startedAt: isoTime,
  updatedAt: isoTime,
  finishedAt: isoTime.optional(),
  waitingForCapacitySince: isoTime.optional(),
  lastError: z.string().optional(),
  run: z.number().int(),
  requestsHandled: z.number().int(),
});

export const migrationListItem = z.object({
  id: z.string(),
  runId: z.string(),
  dedicatedHostId: z.string().nullable(),
  phase: z.string().nullable().describe('from the MigrationPhase search attribute'),
  workflowStatus: z.string(),
  startedAt: isoTime,
  closedAt: isoTime.nullable(),
});

export const migrationListReply = z.object({ migrations: z.array(migrationListItem) });

const E = errorReply;

export const migrationRoutes = {
  startMigration: {
    method: 'POST',
    url: '/v1/dedicated-hosts/:id/migrations',
    summary: 'Start the live migration of a dedicated host to a clone on another server',
    access: 'operator',
    params: hostParams,
    body: startMigrationBody,
    bodyOptional: true,
    idempotent: true,
    replies: { 202: migrationAcceptedReply, 404: E, 409: E },
  },
  listMigrations: {
    method: 'GET',
    url: '/v1/migrations',
    summary: 'Migrations, newest first, from Temporal visibility (phase from the MigrationPhase search attribute)',
    access: 'operator',
    query: migrationsQuery,
    replies: { 200: migrationListReply },
  },
  getMigration: {
    method: 'GET',
    url: '/v1/migrations/:id',
    summary: 'The migration object (the workflow’s status query, also after it ended) with live per-VM progress',
    access: 'operator',
    params: migrationParams,
    query: emptyQuery,
    replies: { 200: migrationView, 404: E },
  },
  cancelMigration: {
    method: 'POST',
    url: '/v1/migrations/:id/cancel',
    summary: 'Cancel a running migration; it rolls back',
    access: 'operator',
    params: migrationParams,
    body: cancelMigrationBody,
    bodyOptional: true,
    idempotent: true,
    replies: { 202: migrationCancelReply, 404: E, 409: E },
  },
} satisfies Record<string, RouteSpec>;

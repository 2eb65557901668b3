import { z } from 'zod';
import { idSchema } from '../common/fleet';
import { migrationPolicySchema, PHASES, VM_MIGRATION_STATES } from '../common/migration';
import { MAX_DISK_GIB, resourcesSchema } from '../common/resources';
import { diskSchema, disksSchema, volumeIdSchema, withVmSpecRules, workloadSchema } from '../common/vm-spec';
import { SERVER_STATES } from '../inventory/types';

/**
 * Every request and reply of the HTTP API, in one place. Route modules validate with these (requests) and serialize
 * through them (replies: zod's default object mode strips undeclared keys, so a tenant view can never carry a field
 * it does not declare, such as a physical server id). `openapi.ts` turns the `routes` catalog into the OpenAPI
 * document served at /openapi.json.
 */

/* ---------------------------------------------------------------- building blocks */

// C0/C1 control characters (terminal escapes in a CLI listing, NUL that Postgres cannot store) and lone surrogates
// (not representable in UTF-8) are refused; everything else, quotes and SQL included, is stored verbatim. A pattern
// rather than a refinement, so the API document states the rule (a `u`-mode pattern: a lone surrogate is one unit).
const PRINTABLE_TEXT = /^[^\u0000-\u001f\u007f-\u009f\uD800-\uDFFF]*$/u;

/** Free text typed by people (names): 1..max characters, no control characters, well-formed Unicode. */
export const textSchema = (max: number) => z.string().min(1).max(max).regex(PRINTABLE_TEXT, 'must not contain control characters or lone surrogates');

export { idSchema };

/** The migration workflow's id, which is the API's migration id: `migration-<dedicatedHostId>`. */
export const MIGRATION_ID_PREFIX = 'migration-';
export const migrationIdSchema = z
  .string()
  .min(MIGRATION_ID_PREFIX.length + 1)
  .max(MIGRATION_ID_PREFIX.length + 64)
  .regex(/^migration-[a-z0-9][a-z0-9._-]*$/, 'must be migration-<dedicated host id>');

const isoTime = z.string().describe('ISO 8601 timestamp');
const phaseSchema = z.enum(PHASES);
const intAmount = z.number().int();
export const resourcesView = z.object({ vcpus: intAmount, memoryMiB: intAmount, diskGiB: intAmount });

/** An integer query parameter given as decimal digits. */
const queryInt = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d{1,16}$/, 'must be a non-negative integer')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));
/** A boolean query parameter; the route reads it as `=== 'true'` (a transform would hide the enum from the document). */
const queryBool = z.enum(['true', 'false']);

/* ---------------------------------------------------------------- params and queries */

export const hostParams = z.object({ id: idSchema.describe('dedicated host id') }).strict();
export const vmParams = z.object({ id: idSchema.describe('VM id') }).strict();
export const volumeParams = z.object({ id: volumeIdSchema.describe('volume id') }).strict();
export const migrationParams = z.object({ id: migrationIdSchema.describe('migration id = workflow id') }).strict();
export const tenantParams = z.object({ id: idSchema.describe('tenant id') }).strict();

export const serversQuery = z.object({ zone: idSchema.optional(), resourceClass: idSchema.optional(), state: z.enum(SERVER_STATES).optional() }).strict();
export const vmsQuery = z.object({ includeDeleted: queryBool.optional() }).strict();
export const eventsQuery = z
  .object({
    afterId: queryInt(0, Number.MAX_SAFE_INTEGER).optional().describe('only events with a larger id (paging)'),
    limit: queryInt(1, 1000).optional().describe('at most this many events are read: 1 to 1000, default 200'),
  })
  .strict();
export const migrationsQuery = z
  .object({
    dedicatedHostId: idSchema.optional(),
    phase: phaseSchema.optional(),
    limit: queryInt(1, 1000).optional().describe('1 to 1000, default 100'),
  })
  .strict();
export const emptyQuery = z.object({}).strict();

/* ---------------------------------------------------------------- bodies */

export const createTenantBody = z.object({ name: textSchema(200) }).strict();

/** A quota: a whole number, or null to go back to the default. */
const quotaField = (min: number, what: string) => z.number().int().min(min).max(100_000).nullable().optional().describe(`${what}; null: back to the default`);
export const setQuotasBody = z
  .object({
    hostsPerZoneClass: quotaField(0, 'dedicated hosts per zone and resource class'),
    vmsPerHost: quotaField(0, 'VMs per dedicated host'),
    requestsPerSecond: quotaField(1, 'API requests per second of the tenant’s token (bursts of twice this)'),
  })
  .strict();

export const createHostBody = z
  .object({
    name: textSchema(200),
    zone: idSchema,
    resourceClass: idSchema,
    tenantId: idSchema.optional().describe('operators only (required for them): the tenant the host is for'),
  })
  .strict();

export const createVmBody = withVmSpecRules(
  z
    .object({
      // 128: the migration workflow's limit, so a request is valid whether or not the host is migrating.
      name: textSchema(128),
      ...resourcesSchema.shape,
      workload: workloadSchema.optional().describe('sim backend: how the guest dirties memory and writes its disks'),
      disks: disksSchema.optional(),
    })
    .strict(),
);

export const createVolumeBody = z
  .object({
    name: textSchema(200),
    zone: idSchema.describe("the zone whose storage service holds it; VMs of the zone's hosts may attach it"),
    sizeGiB: z.number().int().min(1).max(MAX_DISK_GIB),
    tenantId: idSchema.optional().describe('operators only (required for them): the tenant the volume is for'),
  })
  .strict();

export const startMigrationBody = z
  .object({
    targetServerId: idSchema.optional().describe('a specific free server of the same zone and class; omitted: picked'),
    policy: migrationPolicySchema
      .optional()
      .describe(
        "fields left out come from dhm's own schedule for this host (streams from the source NIC, largest first, auto-converge only where needed, downtime target a third of maxDowntimeMs)",
      ),
  })
  .strict();

export const cancelMigrationBody = z.object({}).strict();

/* ---------------------------------------------------------------- replies */

export const errorReply = z.object({
  error: z.object({
    code: z.string().describe('INVALID_INPUT | UNAUTHORIZED | FORBIDDEN | NOT_FOUND | CONFLICT | ALREADY_MIGRATING | ...'),
    message: z.string(),
    field: z.string().optional().describe('the input field at fault, dotted'),
    details: z.record(z.string(), z.unknown()).optional(),
  }),
});

export const healthReply = z.object({
  status: z.enum(['ok', 'unavailable']),
  postgres: z.enum(['ok', 'unavailable']),
  temporal: z.enum(['ok', 'unavailable']),
});

export const readyReply = z.object({
  status: z.enum(['ok', 'unavailable']),
  checks: z.record(z.string(), z.unknown()),
});

export const hostDeletedReply = z.object({
  id: z.string(),
  deleted: z.literal(true),
  deletedAt: isoTime,
});

export const tenantCreatedReply = z.object({
  id: z.string(),
  name: z.string(),
  token: z.string().describe('the bearer token of the tenant; shown once, stored only as a hash'),
  createdAt: isoTime,
});

export const tenantQuotasReply = z.object({
  tenantId: z.string(),
  hostsPerZoneClass: z.number().int(),
  vmsPerHost: z.number().int(),
  requestsPerSecond: z.number().int(),
  updatedAt: isoTime.nullable().describe('when the operator last set one; null: all defaults'),
});

export const tenantTokenRevokedReply = z.object({ id: z.string(), revoked: z.literal(true), revokedAt: isoTime });

export const migrationRef = z
  .object({ id: z.string(), phase: z.union([phaseSchema, z.literal('unknown')]) })
  .nullable()
  .describe('the running migration of the host, or null');

/** A dedicated host as its tenant sees it: one logical host, no physical placement (claim 3). */
export const tenantHostView = z.object({
  id: z.string(),
  name: z.string(),
  zone: z.string(),
  resourceClass: z.string(),
  state: z.enum(['active', 'migrating']),
  capacity: resourcesView,
  available: resourcesView,
  vmCount: z.number().int(),
  migration: migrationRef,
  createdAt: isoTime,
});
export const operatorHostView = tenantHostView.extend({
  tenantId: z.string(),
  physicalServerId: z.string().describe('operators only: the server of the current incarnation'),
});
/** For the document: the operator-only fields are absent for tenants. */
const hostViewDoc = tenantHostView.extend({
  tenantId: z.string().optional().describe('operators only'),
  physicalServerId: z.string().optional().describe('operators only: the server of the current incarnation'),
});

export const tenantVmView = z.object({
  id: z.string(),
  name: z.string(),
  dedicatedHostId: z.string().describe('the logical host, always (also while and after it migrates)'),
  vcpus: intAmount,
  memoryMiB: intAmount,
  diskGiB: intAmount,
  workload: z.record(z.string(), z.unknown()),
  disks: z.array(diskSchema).describe('as normalized: a VM created without disks has one local disk "root" of diskGiB'),
  state: z
    .enum(['running', 'deleted', 'lost'])
    .describe('lost: no server runs it any more (its server failed while the host migrated); delete it to close the record'),
  createdAt: isoTime,
  deletedAt: isoTime.nullable(),
  lostReason: z.string().optional(),
});
export const operatorVmView = tenantVmView.extend({
  tenantId: z.string(),
  incarnationId: z.string(),
  physicalServerId: z.string().nullable(),
});
const vmViewDoc = tenantVmView.extend({
  tenantId: z.string().optional().describe('operators only'),
  incarnationId: z.string().optional().describe('operators only: the physical incarnation it runs on'),
  physicalServerId: z.string().nullable().optional().describe('operators only'),
});

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

/** A network volume as its tenant sees it. */
export const tenantVolumeView = z.object({
  id: z.string(),
  name: z.string(),
  zone: z.string(),
  sizeGiB: intAmount,
  state: z.enum(['available', 'deleted']),
  attachedVmId: z.string().nullable().describe('the running VM that has it as a network disk, or null'),
  createdAt: isoTime,
  deletedAt: isoTime.nullable(),
});
export const operatorVolumeView = tenantVolumeView.extend({ tenantId: z.string() });
const volumeViewDoc = tenantVolumeView.extend({ tenantId: z.string().optional().describe('operators only') });
export const volumeListReply = z.object({ volumes: z.array(volumeViewDoc) });

export const hostListReply = z.object({ hosts: z.array(hostViewDoc) });
export const vmListReply = z.object({ vms: z.array(vmViewDoc) });
export const eventListReply = z.object({
  events: z.array(eventViewDoc),
  nextAfterId: z.number().int().describe('pass as afterId to read on; tenants see fewer events than were read'),
});

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

/* ---------------------------------------------------------------- the route catalog */

/** Who may call a route: anyone, operators only, or any authenticated principal (tenants see their own). */
export type Access = 'public' | 'operator' | 'any';

export interface RouteSpec {
  method: 'GET' | 'POST' | 'DELETE';
  url: string;
  summary: string;
  access: Access;
  params?: z.ZodType;
  query?: z.ZodType;
  body?: z.ZodType;
  /** The body may be left out (it then means `{}`). */
  bodyOptional?: boolean;
  /** Accepts an Idempotency-Key header. */
  idempotent?: boolean;
  /** Rules that depend on who asks, which no JSON Schema can state; the route enforces them and the document lists them. */
  rules?: ReadonlyArray<PrincipalRule>;
  /** The route's own answers (success, and conflicts); `standardReplies` adds the ones every route of its kind has. */
  replies: Record<number, z.ZodType>;
  /** Not JSON (the Prometheus text format). */
  contentType?: string;
}

/** `tenantId` must be given by an operator and must not be given by a tenant (who acts for itself). */
export interface PrincipalRule {
  rule: 'requiredFor' | 'forbiddenFor';
  principal: 'operator' | 'tenant';
  field: string;
  message: string;
}

/**
 * Every status a route can answer beyond its own: 400 when it reads input, 401/403 by its access rule, 404 when it
 * names an object, 413/415 when it reads a body, 422 with an Idempotency-Key, 503 when a backing service is down.
 * The server and the document both derive from this, so the document lists what the server can send.
 */
export function standardReplies(spec: RouteSpec): Record<number, z.ZodType> {
  const r: Record<number, z.ZodType> = {};
  if (spec.params || spec.query || spec.body || spec.idempotent) r[400] = errorReply;
  if (spec.access !== 'public') r[401] = errorReply;
  if (spec.access === 'operator') r[403] = errorReply;
  if (spec.params) r[404] = errorReply;
  if (spec.body) {
    r[413] = errorReply;
    r[415] = errorReply;
  }
  if (spec.idempotent) r[422] = errorReply;
  if (spec.access !== 'public') r[503] = errorReply;
  // Rate limits (per address, and per token on authenticated routes): with a Retry-After header.
  r[429] = errorReply;
  return { ...r, ...spec.replies };
}

const E = errorReply;

export const routes = {
  healthz: {
    method: 'GET',
    url: '/healthz',
    summary: '200 when Postgres and Temporal answer, 503 otherwise',
    access: 'public',
    replies: { 200: healthReply, 503: healthReply },
  },
  readyz: {
    method: 'GET',
    url: '/readyz',
    summary: '200 when Postgres and Temporal answer (for load balancers), 503 otherwise',
    access: 'public',
    replies: { 200: readyReply, 503: readyReply },
  },
  metrics: {
    method: 'GET',
    url: '/metrics',
    summary: 'Prometheus metrics (text format)',
    access: 'public',
    contentType: 'text/plain',
    replies: { 200: z.string() },
  },
  openapi: {
    method: 'GET',
    url: '/openapi.json',
    summary: 'This document',
    access: 'public',
    replies: { 200: z.record(z.string(), z.unknown()) },
  },
  createTenant: {
    method: 'POST',
    url: '/v1/tenants',
    summary: 'Create a tenant; its token is shown once',
    access: 'operator',
    body: createTenantBody,
    idempotent: true,
    replies: { 201: tenantCreatedReply, 409: E },
  },
  getTenantQuotas: {
    method: 'GET',
    url: '/v1/tenants/:id/quotas',
    summary: 'A tenant’s quotas (defaults filled in); a tenant may read its own',
    access: 'any',
    params: tenantParams,
    query: emptyQuery,
    replies: { 200: tenantQuotasReply, 404: E },
  },
  setTenantQuotas: {
    method: 'POST',
    url: '/v1/tenants/:id/quotas',
    summary: 'Raise (or lower, or reset with null) a tenant’s quotas; the others are kept',
    access: 'operator',
    params: tenantParams,
    body: setQuotasBody,
    idempotent: true,
    replies: { 200: tenantQuotasReply, 404: E },
  },
  rotateTenantToken: {
    method: 'POST',
    url: '/v1/tenants/:id/token/rotate',
    summary: 'A new token for the tenant, shown once; the old one stops working at once',
    access: 'operator',
    params: tenantParams,
    body: z.object({}).strict(),
    bodyOptional: true,
    idempotent: true,
    replies: { 200: tenantCreatedReply, 404: E },
  },
  revokeTenantToken: {
    method: 'POST',
    url: '/v1/tenants/:id/token/revoke',
    summary: 'No token of the tenant works from now on (until a rotation); its hosts stay',
    access: 'operator',
    params: tenantParams,
    body: z.object({}).strict(),
    bodyOptional: true,
    idempotent: true,
    replies: { 200: tenantTokenRevokedReply, 404: E },
  },
  listServers: {
    method: 'GET',
    url: '/v1/physical-servers',
    summary: 'The fleet: every physical server, its state and the host incarnation it runs',
    access: 'operator',
    query: serversQuery,
    replies: { 200: serverListReply },
  },
  createHost: {
    method: 'POST',
    url: '/v1/dedicated-hosts',
    summary: 'Create a dedicated host on a free server of the zone and resource class',
    access: 'any',
    body: createHostBody,
    idempotent: true,
    rules: [
      { rule: 'requiredFor', principal: 'operator', field: 'tenantId', message: 'required when an operator creates a host' },
      { rule: 'forbiddenFor', principal: 'tenant', field: 'tenantId', message: 'a tenant creates hosts for itself; only operators name the tenant' },
    ],
    replies: { 201: hostViewDoc, 404: E, 409: E },
  },
  listHosts: {
    method: 'GET',
    url: '/v1/dedicated-hosts',
    summary: 'Dedicated hosts (tenants: their own)',
    access: 'any',
    query: emptyQuery,
    replies: { 200: hostListReply },
  },
  getHost: {
    method: 'GET',
    url: '/v1/dedicated-hosts/:id',
    summary: 'One dedicated host',
    access: 'any',
    params: hostParams,
    query: emptyQuery,
    replies: { 200: hostViewDoc },
  },
  deleteHost: {
    method: 'DELETE',
    url: '/v1/dedicated-hosts/:id',
    summary: 'Delete an empty dedicated host that is not migrating; its server goes to the scheduler to be de-provisioned',
    access: 'any',
    params: hostParams,
    query: emptyQuery,
    idempotent: true,
    replies: { 200: hostDeletedReply, 409: E },
  },
  listVms: {
    method: 'GET',
    url: '/v1/dedicated-hosts/:id/vms',
    summary: 'The VMs of a dedicated host',
    access: 'any',
    params: hostParams,
    query: vmsQuery,
    replies: { 200: vmListReply, 404: E },
  },
  createVm: {
    method: 'POST',
    url: '/v1/dedicated-hosts/:id/vms',
    summary: 'Create a VM; while the host migrates it goes through the migration and lands on the clone',
    access: 'any',
    params: hostParams,
    body: createVmBody,
    idempotent: true,
    replies: { 201: vmViewDoc, 404: E, 409: E },
  },
  getVm: {
    method: 'GET',
    url: '/v1/vms/:id',
    summary: 'One VM',
    access: 'any',
    params: vmParams,
    query: emptyQuery,
    replies: { 200: vmViewDoc, 404: E },
  },
  deleteVm: {
    method: 'DELETE',
    url: '/v1/vms/:id',
    summary: 'Delete a VM (while its host migrates: through the migration, wherever the VM is)',
    access: 'any',
    params: vmParams,
    query: emptyQuery,
    idempotent: true,
    replies: { 200: vmViewDoc, 404: E, 409: E },
  },
  listEvents: {
    method: 'GET',
    url: '/v1/dedicated-hosts/:id/events',
    summary: 'The audit log of a host, oldest first (tenants: without physical details)',
    access: 'any',
    params: hostParams,
    query: eventsQuery,
    replies: { 200: eventListReply, 404: E },
  },
  createVolume: {
    method: 'POST',
    url: '/v1/volumes',
    summary: "Create a network volume in a zone's storage service; a VM attaches it as a network disk (nothing is copied when its host moves)",
    access: 'any',
    body: createVolumeBody,
    idempotent: true,
    rules: [
      { rule: 'requiredFor', principal: 'operator', field: 'tenantId', message: 'required when an operator creates a volume' },
      { rule: 'forbiddenFor', principal: 'tenant', field: 'tenantId', message: 'a tenant creates volumes for itself; only operators name the tenant' },
    ],
    replies: { 201: volumeViewDoc, 404: E, 409: E },
  },
  listVolumes: {
    method: 'GET',
    url: '/v1/volumes',
    summary: 'Network volumes that are not deleted (tenants: their own)',
    access: 'any',
    query: emptyQuery,
    replies: { 200: volumeListReply },
  },
  getVolume: {
    method: 'GET',
    url: '/v1/volumes/:id',
    summary: 'One network volume',
    access: 'any',
    params: volumeParams,
    query: emptyQuery,
    replies: { 200: volumeViewDoc, 404: E },
  },
  deleteVolume: {
    method: 'DELETE',
    url: '/v1/volumes/:id',
    summary: 'Delete a network volume no VM has attached',
    access: 'any',
    params: volumeParams,
    query: emptyQuery,
    idempotent: true,
    replies: { 200: volumeViewDoc, 404: E, 409: E },
  },
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

export type RouteName = keyof typeof routes;

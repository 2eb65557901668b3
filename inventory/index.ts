import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { Pool, PoolClient } from 'pg';
import { z } from 'zod';
import { fleetSchema, idSchema, type Fleet } from '../common/fleet';
import { resourcesSchema, shortfall, subtractResources, type Resources } from '../common/resources';
import { targetMismatch } from '../common/target-match';
import {
  audit,
  pgConstraint,
  pgErrorCode,
  toEvent,
  toHost,
  toIncarnation,
  toJob,
  toMigration,
  toServer,
  toTenant,
  toVm,
  withTransaction,
  type EventRow,
  type HostRow,
  type IncarnationRow,
  type MigrationRow,
  type OutboxRow,
  type ServerRow,
  type TenantRow,
  type VmRow,
} from './db';
import { InventoryError, invalidInput } from './errors';
import {
  SERVER_STATES,
  type Actor,
  type AuditEvent,
  type CapacityView,
  type DeprovisionAfterState,
  type DeprovisionJob,
  type FinalizeResult,
  type HostIncarnation,
  type HostMigrationRecord,
  type HostView,
  type IncarnationCapacity,
  type MigrationSnapshot,
  type PhysicalServer,
  type RollbackResult,
  type SeedResult,
  type ServerState,
  type Tenant,
  type Vm,
  type VmSpec,
} from './types';

export * from './types';
export { InventoryError, isInventoryError, INVENTORY_ERROR_CODES, type InventoryErrorCode } from './errors';
export { migrateDatabase } from './migrate';

/** LISTEN on this channel to hear of new de-provisioning jobs; the payload is the job id. */
export const DEPROVISION_CHANNEL = 'dhm_deprovision';

/**
 * The inventory's operations. Each is one transaction that writes its audit events in the same transaction; each
 * one an activity calls is idempotent (keyed by migration id / VM id), so a retried activity changes nothing twice.
 * Refusals throw InventoryError and change nothing. Reads by id throw NOT_FOUND naming the field for an unknown id;
 * with a `tenantId` option another tenant's object answers exactly like a missing one.
 *
 * Locking: an operation on a host first locks the host row (FOR NO KEY UPDATE), which serializes everything that
 * changes one host's placements; then its incarnations, then servers. Servers are picked with SKIP LOCKED so
 * concurrent pickers take different servers instead of queueing on one.
 */
export interface Inventory {
  /** Upserts zones, resource classes and servers. Hardware of a server in use is never changed, nor any state. */
  seedFleet(fleet: Fleet, agentUrls?: ReadonlyMap<string, string> | Record<string, string>, opts?: Partial<Actor>): Promise<SeedResult>;

  /** A tenant and its bearer token (returned only here; stored as sha256). */
  createTenant(name: string, opts?: Partial<Actor>): Promise<Tenant & { token: string }>;
  /** The tenant holding this token, or null. */
  findTenantByToken(token: string): Promise<Tenant | null>;
  getTenant(id: string): Promise<Tenant>;

  /** A logical host on a free server of the zone and class, with the class's amounts. Idempotent if `dedicatedHostId` is given. */
  createDedicatedHost(input: CreateHostInput): Promise<HostView>;
  /** Places a VM on an incarnation (default: the host's current one) after a capacity check. Idempotent by vmId. */
  placeVm(input: PlaceVmInput): Promise<Vm>;
  /** Marks a VM deleted and frees its allocation (a lost VM's was freed when it was found lost). Idempotent. */
  deleteVm(input: DeleteVmInput): Promise<Vm>;
  /**
   * Records that no agent runs the VM any more (found by its host's migration, which must be the one running):
   * state `lost`, allocation freed, audit `vm.lost` with the reason. Idempotent; a deleted VM stays deleted.
   */
  markVmLost(input: { vmId: string; migrationId: string; reason: string } & Actor): Promise<Vm>;

  /** Host active → migrating under migrationId; returns what the migration starts from. Idempotent. */
  beginMigration(input: { dedicatedHostId: string; migrationId: string } & Actor): Promise<MigrationSnapshot>;
  /** Reserves a target server matching the host (claim 2): named, or picked. Idempotent. */
  reserveTargetServer(input: ReserveTargetInput): Promise<PhysicalServer>;
  /** The clone incarnation on the reserved server, with the host's amounts (claim 4). Idempotent. */
  createCloneIncarnation(input: CreateCloneInput): Promise<HostIncarnation>;
  /** Capacity per incarnation and what can still be added to the host (see CapacityView). */
  capacityView(dedicatedHostId: string): Promise<CapacityView>;
  /** A new VM during the migration, placed on the clone after the aggregate check (claims 1f, 6, 7). Idempotent by vmId. */
  provisionVmOnClone(input: ProvisionOnCloneInput): Promise<ProvisionedVm>;
  /** Moves a VM's placement to another incarnation of its host, allocations with it. Idempotent. */
  moveVmPlacement(input: { vmId: string; migrationId: string; toIncarnationId: string } & Actor): Promise<Vm>;
  /** Swaps the host to its clone and deletes the old incarnation with its outbox row, atomically (claims 3, 5). Idempotent. */
  finalizeMigration(input: FinalizeInput): Promise<FinalizeResult>;
  /** Deletes the clone, releases the target server, host back to active. Idempotent. */
  rollbackMigration(input: { migrationId: string; dedicatedHostId: string } & Actor): Promise<RollbackResult>;
  getMigration(migrationId: string): Promise<HostMigrationRecord>;

  /** Claims up to `limit` pending de-provisioning jobs (SKIP LOCKED); a claim older than staleAfterMs is taken over. */
  claimDeprovisionJobs(input: { schedulerId: string; limit?: number; staleAfterMs?: number }): Promise<DeprovisionJob[]>;
  /** Server → the job's after-state, job done. Idempotent for the claimer; CONFLICT for anyone else. */
  completeDeprovisionJob(input: { jobId: number; schedulerId: string }): Promise<DeprovisionJob>;
  /** Gives a claimed job back after a failed attempt (error recorded), or gives up: server `failed`, job done. */
  releaseDeprovisionJob(input: { jobId: number; schedulerId: string; error: string; giveUp?: boolean }): Promise<DeprovisionJob>;
  listDeprovisionJobs(input?: { state?: 'pending' | 'done' }): Promise<DeprovisionJob[]>;

  /** Operator: take an idle server out of (or back into) the pool. */
  setServerState(input: { serverId: string; state: 'available' | 'maintenance' | 'failed' } & Actor): Promise<PhysicalServer>;

  getHost(id: string, opts?: { tenantId?: string }): Promise<HostView>;
  listHosts(opts?: { tenantId?: string }): Promise<HostView[]>;
  listVms(input: { dedicatedHostId: string; tenantId?: string; includeDeleted?: boolean }): Promise<Vm[]>;
  getVm(id: string, opts?: { tenantId?: string }): Promise<Vm>;
  listServers(opts?: { zone?: string; resourceClass?: string; state?: ServerState }): Promise<PhysicalServer[]>;
  getServer(id: string): Promise<PhysicalServer>;
  getIncarnation(id: string): Promise<HostIncarnation>;
  listIncarnations(input: { dedicatedHostId: string; includeDeleted?: boolean }): Promise<HostIncarnation[]>;
  /** Audit events, oldest first, filtered by host and/or migration; page with afterId. */
  listEvents(input: { dedicatedHostId?: string; migrationId?: string; afterId?: number; limit?: number }): Promise<AuditEvent[]>;
}

export interface CreateHostInput extends Actor {
  tenantId: string;
  name: string;
  zone: string;
  resourceClass: string;
  /** Optional caller-chosen id: a retry with the same id returns the same host. */
  dedicatedHostId?: string;
}

export interface PlaceVmInput extends Actor {
  /** Optional: generated when absent (then not idempotent). */
  vmId?: string;
  /** When given, must own the host (else NOT_FOUND, so other tenants' hosts do not leak). */
  tenantId?: string;
  dedicatedHostId: string;
  name: string;
  spec: VmSpec;
  incarnationId?: string;
  /** Required while the host migrates: only its migration places VMs then. */
  migrationId?: string;
}

export interface DeleteVmInput extends Actor {
  vmId: string;
  tenantId?: string;
  /** Required while the host migrates: only its migration deletes VMs then (claim 8 goes through the workflow). */
  migrationId?: string;
}

export interface ReserveTargetInput extends Actor {
  migrationId: string;
  dedicatedHostId: string;
  targetServerId?: string;
}

export interface CreateCloneInput extends Actor {
  migrationId: string;
  dedicatedHostId: string;
  serverId: string;
  /** Optional: generated when absent; a retry returns the migration's clone either way. */
  incarnationId?: string;
}

export interface ProvisionOnCloneInput extends Actor {
  vmId: string;
  migrationId: string;
  dedicatedHostId: string;
  name: string;
  spec: VmSpec;
  tenantId?: string;
}

/** The new VM, with the host's capacity right after it was placed: the clone's available already reduced (claim 6). */
export type ProvisionedVm = Vm & { capacity: CapacityView };

export interface FinalizeInput extends Actor {
  migrationId: string;
  dedicatedHostId: string;
  afterState?: DeprovisionAfterState;
}

/* ---------------------------------------------------------------- input validation */

const actorSchema = z.string().min(1).max(200);
/** Migration ids are derived from workflow ids (which embed the host id), so they may be longer than entity ids. */
const migrationIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[a-z0-9][a-z0-9._-]*$/, 'lowercase letters, digits, ".", "_" and "-" only');
const nameSchema = z.string().min(1).max(200);
const workloadSchema = z
  .record(z.string(), z.unknown())
  .refine((w) => JSON.stringify(w).length <= 16_384, 'at most 16 KiB of JSON');
const vmSpecSchema = z.object({ ...resourcesSchema.shape, workload: workloadSchema.optional() }).strict();
const afterStateSchema = z.enum(['available', 'maintenance']);

function parse<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  const r = schema.safeParse(input);
  if (!r.success) throw invalidInput(r.error);
  return r.data;
}

const createHostInput = z.object({
  tenantId: idSchema,
  name: nameSchema,
  zone: idSchema,
  resourceClass: idSchema,
  dedicatedHostId: idSchema.optional(),
  actor: actorSchema,
});
const placeVmInput = z.object({
  vmId: idSchema.optional(),
  tenantId: idSchema.optional(),
  dedicatedHostId: idSchema,
  name: nameSchema,
  spec: vmSpecSchema,
  incarnationId: idSchema.optional(),
  migrationId: migrationIdSchema.optional(),
  actor: actorSchema,
});
const deleteVmInput = z.object({
  vmId: idSchema,
  tenantId: idSchema.optional(),
  migrationId: migrationIdSchema.optional(),
  actor: actorSchema,
});
const markLostInput = z.object({ vmId: idSchema, migrationId: migrationIdSchema, reason: z.string().min(1).max(2000), actor: actorSchema });
const hostMigrationInput = z.object({ dedicatedHostId: idSchema, migrationId: migrationIdSchema, actor: actorSchema });
const reserveInput = hostMigrationInput.extend({ targetServerId: idSchema.optional() });
const cloneInput = hostMigrationInput.extend({ serverId: idSchema, incarnationId: idSchema.optional() });
const provisionInput = hostMigrationInput.extend({
  vmId: idSchema,
  name: nameSchema,
  spec: vmSpecSchema,
  tenantId: idSchema.optional(),
});
const moveInput = z.object({ vmId: idSchema, migrationId: migrationIdSchema, toIncarnationId: idSchema, actor: actorSchema });
const finalizeInput = hostMigrationInput.extend({ afterState: afterStateSchema.default('available') });
const schedulerIdSchema = z.string().min(1).max(100); // audit actor is `scheduler:<id>`, at most 200
const claimInput = z.object({
  schedulerId: schedulerIdSchema,
  limit: z.number().int().min(1).max(1000).default(10),
  staleAfterMs: z.number().int().min(0).max(7 * 24 * 3600 * 1000).default(5 * 60 * 1000),
});
const jobInput = z.object({ jobId: z.number().int().positive(), schedulerId: schedulerIdSchema });
const releaseJobInput = jobInput.extend({ error: z.string().max(10_000), giveUp: z.boolean().default(false) });
const serverStateInput = z.object({
  serverId: idSchema,
  state: z.enum(['available', 'maintenance', 'failed']),
  actor: actorSchema,
});
const eventsInput = z.object({
  dedicatedHostId: idSchema.optional(),
  migrationId: migrationIdSchema.optional(),
  afterId: z.number().int().min(0).optional(),
  limit: z.number().int().min(1).max(10_000).default(1000),
});

/* ---------------------------------------------------------------- helpers */

const newId = (prefix: string) => `${prefix}-${randomUUID()}`;
const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');
const SEED_LOCK_KEY = 7_262_010_002;

const resOf = (r: { vcpus: number; memory_mib: number; disk_gib: number }): Resources => ({
  vcpus: r.vcpus,
  memoryMiB: r.memory_mib,
  diskGiB: r.disk_gib,
});
const allocatedOf = (r: IncarnationRow): Resources => ({
  vcpus: r.allocated_vcpus,
  memoryMiB: r.allocated_memory_mib,
  diskGiB: r.allocated_disk_gib,
});
const minResources = (a: Resources, b: Resources): Resources => ({
  vcpus: Math.min(a.vcpus, b.vcpus),
  memoryMiB: Math.min(a.memoryMiB, b.memoryMiB),
  diskGiB: Math.min(a.diskGiB, b.diskGiB),
});
const sameSpec = (a: Resources, b: Resources) =>
  a.vcpus === b.vcpus && a.memoryMiB === b.memoryMiB && a.diskGiB === b.diskGiB;

function notFound(what: string, id: string, field: string): InventoryError {
  return new InventoryError('NOT_FOUND', `${field}: no ${what} ${id}`, field);
}

function insufficient(need: Resources, available: Resources, where: string): InventoryError | null {
  const k = shortfall(need, available);
  if (!k) return null;
  return new InventoryError(
    'INSUFFICIENT_CAPACITY',
    `insufficient ${k} on ${where}: needs ${need[k]}, available ${Math.max(0, available[k])}`,
    k,
    { resource: k, needed: need[k], available: Math.max(0, available[k]) },
  );
}

async function lockHost(c: PoolClient, id: string, tenantId?: string): Promise<HostRow> {
  const { rows } = await c.query<HostRow>('SELECT * FROM dedicated_hosts WHERE id = $1 FOR NO KEY UPDATE', [id]);
  const host = rows[0];
  // Another tenant's host answers exactly like a missing one, so existence does not leak.
  if (!host || (tenantId !== undefined && host.tenant_id !== tenantId)) throw notFound('dedicated host', id, 'dedicatedHostId');
  return host;
}

async function hostRow(c: PoolClient, id: string, tenantId?: string): Promise<HostRow> {
  const { rows } = await c.query<HostRow>('SELECT * FROM dedicated_hosts WHERE id = $1', [id]);
  const host = rows[0];
  if (!host || (tenantId !== undefined && host.tenant_id !== tenantId)) throw notFound('dedicated host', id, 'dedicatedHostId');
  return host;
}

async function liveIncarnations(c: PoolClient, hostId: string, lock: boolean): Promise<IncarnationRow[]> {
  const { rows } = await c.query<IncarnationRow>(
    `SELECT * FROM host_incarnations WHERE dedicated_host_id = $1 AND state = 'live' ORDER BY id${lock ? ' FOR NO KEY UPDATE' : ''}`,
    [hostId],
  );
  return rows;
}

async function incarnationRow(c: PoolClient, id: string): Promise<IncarnationRow | undefined> {
  const { rows } = await c.query<IncarnationRow>('SELECT * FROM host_incarnations WHERE id = $1', [id]);
  return rows[0];
}

async function serverRow(c: PoolClient, id: string, lock: boolean): Promise<ServerRow | undefined> {
  const { rows } = await c.query<ServerRow>(`SELECT * FROM physical_servers WHERE id = $1${lock ? ' FOR NO KEY UPDATE' : ''}`, [id]);
  return rows[0];
}

async function migrationRow(c: PoolClient, id: string): Promise<MigrationRow | undefined> {
  const { rows } = await c.query<MigrationRow>('SELECT * FROM host_migrations WHERE id = $1', [id]);
  return rows[0];
}

async function vmRow(c: PoolClient, id: string, lock: boolean): Promise<VmRow | undefined> {
  const { rows } = await c.query<VmRow>(`SELECT * FROM vms WHERE id = $1${lock ? ' FOR NO KEY UPDATE' : ''}`, [id]);
  return rows[0];
}

/**
 * A VM leaves the running set: deleted (by its tenant or its migration) or lost (its migration found it running
 * nowhere). A running VM gives its resources back to its incarnation; a lost one did so when it was found lost. The
 * caller holds the host and VM rows.
 */
async function endVm(
  c: PoolClient,
  dedicatedHostId: string,
  vm: VmRow,
  end: { state: 'deleted' | 'lost'; actor: string; migrationId?: string; reason?: string },
): Promise<VmRow> {
  const { rows: incs } = await c.query<IncarnationRow>('SELECT * FROM host_incarnations WHERE id = $1 FOR NO KEY UPDATE', [vm.incarnation_id]);
  if (vm.state === 'running') {
    await c.query(
      `UPDATE host_incarnations SET allocated_vcpus = allocated_vcpus - $2, allocated_memory_mib = allocated_memory_mib - $3,
              allocated_disk_gib = allocated_disk_gib - $4 WHERE id = $1`,
      [vm.incarnation_id, vm.vcpus, vm.memory_mib, vm.disk_gib],
    );
  }
  const { rows } = await c.query<VmRow>(
    end.state === 'deleted'
      ? `UPDATE vms SET state = 'deleted', deleted_at = now(), updated_at = now() WHERE id = $1 RETURNING *`
      : `UPDATE vms SET state = 'lost', lost_at = now(), lost_reason = $2, updated_at = now() WHERE id = $1 RETURNING *`,
    end.state === 'deleted' ? [vm.id] : [vm.id, end.reason ?? null],
  );
  await audit(c, {
    actor: end.actor,
    action: end.state === 'deleted' ? 'vm.deleted' : 'vm.lost',
    entityType: 'vm',
    entityId: vm.id,
    dedicatedHostId,
    migrationId: end.migrationId,
    details: end.reason ? { name: vm.name, reason: end.reason } : { name: vm.name },
    physical: { incarnationId: vm.incarnation_id, serverId: incs[0]?.server_id },
  });
  return rows[0]!;
}

async function runningVmsOn(c: PoolClient, incarnationId: string): Promise<string[]> {
  const { rows } = await c.query<{ id: string }>(
    `SELECT id FROM vms WHERE incarnation_id = $1 AND state = 'running' ORDER BY id`,
    [incarnationId],
  );
  return rows.map((r) => r.id);
}

/** The migration, which must be the one running on this (locked) host. */
async function requireRunningMigration(c: PoolClient, host: HostRow, migrationId: string): Promise<MigrationRow> {
  const m = await migrationRow(c, migrationId);
  if (!m || m.dedicated_host_id !== host.id)
    throw new InventoryError('NOT_FOUND', `migrationId: no migration ${migrationId} of host ${host.id}`, 'migrationId');
  if (m.state !== 'running' || host.migration_id !== migrationId)
    throw new InventoryError('WRONG_STATE', `migration ${migrationId} is ${m.state.replace('_', ' ')}, not running`, 'migrationId');
  return m;
}

/** Only the host's own migration may change its placements while it migrates; nobody else's migration ever may. */
function checkMigrationGate(host: HostRow, migrationId: string | undefined): void {
  if (host.migration_id === (migrationId ?? null)) return;
  if (host.migration_id && !migrationId)
    throw new InventoryError(
      'WRONG_STATE',
      `host ${host.id} is migrating (migration ${host.migration_id}): VMs are created and deleted through the migration`,
      'dedicatedHostId',
      { migrationId: host.migration_id },
    );
  if (!host.migration_id)
    throw new InventoryError('WRONG_STATE', `migration ${migrationId} is not running on host ${host.id}`, 'migrationId');
  throw new InventoryError('CONFLICT', `host ${host.id} is migrating under migration ${host.migration_id}, not ${migrationId}`, 'migrationId');
}

function incarnationCapacity(r: IncarnationRow): IncarnationCapacity {
  const allocated = allocatedOf(r);
  return { incarnationId: r.id, serverId: r.server_id, allocated, available: subtractResources(resOf(r), allocated) };
}

/** See CapacityView for the definition of aggregateAvailable. */
function capacityFrom(host: HostRow, live: IncarnationRow[]): CapacityView {
  const capacity = resOf(host);
  const primary = live.find((i) => i.id === host.current_incarnation_id);
  if (!primary) throw new Error(`inventory invariant broken: host ${host.id} has no live current incarnation`);
  const clone = live.find((i) => i.role === 'clone') ?? null;
  // Every running VM of the host must end up on the clone, so both incarnations' allocations count against it.
  let aggregateAvailable = subtractResources(capacity, allocatedOf(primary));
  if (clone) aggregateAvailable = subtractResources(aggregateAvailable, allocatedOf(clone));
  return {
    dedicatedHostId: host.id,
    capacity,
    primary: incarnationCapacity(primary),
    clone: clone ? incarnationCapacity(clone) : null,
    aggregateAvailable,
  };
}

const HOST_VIEW_SQL = `
  SELECT h.*, ci.server_id AS view_server_id,
         coalesce(v.vcpus, 0)::int AS used_vcpus, coalesce(v.memory_mib, 0)::int AS used_memory_mib,
         coalesce(v.disk_gib, 0)::int AS used_disk_gib, coalesce(v.n, 0)::int AS vm_count
    FROM dedicated_hosts h
    JOIN host_incarnations ci ON ci.id = h.current_incarnation_id
    LEFT JOIN LATERAL (
      SELECT sum(vcpus) AS vcpus, sum(memory_mib) AS memory_mib, sum(disk_gib) AS disk_gib, count(*) AS n
        FROM vms WHERE dedicated_host_id = h.id AND state = 'running') v ON true`;

type HostViewRow = HostRow & {
  view_server_id: string;
  used_vcpus: number;
  used_memory_mib: number;
  used_disk_gib: number;
  vm_count: number;
};

function toHostView(r: HostViewRow): HostView {
  const allocated = { vcpus: r.used_vcpus, memoryMiB: r.used_memory_mib, diskGiB: r.used_disk_gib };
  return {
    ...toHost(r),
    allocated,
    // Equal to CapacityView.aggregateAvailable: running VMs are exactly what the incarnations have allocated.
    available: subtractResources(resOf(r), allocated),
    vmCount: r.vm_count,
    serverId: r.view_server_id,
  };
}

async function hostView(c: PoolClient, id: string): Promise<HostView> {
  const { rows } = await c.query<HostViewRow>(`${HOST_VIEW_SQL} WHERE h.id = $1`, [id]);
  if (!rows[0]) throw notFound('dedicated host', id, 'dedicatedHostId');
  return toHostView(rows[0]);
}

async function jobRows(c: PoolClient, ids: string[]): Promise<Array<OutboxRow & { dedicated_host_id: string }>> {
  const { rows } = await c.query<OutboxRow & { dedicated_host_id: string }>(
    `SELECT o.*, s.agent_url, i.dedicated_host_id
       FROM deprovision_outbox o
       JOIN physical_servers s ON s.id = o.server_id
       JOIN host_incarnations i ON i.id = o.incarnation_id
      WHERE o.id = ANY($1::bigint[]) ORDER BY o.id`,
    [ids],
  );
  return rows;
}

/** Errors of the one-statement move that the step-by-step transaction retries (it retries them itself too). */
const RETRY_STEP_BY_STEP = new Set(['40P01' /* deadlock_detected */, '40001' /* serialization_failure */]);

/**
 * A VM's arrival, recorded in one statement (its own transaction) when everything is as expected: the VM runs on a
 * live incarnation of its host, the migration is the host's running one, and the target incarnation (live, same host)
 * has room. Null when any of that does not hold — the caller then runs the step-by-step transaction, which names
 * the problem or returns the VM already moved.
 *
 * Why one statement: every arrival of a host updates the same two incarnation rows, so arrivals queue on those row
 * locks; a transaction of eight round trips held them (and the host row) for eight round trips of a busy worker.
 * Here the locks are held for one statement and its commit. Locks are taken in the order every other writer takes
 * them — host, VM, incarnations by id — but the host row only FOR SHARE: arrivals of one host do not exclude each
 * other (the incarnation rows serialize their allocation changes), while finalize, rollback, placements and
 * deletes, which lock the host row FOR NO KEY UPDATE, still exclude them. The rows read after a lock wait are their
 * newest versions (READ COMMITTED re-reads locked rows), so the checks see what the updates will change; the
 * deferred triggers check allocations against the running VMs at commit, and the capacity CHECK at the update.
 */
async function movePlacementAtOnce(
  pool: Pool,
  p: { vmId: string; migrationId: string; toIncarnationId: string; actor: string },
): Promise<VmRow | null> {
  const { rows } = await pool.query<VmRow>(
    `WITH vm0 AS MATERIALIZED (
       SELECT dedicated_host_id FROM vms WHERE id = $1
     ), host AS MATERIALIZED (
       SELECT h.id, h.migration_id FROM dedicated_hosts h JOIN vm0 ON h.id = vm0.dedicated_host_id FOR SHARE OF h
     ), vm AS MATERIALIZED (
       SELECT v.* FROM vms v JOIN host ON v.dedicated_host_id = host.id WHERE v.id = $1 FOR NO KEY UPDATE OF v
     ), inc AS MATERIALIZED (
       SELECT i.* FROM host_incarnations i JOIN vm ON i.dedicated_host_id = vm.dedicated_host_id
        WHERE i.id IN (vm.incarnation_id, $3) AND vm.state = 'running' AND vm.incarnation_id <> $3
        ORDER BY i.id FOR NO KEY UPDATE OF i
     ), go AS MATERIALIZED (
       SELECT vm.id AS vm_id, vm.name, vm.vcpus, vm.memory_mib, vm.disk_gib, host.id AS host_id,
              f.id AS from_id, f.server_id AS from_server, t.id AS to_id, t.server_id AS to_server
         FROM vm, host, host_migrations m, inc f, inc t
        WHERE host.migration_id = $2 AND m.id = $2 AND m.dedicated_host_id = host.id AND m.state = 'running'
          AND f.id = vm.incarnation_id AND f.state = 'live' AND t.id = $3 AND t.state = 'live'
          AND t.allocated_vcpus + vm.vcpus <= t.vcpus AND t.allocated_memory_mib + vm.memory_mib <= t.memory_mib
          AND t.allocated_disk_gib + vm.disk_gib <= t.disk_gib
     ), moved_inc AS (
       UPDATE host_incarnations i
          SET allocated_vcpus = allocated_vcpus + CASE WHEN i.id = go.to_id THEN go.vcpus ELSE -go.vcpus END,
              allocated_memory_mib = allocated_memory_mib + CASE WHEN i.id = go.to_id THEN go.memory_mib ELSE -go.memory_mib END,
              allocated_disk_gib = allocated_disk_gib + CASE WHEN i.id = go.to_id THEN go.disk_gib ELSE -go.disk_gib END
         FROM go WHERE i.id IN (go.from_id, go.to_id)
     ), moved_vm AS (
       UPDATE vms v SET incarnation_id = go.to_id, updated_at = now() FROM go WHERE v.id = go.vm_id RETURNING v.*
     ), audited AS (
       INSERT INTO audit_events (actor, action, entity_type, entity_id, dedicated_host_id, migration_id, details, physical)
       SELECT $4, 'vm.moved', 'vm', go.vm_id, go.host_id, $2, jsonb_build_object('name', go.name),
              jsonb_build_object('fromIncarnationId', go.from_id, 'fromServerId', go.from_server,
                                 'toIncarnationId', go.to_id, 'toServerId', go.to_server)
         FROM go
     )
     SELECT * FROM moved_vm`,
    [p.vmId, p.migrationId, p.toIncarnationId, p.actor],
  );
  return rows[0] ?? null;
}

/* ---------------------------------------------------------------- the inventory */

export function createInventory(pool: Pool): Inventory {
  const tx = <T>(fn: (c: PoolClient) => Promise<T>) => withTransaction(pool, fn);
  const read = async <T>(fn: (c: PoolClient) => Promise<T>): Promise<T> => {
    const c = await pool.connect();
    try {
      return await fn(c);
    } finally {
      c.release();
    }
  };

  async function snapshot(c: PoolClient, host: HostRow, m: MigrationRow): Promise<MigrationSnapshot> {
    const inc = await incarnationRow(c, m.source_incarnation_id);
    const srv = await serverRow(c, m.source_server_id, false);
    const { rows } = await c.query<VmRow>(
      `SELECT * FROM vms WHERE dedicated_host_id = $1 AND state = 'running' ORDER BY created_at, id`,
      [host.id],
    );
    return {
      migration: toMigration(m),
      host: toHost(host),
      source: { incarnation: toIncarnation(inc!), server: toServer(srv!) },
      vms: rows.map(toVm),
    };
  }

  /** The one path by which a VM gets placed: gate, idempotency, capacity under locks, insert, audit. */
  async function placeTx(
    c: PoolClient,
    p: z.output<typeof placeVmInput> & { onClone: boolean },
    // A caller that has locked the host and looked the VM up already passes them: one round trip each saved.
    known?: { host: HostRow; existing: VmRow | undefined },
  ): Promise<{ vm: VmRow; host: HostRow; live: IncarnationRow[] }> {
    const host = known?.host ?? (await lockHost(c, p.dedicatedHostId, p.tenantId));
    const vmId = p.vmId ?? newId('vm');
    const spec: Resources = { vcpus: p.spec.vcpus, memoryMiB: p.spec.memoryMiB, diskGiB: p.spec.diskGiB };
    const existing = known ? known.existing : await vmRow(c, vmId, false);
    if (existing) {
      // Same id, same request: the first answer. Same id for something else: a caller bug worth stopping.
      if (existing.dedicated_host_id === host.id && existing.name === p.name && sameSpec(resOf(existing), spec))
        return { vm: existing, host, live: await liveIncarnations(c, host.id, false) };
      throw new InventoryError('CONFLICT', `vmId: ${vmId} already names a different VM`, 'vmId');
    }
    checkMigrationGate(host, p.migrationId);
    const live = await liveIncarnations(c, host.id, true);
    let target: IncarnationRow | undefined;
    if (p.onClone) {
      target = live.find((i) => i.role === 'clone');
      if (!target)
        throw new InventoryError('WRONG_STATE', `migration ${p.migrationId} has no clone incarnation yet`, 'migrationId');
    } else {
      const want = p.incarnationId ?? host.current_incarnation_id;
      target = live.find((i) => i.id === want);
      if (!target) throw notFound(`live incarnation of host ${host.id}:`, want, 'incarnationId');
    }
    const cap = capacityFrom(host, live);
    const where = host.migration_id
      ? `host ${host.id} (aggregate of the host and its clone)`
      : `host ${host.id}`;
    const short = insufficient(spec, minResources(incarnationCapacity(target).available, cap.aggregateAvailable), where);
    if (short) throw short;
    let vm: VmRow;
    try {
      const { rows } = await c.query<VmRow>(
        `INSERT INTO vms (id, tenant_id, dedicated_host_id, incarnation_id, name, vcpus, memory_mib, disk_gib, workload, created_by_migration)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *`,
        [vmId, host.tenant_id, host.id, target.id, p.name, spec.vcpus, spec.memoryMiB, spec.diskGiB,
          JSON.stringify(p.spec.workload ?? {}), p.migrationId ?? null],
      );
      vm = rows[0]!;
    } catch (err) {
      // The same id placed concurrently on another host (this host's lock does not cover that).
      if (pgErrorCode(err) === '23505' && pgConstraint(err) === 'vms_pkey')
        throw new InventoryError('CONFLICT', `vmId: ${vmId} already names a different VM`, 'vmId');
      throw err;
    }
    await c.query(
      `UPDATE host_incarnations SET allocated_vcpus = allocated_vcpus + $2, allocated_memory_mib = allocated_memory_mib + $3,
              allocated_disk_gib = allocated_disk_gib + $4 WHERE id = $1`,
      [target.id, spec.vcpus, spec.memoryMiB, spec.diskGiB],
    );
    await audit(c, {
      actor: p.actor,
      action: p.onClone ? 'vm.provisioned_on_clone' : 'vm.placed',
      entityType: 'vm',
      entityId: vmId,
      dedicatedHostId: host.id,
      migrationId: p.migrationId,
      details: { name: p.name, spec },
      physical: { incarnationId: target.id, serverId: target.server_id },
    });
    // The live incarnations as they are now (the rows were read under lock; only the target's allocation changed).
    const placedOn = target;
    const after = live.map((i) =>
      i.id === placedOn.id
        ? { ...i, allocated_vcpus: i.allocated_vcpus + spec.vcpus, allocated_memory_mib: i.allocated_memory_mib + spec.memoryMiB, allocated_disk_gib: i.allocated_disk_gib + spec.diskGiB }
        : i,
    );
    return { vm, host, live: after };
  }

  async function finalizeResult(c: PoolClient, m: MigrationRow): Promise<FinalizeResult> {
    const host = await hostRow(c, m.dedicated_host_id);
    const current = await incarnationRow(c, m.clone_incarnation_id!);
    const deleted = await incarnationRow(c, m.source_incarnation_id);
    const { rows } = await c.query<{ id: string }>('SELECT id FROM deprovision_outbox WHERE incarnation_id = $1', [
      m.source_incarnation_id,
    ]);
    const job = (await jobRows(c, [rows[0]!.id]))[0]!;
    return {
      migration: toMigration(m),
      host: toHost(host),
      currentIncarnation: toIncarnation(current!),
      deletedIncarnation: toIncarnation(deleted!),
      deprovisionJob: toJob(job),
    };
  }

  async function rollbackResult(c: PoolClient, m: MigrationRow): Promise<RollbackResult> {
    const host = await hostRow(c, m.dedicated_host_id);
    const clone = m.clone_incarnation_id ? await incarnationRow(c, m.clone_incarnation_id) : undefined;
    const srv = m.target_server_id ? await serverRow(c, m.target_server_id, false) : undefined;
    return {
      migration: toMigration(m),
      host: toHost(host),
      deletedClone: clone ? toIncarnation(clone) : null,
      releasedServer: srv ? toServer(srv) : null,
    };
  }

  return {
    async seedFleet(fleetInput, agentUrls = new Map(), opts = {}) {
      const fleet = parse(fleetSchema, fleetInput);
      const actor = parse(actorSchema, opts.actor ?? 'operator');
      const urls = agentUrls instanceof Map ? agentUrls : new Map(Object.entries(agentUrls as Record<string, string>));
      const resolvedUrls = fleet.servers.map((s) => {
        // A fixed agent port implies a loopback agent; with port 0 the caller must say where the agent listens.
        const url = urls.get(s.id) ?? (s.agentPort > 0 ? `http://127.0.0.1:${s.agentPort}` : undefined);
        if (!url || !/^https?:\/\/\S+$/.test(url))
          throw new InventoryError('INVALID_INPUT', `agentUrls.${s.id}: no agent URL for server ${s.id}`, `agentUrls.${s.id}`);
        return url;
      });
      return tx(async (c) => {
        // Two processes seeding at once would race on the same inserts; one at a time is plenty.
        await c.query('SELECT pg_advisory_xact_lock($1)', [SEED_LOCK_KEY]);
        for (const zone of fleet.zones) await c.query('INSERT INTO zones (id) VALUES ($1) ON CONFLICT DO NOTHING', [zone]);
        for (const [cls, r] of Object.entries(fleet.resourceClasses)) {
          // Hosts keep the amounts they were created with; a changed class only affects new hosts.
          await c.query(
            `INSERT INTO resource_classes (id, vcpus, memory_mib, disk_gib) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET vcpus = EXCLUDED.vcpus, memory_mib = EXCLUDED.memory_mib,
               disk_gib = EXCLUDED.disk_gib, updated_at = now()
             WHERE (resource_classes.vcpus, resource_classes.memory_mib, resource_classes.disk_gib)
                   IS DISTINCT FROM (EXCLUDED.vcpus, EXCLUDED.memory_mib, EXCLUDED.disk_gib)`,
            [cls, r.vcpus, r.memoryMiB, r.diskGiB],
          );
        }
        const result: SeedResult = { added: [], updated: [], unchanged: [] };
        for (const [i, s] of fleet.servers.entries()) {
          const url = resolvedUrls[i]!;
          const cur = await serverRow(c, s.id, true);
          if (!cur) {
            await c.query(
              `INSERT INTO physical_servers (id, zone, resource_class, vcpus, memory_mib, disk_gib, nic_bandwidth_bps, agent_url, backend)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
              [s.id, s.zone, s.resourceClass, s.capacity.vcpus, s.capacity.memoryMiB, s.capacity.diskGiB, s.nicBandwidthBps, url, s.backend],
            );
            await audit(c, {
              actor,
              action: 'server.added',
              entityType: 'physical_server',
              entityId: s.id,
              details: {},
              physical: { zone: s.zone, resourceClass: s.resourceClass, capacity: s.capacity, nicBandwidthBps: s.nicBandwidthBps, agentUrl: url },
            });
            result.added.push(s.id);
            continue;
          }
          const changes: Record<string, { from: unknown; to: unknown }> = {};
          const note = (field: string, from: unknown, to: unknown) => {
            if (from !== to) changes[field] = { from, to };
          };
          note('zone', cur.zone, s.zone);
          note('resourceClass', cur.resource_class, s.resourceClass);
          note('capacity.vcpus', cur.vcpus, s.capacity.vcpus);
          note('capacity.memoryMiB', cur.memory_mib, s.capacity.memoryMiB);
          note('capacity.diskGiB', cur.disk_gib, s.capacity.diskGiB);
          const hardware = Object.keys(changes)[0];
          note('nicBandwidthBps', cur.nic_bandwidth_bps, s.nicBandwidthBps);
          note('agentUrl', cur.agent_url, url);
          note('backend', cur.backend, s.backend);
          if (Object.keys(changes).length === 0) {
            result.unchanged.push(s.id);
            continue;
          }
          // Re-seeding must never pull the ground from under a host: hardware of a busy server stays as it is.
          if (hardware && !['available', 'maintenance', 'failed'].includes(cur.state))
            throw new InventoryError(
              'CONFLICT',
              `servers.${i}.${hardware}: server ${s.id} is ${cur.state}; its zone, class and capacity cannot change while in use`,
              `servers.${i}.${hardware}`,
            );
          await c.query(
            `UPDATE physical_servers SET zone = $2, resource_class = $3, vcpus = $4, memory_mib = $5, disk_gib = $6,
                    nic_bandwidth_bps = $7, agent_url = $8, backend = $9, updated_at = now() WHERE id = $1`,
            [s.id, s.zone, s.resourceClass, s.capacity.vcpus, s.capacity.memoryMiB, s.capacity.diskGiB, s.nicBandwidthBps, url, s.backend],
          );
          await audit(c, { actor, action: 'server.updated', entityType: 'physical_server', entityId: s.id, physical: { changes } });
          result.updated.push(s.id);
        }
        return result;
      });
    },

    async createTenant(name, opts = {}) {
      const n = parse(z.object({ name: nameSchema, actor: actorSchema }), { name, actor: opts.actor ?? 'operator' });
      // 256 random bits: a plain sha256 of it cannot be brute-forced, so no slow KDF is needed.
      const token = `dhm_${randomBytes(32).toString('base64url')}`;
      const id = newId('tn');
      return tx(async (c) => {
        const { rows } = await c.query<TenantRow>('INSERT INTO tenants (id, name, token_hash) VALUES ($1, $2, $3) RETURNING *', [
          id,
          n.name,
          hashToken(token),
        ]);
        await audit(c, { actor: n.actor, action: 'tenant.created', entityType: 'tenant', entityId: id, details: { name: n.name } });
        return { ...toTenant(rows[0]!), token };
      });
    },

    async findTenantByToken(token) {
      if (typeof token !== 'string' || token.length === 0 || token.length > 512) return null;
      const { rows } = await pool.query<TenantRow>('SELECT id, name, created_at FROM tenants WHERE token_hash = $1', [hashToken(token)]);
      return rows[0] ? toTenant(rows[0]) : null;
    },

    async getTenant(id) {
      const tid = parse(idSchema, id);
      const { rows } = await pool.query<TenantRow>('SELECT id, name, created_at FROM tenants WHERE id = $1', [tid]);
      if (!rows[0]) throw notFound('tenant', tid, 'tenantId');
      return toTenant(rows[0]);
    },

    async createDedicatedHost(input) {
      const p = parse(createHostInput, input);
      return tx(async (c) => {
        const tenant = await c.query('SELECT 1 FROM tenants WHERE id = $1', [p.tenantId]);
        if (!tenant.rowCount) throw notFound('tenant', p.tenantId, 'tenantId');
        if (p.dedicatedHostId) {
          // Serialize concurrent retries of one request on the id (the host row does not exist yet to lock).
          await c.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`dedicated_host:${p.dedicatedHostId}`]);
          const { rows } = await c.query<HostRow>('SELECT * FROM dedicated_hosts WHERE id = $1', [p.dedicatedHostId]);
          const prev = rows[0];
          if (prev) {
            if (prev.tenant_id === p.tenantId && prev.name === p.name && prev.zone === p.zone && prev.resource_class === p.resourceClass)
              return hostView(c, prev.id);
            throw new InventoryError('CONFLICT', `dedicatedHostId: ${p.dedicatedHostId} already names another host`, 'dedicatedHostId');
          }
        }
        const zone = await c.query('SELECT 1 FROM zones WHERE id = $1', [p.zone]);
        if (!zone.rowCount) throw new InventoryError('INVALID_INPUT', `zone: unknown zone ${p.zone}`, 'zone');
        const { rows: classes } = await c.query<{ vcpus: number; memory_mib: number; disk_gib: number }>(
          'SELECT vcpus, memory_mib, disk_gib FROM resource_classes WHERE id = $1',
          [p.resourceClass],
        );
        if (!classes[0])
          throw new InventoryError('INVALID_INPUT', `resourceClass: unknown resource class ${p.resourceClass}`, 'resourceClass');
        const amounts = resOf(classes[0]);
        // Best fit: the smallest matching server, so bigger ones stay free for when nothing else fits.
        const { rows: free } = await c.query<ServerRow>(
          `SELECT * FROM physical_servers
            WHERE zone = $1 AND resource_class = $2 AND state = 'available'
              AND vcpus >= $3 AND memory_mib >= $4 AND disk_gib >= $5
            ORDER BY vcpus, memory_mib, disk_gib, id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED`,
          [p.zone, p.resourceClass, amounts.vcpus, amounts.memoryMiB, amounts.diskGiB],
        );
        const server = free[0];
        if (!server)
          throw new InventoryError('NO_MATCHING_SERVER', `no available server of class ${p.resourceClass} in zone ${p.zone}`, undefined, {
            zone: p.zone,
            resourceClass: p.resourceClass,
          });
        const hostId = p.dedicatedHostId ?? newId('dh');
        const incId = newId('inc');
        await c.query(`UPDATE physical_servers SET state = 'allocated', updated_at = now() WHERE id = $1`, [server.id]);
        await c.query(
          `INSERT INTO dedicated_hosts (id, tenant_id, name, zone, resource_class, vcpus, memory_mib, disk_gib, current_incarnation_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
          [hostId, p.tenantId, p.name, p.zone, p.resourceClass, amounts.vcpus, amounts.memoryMiB, amounts.diskGiB, incId],
        );
        await c.query(
          `INSERT INTO host_incarnations (id, dedicated_host_id, server_id, role, vcpus, memory_mib, disk_gib)
           VALUES ($1, $2, $3, 'primary', $4, $5, $6)`,
          [incId, hostId, server.id, amounts.vcpus, amounts.memoryMiB, amounts.diskGiB],
        );
        const base = { actor: p.actor, dedicatedHostId: hostId };
        await audit(c, {
          ...base,
          action: 'host.created',
          entityType: 'dedicated_host',
          entityId: hostId,
          details: { name: p.name, zone: p.zone, resourceClass: p.resourceClass, capacity: amounts },
          physical: { serverId: server.id, incarnationId: incId },
        });
        await audit(c, { ...base, action: 'incarnation.created', entityType: 'host_incarnation', entityId: incId, physical: { serverId: server.id, role: 'primary' } });
        await audit(c, { ...base, action: 'server.allocated', entityType: 'physical_server', entityId: server.id, physical: { incarnationId: incId } });
        return hostView(c, hostId);
      });
    },

    async placeVm(input) {
      const p = parse(placeVmInput, input);
      return tx(async (c) => toVm((await placeTx(c, { ...p, onClone: false })).vm));
    },

    async deleteVm(input) {
      const p = parse(deleteVmInput, input);
      return tx(async (c) => {
        const first = await vmRow(c, p.vmId, false);
        if (!first || (p.tenantId !== undefined && first.tenant_id !== p.tenantId)) throw notFound('VM', p.vmId, 'vmId');
        const host = await lockHost(c, first.dedicated_host_id);
        const vm = (await vmRow(c, p.vmId, true))!;
        if (vm.state === 'deleted') return toVm(vm);
        // A lost VM is gone already: the tenant deleting it only closes the record, on any host state.
        if (vm.state !== 'lost') checkMigrationGate(host, p.migrationId);
        return toVm(await endVm(c, host.id, vm, { state: 'deleted', actor: p.actor, migrationId: p.migrationId }));
      });
    },

    async markVmLost(input) {
      const p = parse(markLostInput, input);
      return tx(async (c) => {
        const first = await vmRow(c, p.vmId, false);
        if (!first) throw notFound('VM', p.vmId, 'vmId');
        const host = await lockHost(c, first.dedicated_host_id);
        const vm = (await vmRow(c, p.vmId, true))!;
        if (vm.state !== 'running') return toVm(vm);
        checkMigrationGate(host, p.migrationId);
        return toVm(await endVm(c, host.id, vm, { state: 'lost', actor: p.actor, migrationId: p.migrationId, reason: p.reason }));
      });
    },

    async beginMigration(input) {
      const p = parse(hostMigrationInput, input);
      return tx(async (c) => {
        const host = await lockHost(c, p.dedicatedHostId);
        const prev = await migrationRow(c, p.migrationId);
        if (prev) {
          if (prev.dedicated_host_id !== host.id)
            throw new InventoryError('CONFLICT', `migrationId: ${p.migrationId} is a migration of another host`, 'migrationId');
          if (prev.state === 'running') return snapshot(c, host, prev);
          throw new InventoryError(
            'CONFLICT',
            `migrationId: migration ${p.migrationId} already ended (${prev.state.replace('_', ' ')}); a new migration needs a new id`,
            'migrationId',
          );
        }
        if (host.migration_id)
          throw new InventoryError('CONFLICT', `host ${host.id} is already migrating (migration ${host.migration_id})`, 'dedicatedHostId', {
            migrationId: host.migration_id,
          });
        const [source] = await c.query<IncarnationRow>('SELECT * FROM host_incarnations WHERE id = $1 FOR NO KEY UPDATE', [
          host.current_incarnation_id,
        ]).then((r) => r.rows);
        const { rows } = await c.query<MigrationRow>(
          `INSERT INTO host_migrations (id, dedicated_host_id, source_incarnation_id, source_server_id) VALUES ($1, $2, $3, $4) RETURNING *`,
          [p.migrationId, host.id, source!.id, source!.server_id],
        );
        const { rows: hosts } = await c.query<HostRow>(
          `UPDATE dedicated_hosts SET state = 'migrating', migration_id = $2, updated_at = now() WHERE id = $1 RETURNING *`,
          [host.id, p.migrationId],
        );
        await audit(c, {
          actor: p.actor,
          action: 'host.migration_started',
          entityType: 'dedicated_host',
          entityId: host.id,
          dedicatedHostId: host.id,
          migrationId: p.migrationId,
          physical: { sourceIncarnationId: source!.id, sourceServerId: source!.server_id },
        });
        return snapshot(c, hosts[0]!, rows[0]!);
      });
    },

    async reserveTargetServer(input) {
      const p = parse(reserveInput, input);
      return tx(async (c) => {
        const host = await lockHost(c, p.dedicatedHostId);
        const m = await requireRunningMigration(c, host, p.migrationId);
        if (m.target_server_id) {
          if (p.targetServerId && p.targetServerId !== m.target_server_id)
            throw new InventoryError(
              'CONFLICT',
              `targetServerId: migration ${m.id} already holds server ${m.target_server_id}`,
              'targetServerId',
            );
          return toServer((await serverRow(c, m.target_server_id, false))!);
        }
        const need = resOf(host);
        let target: ServerRow | undefined;
        if (p.targetServerId) {
          // A named target: wait for its lock (no SKIP LOCKED) so the answer about it is definitive.
          target = await serverRow(c, p.targetServerId, true);
          if (!target) throw notFound('physical server', p.targetServerId, 'targetServerId');
          const why =
            targetMismatch(
              { zone: host.zone, resourceClass: host.resource_class, capacity: need },
              { id: target.id, zone: target.zone, resourceClass: target.resource_class, capacity: resOf(target) },
              m.source_server_id,
            ) ?? (target.state !== 'available' ? `is not available (it is ${target.state})` : null);
          if (why)
            throw new InventoryError('INVALID_INPUT', `targetServerId: server ${target.id} ${why}`, 'targetServerId');
        } else {
          const { rows } = await c.query<ServerRow>(
            `SELECT * FROM physical_servers
              WHERE zone = $1 AND resource_class = $2 AND state = 'available' AND id <> $3
                AND vcpus >= $4 AND memory_mib >= $5 AND disk_gib >= $6
              ORDER BY vcpus, memory_mib, disk_gib, id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED`,
            [host.zone, host.resource_class, m.source_server_id, need.vcpus, need.memoryMiB, need.diskGiB],
          );
          target = rows[0];
          if (!target)
            throw new InventoryError(
              'NO_MATCHING_SERVER',
              `no available server of class ${host.resource_class} in zone ${host.zone} other than the source`,
              undefined,
              { zone: host.zone, resourceClass: host.resource_class },
            );
        }
        const { rows } = await c.query<ServerRow>(
          `UPDATE physical_servers SET state = 'reserved', reserved_by_migration = $2, updated_at = now() WHERE id = $1 RETURNING *`,
          [target.id, m.id],
        );
        await c.query('UPDATE host_migrations SET target_server_id = $2 WHERE id = $1', [m.id, target.id]);
        await audit(c, {
          actor: p.actor,
          action: 'server.reserved',
          entityType: 'physical_server',
          entityId: target.id,
          dedicatedHostId: host.id,
          migrationId: m.id,
          physical: { named: Boolean(p.targetServerId) },
        });
        return toServer(rows[0]!);
      });
    },

    async createCloneIncarnation(input) {
      const p = parse(cloneInput, input);
      return tx(async (c) => {
        const host = await lockHost(c, p.dedicatedHostId);
        const m = await requireRunningMigration(c, host, p.migrationId);
        if (m.clone_incarnation_id) {
          const inc = (await incarnationRow(c, m.clone_incarnation_id))!;
          if (p.incarnationId && p.incarnationId !== inc.id)
            throw new InventoryError('CONFLICT', `incarnationId: migration ${m.id} already has clone ${inc.id}`, 'incarnationId');
          if (p.serverId !== inc.server_id)
            throw new InventoryError('CONFLICT', `serverId: migration ${m.id} already has its clone on server ${inc.server_id}`, 'serverId');
          return toIncarnation(inc);
        }
        if (!m.target_server_id)
          throw new InventoryError('WRONG_STATE', `serverId: migration ${m.id} has not reserved a target server yet`, 'serverId');
        if (m.target_server_id !== p.serverId)
          throw new InventoryError('INVALID_INPUT', `serverId: migration ${m.id} reserved server ${m.target_server_id}, not ${p.serverId}`, 'serverId');
        const server = (await serverRow(c, p.serverId, true))!;
        if (server.state !== 'reserved' || server.reserved_by_migration !== m.id)
          throw new Error(`inventory invariant broken: server ${server.id} is ${server.state} but migration ${m.id} holds it`);
        const incId = p.incarnationId ?? newId('inc');
        if (await incarnationRow(c, incId))
          throw new InventoryError('CONFLICT', `incarnationId: ${incId} already names another incarnation`, 'incarnationId');
        await c.query(`UPDATE physical_servers SET state = 'allocated', updated_at = now() WHERE id = $1`, [server.id]);
        const { rows } = await c.query<IncarnationRow>(
          `INSERT INTO host_incarnations (id, dedicated_host_id, server_id, role, vcpus, memory_mib, disk_gib, migration_id)
           VALUES ($1, $2, $3, 'clone', $4, $5, $6, $7) RETURNING *`,
          [incId, host.id, server.id, host.vcpus, host.memory_mib, host.disk_gib, m.id],
        );
        await c.query('UPDATE host_migrations SET clone_incarnation_id = $2 WHERE id = $1', [m.id, incId]);
        const base = { actor: p.actor, dedicatedHostId: host.id, migrationId: m.id };
        await audit(c, {
          ...base,
          action: 'incarnation.created',
          entityType: 'host_incarnation',
          entityId: incId,
          physical: { serverId: server.id, role: 'clone', capacity: resOf(host) },
        });
        await audit(c, { ...base, action: 'server.allocated', entityType: 'physical_server', entityId: server.id, physical: { incarnationId: incId } });
        return toIncarnation(rows[0]!);
      });
    },

    async capacityView(dedicatedHostId) {
      const id = parse(idSchema, dedicatedHostId);
      return read(async (c) => {
        // One snapshot for both reads, so the two incarnations are seen consistently.
        await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
        try {
          const host = await hostRow(c, id);
          return capacityFrom(host, await liveIncarnations(c, host.id, false));
        } finally {
          await c.query('COMMIT');
        }
      });
    },

    async provisionVmOnClone(input) {
      const p = parse(provisionInput, input);
      return tx(async (c) => {
        const host = await lockHost(c, p.dedicatedHostId, p.tenantId);
        // A retry after the VM was placed gets the first answer even if the migration has moved on since.
        const existing = await vmRow(c, p.vmId, false);
        if (!existing || existing.created_by_migration !== p.migrationId) await requireRunningMigration(c, host, p.migrationId);
        const { vm, live } = await placeTx(c, { ...p, onClone: true }, { host, existing });
        return { ...toVm(vm), capacity: capacityFrom(host, live) };
      });
    },

    async moveVmPlacement(input) {
      const p = parse(moveInput, input);
      // The common case in one statement; anything else (an error to explain, a retry of a move already recorded, a
      // lock conflict) takes the step-by-step transaction below, which answers exactly as before.
      const moved = await movePlacementAtOnce(pool, p).catch((err: unknown) => {
        if (RETRY_STEP_BY_STEP.has(pgErrorCode(err) ?? '')) return null;
        throw err;
      });
      if (moved) return toVm(moved);
      return tx(async (c) => {
        const first = await vmRow(c, p.vmId, false);
        if (!first) throw notFound('VM', p.vmId, 'vmId');
        const host = await lockHost(c, first.dedicated_host_id);
        await requireRunningMigration(c, host, p.migrationId);
        const vm = (await vmRow(c, p.vmId, true))!;
        if (vm.state !== 'running') throw new InventoryError('WRONG_STATE', `vmId: VM ${vm.id} is ${vm.state}`, 'vmId');
        if (vm.incarnation_id === p.toIncarnationId) return toVm(vm);
        const live = await liveIncarnations(c, host.id, true);
        const to = live.find((i) => i.id === p.toIncarnationId);
        if (!to) throw notFound(`live incarnation of host ${host.id}:`, p.toIncarnationId, 'toIncarnationId');
        const from = live.find((i) => i.id === vm.incarnation_id)!;
        const spec = resOf(vm);
        const short = insufficient(spec, incarnationCapacity(to).available, `incarnation ${to.id}`);
        if (short) throw short;
        await c.query(
          `UPDATE host_incarnations
              SET allocated_vcpus = allocated_vcpus + CASE WHEN id = $2 THEN $3::int ELSE -$3::int END,
                  allocated_memory_mib = allocated_memory_mib + CASE WHEN id = $2 THEN $4::int ELSE -$4::int END,
                  allocated_disk_gib = allocated_disk_gib + CASE WHEN id = $2 THEN $5::int ELSE -$5::int END
            WHERE id IN ($1, $2)`,
          [from.id, to.id, spec.vcpus, spec.memoryMiB, spec.diskGiB],
        );
        const { rows } = await c.query<VmRow>(
          'UPDATE vms SET incarnation_id = $2, updated_at = now() WHERE id = $1 RETURNING *',
          [vm.id, to.id],
        );
        await audit(c, {
          actor: p.actor,
          action: 'vm.moved',
          entityType: 'vm',
          entityId: vm.id,
          dedicatedHostId: host.id,
          migrationId: p.migrationId,
          details: { name: vm.name },
          physical: { fromIncarnationId: from.id, fromServerId: from.server_id, toIncarnationId: to.id, toServerId: to.server_id },
        });
        return toVm(rows[0]!);
      });
    },

    async finalizeMigration(input) {
      const p = parse(finalizeInput, input);
      return tx(async (c) => {
        const host = await lockHost(c, p.dedicatedHostId);
        const m = await migrationRow(c, p.migrationId);
        if (!m || m.dedicated_host_id !== host.id)
          throw new InventoryError('NOT_FOUND', `migrationId: no migration ${p.migrationId} of host ${host.id}`, 'migrationId');
        if (m.state === 'finalized') return finalizeResult(c, m);
        if (m.state === 'rolled_back')
          throw new InventoryError('WRONG_STATE', `migration ${m.id} was rolled back; it cannot be finalized`, 'migrationId');
        if (!m.clone_incarnation_id)
          throw new InventoryError('WRONG_STATE', `migration ${m.id} has no clone incarnation to finalize onto`, 'migrationId');
        const live = await liveIncarnations(c, host.id, true);
        const old = live.find((i) => i.id === m.source_incarnation_id)!;
        const clone = live.find((i) => i.id === m.clone_incarnation_id)!;
        const left = await runningVmsOn(c, old.id);
        if (left.length > 0)
          throw new InventoryError(
            'WRONG_STATE',
            `${left.length} VM(s) still run on the old incarnation (${left.slice(0, 5).join(', ')}${left.length > 5 ? ', …' : ''}); move or delete them first`,
            undefined,
            { vmIds: left },
          );
        // Lock both servers in id order (the scheduler and other migrations lock servers too).
        await c.query('SELECT id FROM physical_servers WHERE id IN ($1, $2) ORDER BY id FOR NO KEY UPDATE', [old.server_id, clone.server_id]);
        // The swap (claim 3): the clone becomes the host's primary under the same host id; the old one is deleted.
        await c.query(`UPDATE host_incarnations SET state = 'deleted', deleted_at = now() WHERE id = $1`, [old.id]);
        await c.query(`UPDATE host_incarnations SET role = 'primary' WHERE id = $1`, [clone.id]);
        await c.query(
          `UPDATE dedicated_hosts SET current_incarnation_id = $2, state = 'active', migration_id = NULL, updated_at = now() WHERE id = $1`,
          [host.id, clone.id],
        );
        await c.query(`UPDATE physical_servers SET state = 'deprovisioning', updated_at = now() WHERE id = $1`, [old.server_id]);
        await c.query(`UPDATE physical_servers SET reserved_by_migration = NULL, updated_at = now() WHERE id = $1`, [clone.server_id]);
        // Deleting the old host object prompts the scheduler (claim 5): the outbox row, NOTIFY at commit.
        const { rows: jobs } = await c.query<{ id: string }>(
          `INSERT INTO deprovision_outbox (incarnation_id, server_id, migration_id, after_state) VALUES ($1, $2, $3, $4) RETURNING id`,
          [old.id, old.server_id, m.id, p.afterState],
        );
        const { rows: ms } = await c.query<MigrationRow>(
          `UPDATE host_migrations SET state = 'finalized', ended_at = now(), after_state = $2 WHERE id = $1 RETURNING *`,
          [m.id, p.afterState],
        );
        const base = { actor: p.actor, dedicatedHostId: host.id, migrationId: m.id };
        await audit(c, {
          ...base,
          action: 'host.migration_finalized',
          entityType: 'dedicated_host',
          entityId: host.id,
          physical: { fromIncarnationId: old.id, fromServerId: old.server_id, toIncarnationId: clone.id, toServerId: clone.server_id },
        });
        await audit(c, { ...base, action: 'incarnation.promoted', entityType: 'host_incarnation', entityId: clone.id, physical: { serverId: clone.server_id } });
        await audit(c, { ...base, action: 'incarnation.deleted', entityType: 'host_incarnation', entityId: old.id, physical: { serverId: old.server_id } });
        await audit(c, { ...base, action: 'server.deprovisioning', entityType: 'physical_server', entityId: old.server_id, physical: { afterState: p.afterState } });
        await audit(c, {
          ...base,
          action: 'deprovision.enqueued',
          entityType: 'deprovision_job',
          entityId: jobs[0]!.id,
          physical: { serverId: old.server_id, incarnationId: old.id, afterState: p.afterState },
        });
        return finalizeResult(c, ms[0]!);
      });
    },

    async rollbackMigration(input) {
      const p = parse(hostMigrationInput, input);
      return tx(async (c) => {
        const host = await lockHost(c, p.dedicatedHostId);
        const m = await migrationRow(c, p.migrationId);
        if (!m || m.dedicated_host_id !== host.id)
          throw new InventoryError('NOT_FOUND', `migrationId: no migration ${p.migrationId} of host ${host.id}`, 'migrationId');
        if (m.state === 'rolled_back') return rollbackResult(c, m);
        if (m.state === 'finalized')
          throw new InventoryError('WRONG_STATE', `migration ${m.id} is finalized; the host already lives on its clone`, 'migrationId');
        const base = { actor: p.actor, dedicatedHostId: host.id, migrationId: m.id };
        const live = await liveIncarnations(c, host.id, true);
        const clone = m.clone_incarnation_id ? live.find((i) => i.id === m.clone_incarnation_id) : undefined;
        if (clone) {
          const left = await runningVmsOn(c, clone.id);
          if (left.length > 0)
            throw new InventoryError(
              'WRONG_STATE',
              `${left.length} VM(s) still run on the clone (${left.slice(0, 5).join(', ')}${left.length > 5 ? ', …' : ''}); move them back or delete them first`,
              undefined,
              { vmIds: left },
            );
          await c.query(`UPDATE host_incarnations SET state = 'deleted', deleted_at = now() WHERE id = $1`, [clone.id]);
          await audit(c, { ...base, action: 'incarnation.deleted', entityType: 'host_incarnation', entityId: clone.id, physical: { serverId: clone.server_id, role: 'clone' } });
        }
        if (m.target_server_id) {
          const srv = (await serverRow(c, m.target_server_id, true))!;
          // Whether still reserved or already allocated to the clone: only if this migration still holds it.
          if (srv.reserved_by_migration === m.id) {
            await c.query(
              `UPDATE physical_servers SET state = 'available', reserved_by_migration = NULL, updated_at = now() WHERE id = $1`,
              [srv.id],
            );
            await audit(c, { ...base, action: 'server.released', entityType: 'physical_server', entityId: srv.id, physical: { from: srv.state } });
          }
        }
        await c.query(`UPDATE dedicated_hosts SET state = 'active', migration_id = NULL, updated_at = now() WHERE id = $1`, [host.id]);
        const { rows } = await c.query<MigrationRow>(
          `UPDATE host_migrations SET state = 'rolled_back', ended_at = now() WHERE id = $1 RETURNING *`,
          [m.id],
        );
        await audit(c, { ...base, action: 'host.migration_rolled_back', entityType: 'dedicated_host', entityId: host.id });
        return rollbackResult(c, rows[0]!);
      });
    },

    async getMigration(migrationId) {
      const id = parse(migrationIdSchema, migrationId);
      const { rows } = await pool.query<MigrationRow>('SELECT * FROM host_migrations WHERE id = $1', [id]);
      if (!rows[0]) throw notFound('migration', id, 'migrationId');
      return toMigration(rows[0]);
    },

    async claimDeprovisionJobs(input) {
      const p = parse(claimInput, input);
      return tx(async (c) => {
        // SKIP LOCKED: two schedulers claiming at once take disjoint rows; a stale claim (its scheduler died) is retaken.
        const { rows } = await c.query<{ id: string }>(
          `WITH picked AS (
             SELECT id FROM deprovision_outbox
              WHERE state = 'pending'
                AND (claimed_at IS NULL OR claimed_at < now() - make_interval(secs => $3::double precision / 1000))
              ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
           UPDATE deprovision_outbox o SET claimed_by = $1, claimed_at = now(), attempts = o.attempts + 1
             FROM picked WHERE o.id = picked.id RETURNING o.id`,
          [p.schedulerId, p.limit, p.staleAfterMs],
        );
        const jobs = await jobRows(c, rows.map((r) => r.id));
        for (const j of jobs)
          await audit(c, {
            actor: `scheduler:${p.schedulerId}`,
            action: 'deprovision.claimed',
            entityType: 'deprovision_job',
            entityId: j.id,
            dedicatedHostId: j.dedicated_host_id,
            migrationId: j.migration_id,
            physical: { serverId: j.server_id, attempt: j.attempts },
          });
        return jobs.map(toJob);
      });
    },

    async completeDeprovisionJob(input) {
      const p = parse(jobInput, input);
      return tx(async (c) => {
        const { rows } = await c.query<OutboxRow>('SELECT * FROM deprovision_outbox WHERE id = $1 FOR UPDATE', [p.jobId]);
        const job = rows[0];
        if (!job) throw notFound('de-provisioning job', String(p.jobId), 'jobId');
        if (job.state === 'done') {
          if (job.claimed_by === p.schedulerId) return toJob((await jobRows(c, [job.id]))[0]!);
          throw new InventoryError('CONFLICT', `jobId: job ${p.jobId} was completed by ${job.claimed_by}`, 'jobId');
        }
        if (job.claimed_by !== p.schedulerId)
          throw new InventoryError(
            'CONFLICT',
            `jobId: job ${p.jobId} is claimed by ${job.claimed_by ?? 'nobody'}, not ${p.schedulerId}`,
            'jobId',
          );
        const srv = (await serverRow(c, job.server_id, true))!;
        const [withHost] = await jobRows(c, [job.id]);
        const base = {
          actor: `scheduler:${p.schedulerId}`,
          dedicatedHostId: withHost!.dedicated_host_id,
          migrationId: job.migration_id,
        };
        // Only a server still waiting for this teardown changes state; an operator may have moved it meanwhile.
        if (srv.state === 'deprovisioning') {
          await c.query('UPDATE physical_servers SET state = $2, updated_at = now() WHERE id = $1', [srv.id, job.after_state]);
          await audit(c, { ...base, action: 'server.deprovisioned', entityType: 'physical_server', entityId: srv.id, physical: { state: job.after_state } });
        }
        await c.query(`UPDATE deprovision_outbox SET state = 'done', done_at = now() WHERE id = $1`, [job.id]);
        await audit(c, {
          ...base,
          action: 'deprovision.completed',
          entityType: 'deprovision_job',
          entityId: job.id,
          physical: { serverId: srv.id, serverStateBefore: srv.state },
        });
        return toJob((await jobRows(c, [job.id]))[0]!);
      });
    },

    async releaseDeprovisionJob(input) {
      const p = parse(releaseJobInput, input);
      return tx(async (c) => {
        const { rows } = await c.query<OutboxRow>('SELECT * FROM deprovision_outbox WHERE id = $1 FOR UPDATE', [p.jobId]);
        const job = rows[0];
        if (!job) throw notFound('de-provisioning job', String(p.jobId), 'jobId');
        if (job.state === 'done' || job.claimed_by !== p.schedulerId)
          throw new InventoryError('CONFLICT', `jobId: job ${p.jobId} is not claimed by ${p.schedulerId}`, 'jobId');
        const [withHost] = await jobRows(c, [job.id]);
        const base = { actor: `scheduler:${p.schedulerId}`, dedicatedHostId: withHost!.dedicated_host_id, migrationId: job.migration_id };
        if (p.giveUp) {
          await c.query('SELECT 1 FROM physical_servers WHERE id = $1 FOR NO KEY UPDATE', [job.server_id]);
          await c.query(
            `UPDATE physical_servers SET state = 'failed', updated_at = now() WHERE id = $1 AND state = 'deprovisioning'`,
            [job.server_id],
          );
          await c.query(`UPDATE deprovision_outbox SET state = 'done', done_at = now(), last_error = $2 WHERE id = $1`, [job.id, p.error]);
          await audit(c, { ...base, action: 'server.failed', entityType: 'physical_server', entityId: job.server_id, physical: { error: p.error } });
          await audit(c, { ...base, action: 'deprovision.given_up', entityType: 'deprovision_job', entityId: job.id, physical: { error: p.error } });
        } else {
          await c.query(
            'UPDATE deprovision_outbox SET claimed_by = NULL, claimed_at = NULL, last_error = $2 WHERE id = $1',
            [job.id, p.error],
          );
          await audit(c, { ...base, action: 'deprovision.attempt_failed', entityType: 'deprovision_job', entityId: job.id, physical: { error: p.error } });
        }
        return toJob((await jobRows(c, [job.id]))[0]!);
      });
    },

    async listDeprovisionJobs(input = {}) {
      const state = input.state ? parse(z.enum(['pending', 'done']), input.state) : null;
      return read(async (c) => {
        const { rows } = await c.query<{ id: string }>(
          'SELECT id FROM deprovision_outbox WHERE ($1::deprovision_state IS NULL OR state = $1) ORDER BY id',
          [state],
        );
        return (await jobRows(c, rows.map((r) => r.id))).map(toJob);
      });
    },

    async setServerState(input) {
      const p = parse(serverStateInput, input);
      return tx(async (c) => {
        const srv = await serverRow(c, p.serverId, true);
        if (!srv) throw notFound('physical server', p.serverId, 'serverId');
        if (srv.state === p.state) return toServer(srv);
        // Servers in use change state only through hosts, migrations and the scheduler.
        if (!['available', 'maintenance', 'failed'].includes(srv.state))
          throw new InventoryError('WRONG_STATE', `serverId: server ${srv.id} is ${srv.state}; only idle servers change state by hand`, 'serverId');
        const { rows } = await c.query<ServerRow>(
          'UPDATE physical_servers SET state = $2, updated_at = now() WHERE id = $1 RETURNING *',
          [srv.id, p.state],
        );
        await audit(c, { actor: p.actor, action: 'server.state_set', entityType: 'physical_server', entityId: srv.id, physical: { from: srv.state, to: p.state } });
        return toServer(rows[0]!);
      });
    },

    async getHost(id, opts = {}) {
      const hid = parse(idSchema, id);
      const tenantId = opts.tenantId === undefined ? undefined : parse(idSchema, opts.tenantId);
      return read(async (c) => {
        const v = await hostView(c, hid);
        if (tenantId !== undefined && v.tenantId !== tenantId) throw notFound('dedicated host', hid, 'dedicatedHostId');
        return v;
      });
    },

    async listHosts(opts = {}) {
      const tenantId = opts.tenantId === undefined ? null : parse(idSchema, opts.tenantId);
      const { rows } = await pool.query<HostViewRow>(
        `${HOST_VIEW_SQL} WHERE ($1::text IS NULL OR h.tenant_id = $1) ORDER BY h.created_at, h.id`,
        [tenantId],
      );
      return rows.map(toHostView);
    },

    async listVms(input) {
      const p = parse(
        z.object({ dedicatedHostId: idSchema, tenantId: idSchema.optional(), includeDeleted: z.boolean().default(false) }),
        input,
      );
      return read(async (c) => {
        await hostRow(c, p.dedicatedHostId, p.tenantId);
        const { rows } = await c.query<VmRow>(
          `SELECT * FROM vms WHERE dedicated_host_id = $1 AND ($2 OR state <> 'deleted') ORDER BY created_at, id`,
          [p.dedicatedHostId, p.includeDeleted],
        );
        return rows.map(toVm);
      });
    },

    async getVm(id, opts = {}) {
      const vid = parse(idSchema, id);
      const { rows } = await pool.query<VmRow>('SELECT * FROM vms WHERE id = $1', [vid]);
      const vm = rows[0];
      if (!vm || (opts.tenantId !== undefined && vm.tenant_id !== opts.tenantId)) throw notFound('VM', vid, 'vmId');
      return toVm(vm);
    },

    async listServers(opts = {}) {
      const p = parse(
        z.object({ zone: idSchema.optional(), resourceClass: idSchema.optional(), state: z.enum(SERVER_STATES).optional() }),
        opts,
      );
      const { rows } = await pool.query<ServerRow>(
        `SELECT * FROM physical_servers
          WHERE ($1::text IS NULL OR zone = $1) AND ($2::text IS NULL OR resource_class = $2)
            AND ($3::server_state IS NULL OR state = $3)
          ORDER BY id`,
        [p.zone ?? null, p.resourceClass ?? null, p.state ?? null],
      );
      return rows.map(toServer);
    },

    async getServer(id) {
      const sid = parse(idSchema, id);
      const { rows } = await pool.query<ServerRow>('SELECT * FROM physical_servers WHERE id = $1', [sid]);
      if (!rows[0]) throw notFound('physical server', sid, 'serverId');
      return toServer(rows[0]);
    },

    async getIncarnation(id) {
      const iid = parse(idSchema, id);
      const { rows } = await pool.query<IncarnationRow>('SELECT * FROM host_incarnations WHERE id = $1', [iid]);
      if (!rows[0]) throw notFound('host incarnation', iid, 'incarnationId');
      return toIncarnation(rows[0]);
    },

    async listIncarnations(input) {
      const p = parse(z.object({ dedicatedHostId: idSchema, includeDeleted: z.boolean().default(false) }), input);
      const { rows } = await pool.query<IncarnationRow>(
        `SELECT * FROM host_incarnations WHERE dedicated_host_id = $1 AND ($2 OR state = 'live') ORDER BY created_at, id`,
        [p.dedicatedHostId, p.includeDeleted],
      );
      return rows.map(toIncarnation);
    },

    async listEvents(input) {
      const p = parse(eventsInput, input);
      const { rows } = await pool.query<EventRow>(
        `SELECT * FROM audit_events
          WHERE ($1::text IS NULL OR dedicated_host_id = $1) AND ($2::text IS NULL OR migration_id = $2) AND id > $3
          ORDER BY id LIMIT $4`,
        [p.dedicatedHostId ?? null, p.migrationId ?? null, p.afterId ?? 0, p.limit],
      );
      return rows.map(toEvent);
    },
  };
}

/**
 * An audit event as the host's tenant may see it, or null when the event is about physical things only. Tenants
 * see their host and VMs as one logical host (claim 3): no servers, incarnations or teardown jobs.
 */
export function tenantEventView(e: AuditEvent): Omit<AuditEvent, 'physical'> | null {
  if (e.entityType === 'physical_server' || e.entityType === 'host_incarnation' || e.entityType === 'deprovision_job') return null;
  const { physical: _physical, ...rest } = e;
  return rest;
}

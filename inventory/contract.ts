import type { Fleet } from '../common/fleet';
import type { ProvisionedVm } from './migration-placements';
import type {
  Actor,
  AuditEvent,
  CapacityView,
  DeleteHostResult,
  DeprovisionAfterState,
  DeprovisionJob,
  FinalizeResult,
  HostIncarnation,
  HostMigrationRecord,
  HostView,
  MigrationSnapshot,
  PhysicalServer,
  RollbackResult,
  SeedResult,
  ServerState,
  Tenant,
  TenantQuotas,
  Vm,
  VmSpec,
  Volume,
} from './types';
import type { CreateVolumeInput } from './volumes';

export type { CreateVolumeInput };

export type { ProvisionedVm };

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
  /** Operator: a new token (returned only here); the old one stops working in the same transaction. */
  rotateTenantToken(input: { tenantId: string } & Actor): Promise<Tenant & { token: string }>;
  /** Operator: no token of the tenant works from now on, until a rotation. Idempotent. */
  revokeTenantToken(input: { tenantId: string } & Actor): Promise<Tenant & { revokedAt: string }>;

  /** The tenant's quotas, defaults filled in (quotas.ts). */
  getTenantQuotas(tenantId: string): Promise<TenantQuotas>;
  /** Operator: sets the named quotas (null: back to the default), audited; the others are kept. */
  setTenantQuotas(
    input: { tenantId: string; hostsPerZoneClass?: number | null; vmsPerHost?: number | null; requestsPerSecond?: number | null } & Actor,
  ): Promise<TenantQuotas>;
  /** Request rates set per tenant (tenants without one have the default): the API's rate limiter caches these. */
  tenantRequestRates(): Promise<Map<string, number>>;

  /** A logical host on a free server of the zone and class, with the class's amounts. Idempotent if `dedicatedHostId` is given. */
  createDedicatedHost(input: CreateHostInput): Promise<HostView>;
  /**
   * Deletes a host with no VMs (running or lost) that is not migrating: the host and its current incarnation are
   * deleted, the server goes to the scheduler through the de-provisioning outbox as after a finalize (claim 5).
   * Refuses NOT_FOUND (unknown, another tenant's, already deleted: a repeat changes nothing), HOST_MIGRATING, HOST_HAS_VMS.
   */
  deleteDedicatedHost(input: DeleteHostInput): Promise<DeleteHostResult>;
  /**
   * Places a VM on an incarnation (default: the host's current one) after a capacity check, attaching the network
   * volumes its disks name (NOT_FOUND / CONFLICT naming `disks.N.volumeId`). Idempotent by vmId.
   */
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

  /** A network volume in a zone's storage service (NOT_FOUND naming `zone` for an unknown zone). Idempotent by volumeId. */
  createVolume(input: CreateVolumeInput): Promise<Volume>;
  /** A volume that is not deleted; another tenant's answers NOT_FOUND like a missing one. */
  getVolume(id: string, opts?: { tenantId?: string }): Promise<Volume>;
  listVolumes(opts?: { tenantId?: string }): Promise<Volume[]>;
  /** Deletes a volume no VM has attached (CONFLICT otherwise); NOT_FOUND once deleted. */
  deleteVolume(input: { volumeId: string; tenantId?: string } & Actor): Promise<Volume>;
}

export interface CreateHostInput extends Actor {
  tenantId: string;
  name: string;
  zone: string;
  resourceClass: string;
  /** Optional caller-chosen id: a retry with the same id returns the same host. */
  dedicatedHostId?: string;
}

export interface DeleteHostInput extends Actor {
  dedicatedHostId: string;
  /** When given, must own the host (else NOT_FOUND). */
  tenantId?: string;
  /** State of the server once the scheduler has torn the host down; default `available`. */
  afterState?: DeprovisionAfterState;
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

export interface FinalizeInput extends Actor {
  migrationId: string;
  dedicatedHostId: string;
  afterState?: DeprovisionAfterState;
}

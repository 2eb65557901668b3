import type { AfterDeprovision } from '../common/migration';
import type { Resources } from '../common/resources';
import type { Disk, VmSpec, Workload } from '../common/vm-spec';

/**
 * What the inventory returns. Plain JSON-safe data (timestamps are ISO strings) because these values cross
 * Temporal activity boundaries and HTTP responses unchanged.
 */

export const SERVER_STATES = ['available', 'reserved', 'allocated', 'deprovisioning', 'maintenance', 'failed'] as const;
export type ServerState = (typeof SERVER_STATES)[number];
/** Servers no host or migration uses: only these change state by hand, or change hardware on a re-seed. */
export const IDLE_SERVER_STATES = ['available', 'maintenance', 'failed'] as const satisfies readonly ServerState[];
/** `deleted`: the tenant deleted it; it answers NOT_FOUND from then on, its row stays for the audit trail. */
export type HostState = 'active' | 'migrating' | 'deleted';
export type IncarnationRole = 'primary' | 'clone';
export type IncarnationState = 'live' | 'deleted';
/** `lost`: no agent runs it any more (its server rebooted mid-migration); recorded by the migration that found it. */
export type VmState = 'running' | 'deleted' | 'lost';
export type MigrationRecordState = 'running' | 'finalized' | 'rolled_back';
export type DeprovisionAfterState = AfterDeprovision;

/** Who did it, written to the audit log: 'operator', 'tenant:<id>', 'migration:<id>', 'scheduler:<id>'. */
export interface Actor {
  actor: string;
}

/** The VM spec and its workload are common/vm-spec.ts's (the API and the agents validate with the same schema). */
export type { VmSpec, Workload };

export interface Tenant {
  id: string;
  name: string;
  createdAt: string;
}

/** A tenant's quotas, defaults filled in (inventory/quotas.ts); `updatedAt` null when none was ever set. */
export interface TenantQuotas {
  tenantId: string;
  /** Dedicated hosts (not deleted) per zone and resource class. */
  hostsPerZoneClass: number;
  /** VMs (not deleted) per dedicated host. */
  vmsPerHost: number;
  /** API requests per second of the tenant's token. */
  requestsPerSecond: number;
  updatedAt: string | null;
}

export interface PhysicalServer {
  id: string;
  zone: string;
  resourceClass: string;
  capacity: Resources;
  nicBandwidthBps: number;
  agentUrl: string;
  backend: 'sim' | 'qemu';
  state: ServerState;
  /** The migration holding it as its target (reserved, or allocated to its clone until finalize). */
  reservedByMigration: string | null;
  createdAt: string;
  updatedAt: string;
}

/** The logical host: what the customer sees. Its id, tenant and capacity never change (claim 3). */
export interface DedicatedHost {
  id: string;
  tenantId: string;
  name: string;
  zone: string;
  resourceClass: string;
  capacity: Resources;
  state: HostState;
  currentIncarnationId: string;
  migrationId: string | null;
  createdAt: string;
  updatedAt: string;
  /** Set once the host is deleted (only results of deleteDedicatedHost show a deleted host). */
  deletedAt?: string | null;
}

/** A host as the API shows it. `serverId` is physical: the API must drop it for tenants. */
export interface HostView extends DedicatedHost {
  /** Sum of the host's running VMs, wherever they physically are. */
  allocated: Resources;
  /** What can still be added to the host (= CapacityView.aggregateAvailable). */
  available: Resources;
  vmCount: number;
  serverId: string;
}

/** One physical incarnation of a logical host on one server, with exactly the host's amounts (claim 4). */
export interface HostIncarnation {
  id: string;
  dedicatedHostId: string;
  serverId: string;
  role: IncarnationRole;
  state: IncarnationState;
  capacity: Resources;
  allocated: Resources;
  available: Resources;
  migrationId: string | null;
  createdAt: string;
  deletedAt: string | null;
}

export interface Vm {
  id: string;
  tenantId: string;
  /** The logical host; never changes, also while and after it moves (claim 3). */
  dedicatedHostId: string;
  /** Where it physically runs now. */
  incarnationId: string;
  name: string;
  spec: Resources;
  /** The spec's workload as recorded; `{}` when the VM was created without one. */
  workload: Workload | Record<string, never>;
  /** The spec's disks as given; absent when the VM was created without (one local disk `root`: see vmDisks). */
  disks?: Disk[];
  state: VmState;
  createdByMigration: string | null;
  createdAt: string;
  updatedAt: string;
  deletedAt: string | null;
  /** Set when the VM was found lost, with why. */
  lostAt?: string | null;
  lostReason?: string | null;
}

export type VolumeState = 'available' | 'deleted';

/** A tenant's network volume in a zone's storage service: a VM of the zone attaches it as a `network` disk. */
export interface Volume {
  id: string;
  tenantId: string;
  zone: string;
  name: string;
  sizeGiB: number;
  state: VolumeState;
  /** The running VM that names it as a disk, or null. */
  attachedVmId: string | null;
  createdAt: string;
  deletedAt: string | null;
}

/** The inventory's ledger of one migration's placements (the migration object is the Temporal workflow). */
export interface HostMigrationRecord {
  id: string;
  dedicatedHostId: string;
  state: MigrationRecordState;
  sourceIncarnationId: string;
  sourceServerId: string;
  targetServerId: string | null;
  cloneIncarnationId: string | null;
  afterState: DeprovisionAfterState | null;
  startedAt: string;
  endedAt: string | null;
}

export interface DeprovisionJob {
  id: number;
  incarnationId: string;
  serverId: string;
  /** The server's agent, which tears the incarnation down. */
  agentUrl: string;
  migrationId: string | null;
  afterState: DeprovisionAfterState;
  state: 'pending' | 'done';
  claimedBy: string | null;
  claimedAt: string | null;
  attempts: number;
  lastError: string | null;
  createdAt: string;
  doneAt: string | null;
}

export type AuditEntityType = 'tenant' | 'dedicated_host' | 'host_incarnation' | 'vm' | 'physical_server' | 'host_migration' | 'deprovision_job' | 'volume';

export interface AuditEvent {
  id: number;
  at: string;
  actor: string;
  action: string;
  entityType: AuditEntityType;
  entityId: string;
  dedicatedHostId: string | null;
  migrationId: string | null;
  /** Safe for the host's tenant. */
  details: Record<string, unknown>;
  /** Physical placement (servers, incarnations): operators only. */
  physical: Record<string, unknown>;
}

export interface IncarnationCapacity {
  incarnationId: string;
  serverId: string;
  allocated: Resources;
  available: Resources;
}

/**
 * A host's capacity, per incarnation and in aggregate.
 *
 * aggregateAvailable is what can still be added to the logical host. Outside a migration it is the current
 * incarnation's available. During a migration every running VM of the host, wherever it is now, must end up on the
 * clone, so it is the clone's capacity minus (VMs already on the clone + VMs still on the primary that will move
 * there); before the clone exists it is the primary's available. Because an incarnation has exactly the host's
 * amounts (claim 4), this is always `capacity − Σ running VMs of the host`: the customer's view does not change
 * because a migration is running (claims 6, 7).
 */
export interface CapacityView {
  dedicatedHostId: string;
  capacity: Resources;
  primary: IncarnationCapacity;
  clone: IncarnationCapacity | null;
  aggregateAvailable: Resources;
}

export interface MigrationSnapshot {
  migration: HostMigrationRecord;
  host: DedicatedHost;
  source: { incarnation: HostIncarnation; server: PhysicalServer };
  /** The host's running VMs, each with where it is now. */
  vms: Vm[];
}

export interface FinalizeResult {
  migration: HostMigrationRecord;
  host: DedicatedHost;
  currentIncarnation: HostIncarnation;
  deletedIncarnation: HostIncarnation;
  deprovisionJob: DeprovisionJob;
}

export interface RollbackResult {
  migration: HostMigrationRecord;
  host: DedicatedHost;
  /** The clone it deleted, if one had been created. */
  deletedClone: HostIncarnation | null;
  /** The target server it released, if one had been reserved. */
  releasedServer: PhysicalServer | null;
}

export interface DeleteHostResult {
  /** The host as it is now: state `deleted`. */
  host: DedicatedHost;
  /** Its last incarnation, deleted with it. */
  deletedIncarnation: HostIncarnation;
  /** The outbox row that hands the server to the scheduler, as a finalized migration's does (claim 5). */
  deprovisionJob: DeprovisionJob;
}

export interface SeedResult {
  added: string[];
  updated: string[];
  unchanged: string[];
}

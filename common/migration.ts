import { z } from 'zod';
import { Refusal } from './errors';
import { idSchema } from './fleet';
import type { Resources } from './resources';
import { localDiskGiB, vmSpecSchema, type VmSpec } from './vm-spec';

/** Phases of one host migration, in order; the last three are terminal. */
export const PHASES = [
  'validating',
  'reserving-target',
  'provisioning-clone',
  'migrating-vms',
  'finalizing',
  'completed',
  'rolling-back',
  'rolled-back',
  'failed',
] as const;
export type MigrationPhase = (typeof PHASES)[number];
export const TERMINAL_PHASES: ReadonlySet<MigrationPhase> = new Set(['completed', 'rolled-back', 'failed']);

/**
 * The order in which VMs leave the host. `largest-first` (the default) is longest-processing-time-first: the big
 * transfers start while the link is fresh and the tail of the migration is made of small VMs that fill the link's
 * last gaps, which keeps the makespan near ΣM/B. `smallest-first` empties the most VMs early; `as-listed` keeps the
 * tenant's order.
 */
export const VM_ORDERS = ['largest-first', 'smallest-first', 'dirtiest-first', 'as-listed'] as const;

/**
 * What happens when one VM cannot move. There is no "skip it and finish the others": the old incarnation can only be
 * de-provisioned once it is empty (claim 1g), and a host split across two servers would break its identity. So:
 * `rollback` (default) brings everything back; `retry-with-auto-converge` gives a VM that did not converge a second try
 * with auto-converge on, after the others, and rolls back only if that fails too.
 */
export const ON_VM_FAILURE = ['rollback', 'retry-with-auto-converge'] as const;

/** What a de-provisioned server becomes: back in the pool, or set aside for an operator. */
export const afterDeprovisionSchema = z.enum(['available', 'maintenance']);
export type AfterDeprovision = z.infer<typeof afterDeprovisionSchema>;

export const migrationPolicySchema = z
  .object({
    maxParallel: z.number().int().min(1).max(64).default(2),
    maxDowntimeMs: z.number().int().min(1).max(60_000).default(300),
    /** Per-stream cap in bytes/s; omitted: the link decides. */
    bandwidthCapBps: z.number().positive().max(1e12).optional(),
    /**
     * The source server's NIC bandwidth B, bytes/s. With `streamCapBytesPerSec`, lets the workflow give a critical-path
     * VM a whole stream and cap the moves around it (`bandwidthCapFor` in workflows/vm-order.ts); omitted: no such caps.
     */
    linkBytesPerSec: z.number().positive().max(1e12).optional(),
    /** The most one migration stream can use on that NIC (the agent's per-stream cap S), bytes/s. */
    streamCapBytesPerSec: z.number().positive().max(1e12).optional(),
    /**
     * Decide from what the agents measure (workflows/scheduler.ts): before the moves, the source's link (one stream's
     * throughput: how many moves fill the NIC, the critical-path caps); before each move, the VM's dirty rate (its
     * auto-converge). The link figures above and the VMs' declared workloads are then only a fallback, for agents that
     * cannot measure. Default false: the policy's figures as given.
     */
    measureInputs: z.boolean().default(false),
    /** Migration channels per move (QEMU's multifd): one VM's move may use up to this many streams' worth of the NIC. Omitted: 1. */
    channels: z.number().int().min(1).max(64).optional(),
    /**
     * `when-not-converging`: a move that does not converge switches to post-copy (the VM runs on the target and pulls
     * its missing pages) instead of failing. The risk: during post-copy the VM's memory is split over two servers, and
     * a network break then loses the VM unless the move is paused and recovered (QEMU's migrate-pause/migrate-recover).
     * Default `off`.
     */
    postCopy: z.enum(['off', 'when-not-converging']).default('off'),
    autoConverge: z.boolean().default(false),
    /** Auto-converge only for the VMs whose dirty rate reaches this (MiB/s); `autoConverge: true` still means every VM. */
    autoConvergeAboveDirtyRateMiBps: z.number().min(0).max(1e6).optional(),
    onVmFailure: z.enum(ON_VM_FAILURE).default('rollback'),
    order: z.enum(VM_ORDERS).default('largest-first'),
    /** How long to wait for a matching free server before giving up (0: fail at once). */
    waitForCapacitySeconds: z
      .number()
      .int()
      .min(0)
      .max(7 * 24 * 3600)
      .default(0),
    /** State of the old server once de-provisioned. */
    afterDeprovision: afterDeprovisionSchema.default('available'),
    /** Continue-as-new once the history has this many events (the server's own suggestion applies too). */
    continueAsNewAfterEvents: z.number().int().min(200).max(50_000).default(8_000),
  })
  .strict();
export type MigrationPolicy = z.infer<typeof migrationPolicySchema>;
export type MigrationPolicyInput = z.input<typeof migrationPolicySchema>;

export const migrationRequestSchema = z
  .object({
    dedicatedHostId: idSchema,
    targetServerId: idSchema.optional(),
    policy: migrationPolicySchema.default(migrationPolicySchema.parse({})),
    requestedBy: z.string().min(1).max(200).default('operator'),
  })
  .strict();
export type MigrationRequest = z.infer<typeof migrationRequestSchema>;

/** The migration of a dedicated host is the workflow with this id: one at a time per host, reused by its next migration. The inventory's `host_migrations.id` names one run of it. */
export function migrationWorkflowId(dedicatedHostId: string): string {
  return `migration-${dedicatedHostId}`;
}

// The VM spec is defined in common/vm-spec.ts; re-exported here for the migration's messages that carry it.
export { vmSpecSchema, workloadSchema, type VmSpec } from './vm-spec';

export const provisionVmArgsSchema = z
  .object({
    /** Idempotency key of the request: the same id returns the first answer. */
    requestId: z.string().min(1).max(128),
    /** The id the new VM will have; the API chooses it so a retried request cannot create two. */
    vmId: idSchema,
    tenantId: z.string().min(1).max(64).optional(),
    name: z.string().min(1).max(128),
    spec: vmSpecSchema,
  })
  .strict();
export type ProvisionVmArgs = z.infer<typeof provisionVmArgsSchema>;

export const deleteVmArgsSchema = z
  .object({
    requestId: z.string().min(1).max(128),
    vmId: idSchema,
  })
  .strict();
export type DeleteVmArgs = z.infer<typeof deleteVmArgsSchema>;

/**
 * One VM's state in a migration (transitions: workflows/migration-state.ts). `lost`: found running on neither side after
 * its server failed (recorded in the inventory; the migration ends `failed`). `stranded`: a rollback could not move it
 * back to the source; it stays on the clone, which is kept (the migration ends `failed`).
 */
export const VM_MIGRATION_STATES = [
  'pending',
  'moving',
  'moved',
  'failed',
  'deleted',
  'provisioned-on-clone',
  'moving-back',
  'returned',
  'stranded',
  'lost',
] as const;
export type VmMigrationState = (typeof VM_MIGRATION_STATES)[number];

export interface MoveFigures {
  rounds: number;
  bytesSent: number;
  memoryBytes: number;
  downtimeMs: number;
  totalTimeMs: number;
  /** The move's time off the link (set-up and commit), ms, as its agent reported it; absent from older agents. */
  setupMs?: number;
  /** Bytes the local-disk mirror sent (data, re-sent blocks, mirrored writes); absent: no local disk. */
  diskBytesCopied?: number;
}

export interface VmMigrationStatus {
  vmId: string;
  name: string;
  spec: Resources;
  /** Sim workload: how fast the guest dirties memory (orders `dirtiest-first`). */
  dirtyRateMiBps?: number;
  /** MiB of local-disk data its move copies ahead of the memory (absent: none, only memory moves). */
  diskMiB?: number;
  state: VmMigrationState;
  /** Agent job of the move in flight or last finished (live progress: the agent or the activity's heartbeat). */
  jobId?: string;
  attempts: number;
  figures?: MoveFigures;
  error?: string;
  /**
   * The VM's number in this migration, unique for its whole life (its agent job ids carry it). Absent in runs from
   * before deleted VMs were dropped from the carried state: there it is the VM's index, as VMs were only appended.
   */
  ordinal?: number;
}

export interface ProvisionVmResult {
  vmId: string;
  name: string;
  dedicatedHostId: string;
  incarnationId: string;
  spec: VmSpec;
  state: 'provisioned-on-clone';
}

export interface DeleteVmResult {
  vmId: string;
  deleted: true;
  /** Where the VM was when the request took it: still waiting to move, moving, already on the clone. */
  wasState: VmMigrationState;
}

/** The migration object (claim 1b): what the `status` query returns and the API shows. */
export interface MigrationStatus {
  migrationId: string;
  dedicatedHostId: string;
  phase: MigrationPhase;
  policy: MigrationPolicy;
  requestedBy: string;
  source?: { serverId: string; incarnationId: string };
  target?: { serverId: string; incarnationId: string };
  vms: VmMigrationStatus[];
  counts: Record<VmMigrationState, number>;
  capacity?: Resources;
  startedAt: string;
  updatedAt: string;
  finishedAt?: string;
  waitingForCapacitySince?: string;
  lastError?: string;
  /** How many runs this migration took (continue-as-new keeps history bounded). */
  run: number;
  requestsHandled: number;
  /** The next VM's ordinal, once a run dropped deleted VMs from its state (before that: the number of VMs). */
  nextVmOrdinal?: number;
  /** Deleted VMs dropped from `vms` when a run continued as new (they still count in `counts.deleted`). */
  deletedDropped?: number;
}

export type MigrationResult = Pick<
  MigrationStatus,
  'migrationId' | 'dedicatedHostId' | 'phase' | 'source' | 'target' | 'counts' | 'finishedAt' | 'lastError'
> & {
  /** VMs no agent ran any more when the migration looked (their server failed); recorded `lost` in the inventory. */
  lostVms?: string[];
};

/**
 * Failure types: what activities and the workflow throw, and what the workflow, the clients and the API branch on.
 * One casing, the API's error codes'; the inventory's refusals are the very codes of common/errors.ts.
 */
export const FailureTypes = {
  /** No free server of the host's zone and class with enough capacity (or the named target does not match). */
  NoMatchingServer: Refusal.NO_MATCHING_SERVER,
  InsufficientCapacity: Refusal.INSUFFICIENT_CAPACITY,
  NotConverging: 'NOT_CONVERGING',
  /** An agent did not answer; retried. */
  AgentUnavailable: 'AGENT_UNAVAILABLE',
  /** An agent answered with a refusal (its own code is in the message and the details); not retried. */
  AgentRefused: 'AGENT_REFUSED',
  InvalidInput: Refusal.INVALID_INPUT,
  NotFound: Refusal.NOT_FOUND,
  WrongState: Refusal.WRONG_STATE,
  Conflict: Refusal.CONFLICT,
  /** Deleting a host: it still has VMs / it is migrating (the inventory's refusals; no activity deletes hosts today). */
  HostHasVms: Refusal.HOST_HAS_VMS,
  HostMigrating: Refusal.HOST_MIGRATING,
  /** A VM provisioned mid-migration would exceed the tenant's VMs-per-host quota. */
  QuotaExceeded: Refusal.QUOTA_EXCEEDED,
  MigrationEnded: 'MIGRATION_ENDED',
  /** The migration is continuing as new: the request was not taken; the same request sent again reaches the next run. */
  MigrationContinuing: 'MIGRATION_CONTINUING',
  MoveFailed: 'MOVE_FAILED',
  /**
   * A move stopped because the target server's agent did not answer the source in time (the accept or the switchover);
   * the VM stays on the source and the workflow tries the move again, a bounded number of times.
   */
  TargetUnavailable: 'TARGET_UNAVAILABLE',
  /** The migration ended with VMs that no server runs any more (see `MigrationResult.lostVms`). */
  VmsLost: 'VMS_LOST',
  /** A rollback left VMs on the clone (state `stranded`): the clone is kept for an operator. */
  RollbackIncomplete: 'ROLLBACK_INCOMPLETE',
  /** Rolled back because an operator cancelled the migration. */
  MigrationCancelled: 'MIGRATION_CANCELLED',
  /** Rolled back because something failed (the reason is the message). */
  MigrationRolledBack: 'MIGRATION_ROLLED_BACK',
} as const;
export type FailureType = (typeof FailureTypes)[keyof typeof FailureTypes];

/**
 * Spellings from before failure types took one casing. Recorded histories and migrations that ran across the change
 * carry them, and the workflow must branch on them as it did then (test/workflow/replay.test.ts).
 */
const FORMER_FAILURE_TYPES: Readonly<Record<string, FailureType>> = {
  NoCapacity: FailureTypes.NoMatchingServer,
  NotConverging: FailureTypes.NotConverging,
  AgentUnavailable: FailureTypes.AgentUnavailable,
  MoveFailed: FailureTypes.MoveFailed,
  VmsLost: FailureTypes.VmsLost,
  RollbackIncomplete: FailureTypes.RollbackIncomplete,
  MigrationCancelled: FailureTypes.MigrationCancelled,
  MigrationRolledBack: FailureTypes.MigrationRolledBack,
};

/** A failure's type in today's spelling (a former spelling is mapped; anything else is returned as it is). */
export function currentFailureType(type: string): string {
  return FORMER_FAILURE_TYPES[type] ?? type;
}

/** MiB a VM's move sends at least once: its memory plus the data on its local disks (the schedule orders and caps by it). */
export function moveMiB(vm: { spec: { memoryMiB: number }; diskMiB?: number | undefined }): number {
  return vm.spec.memoryMiB + (vm.diskMiB ?? 0);
}

/** The local-disk data a VM's move copies, MiB: the sim's `diskUsedGiB`, at most its local disks' size. */
export function localDiskDataMiB(spec: VmSpec): number {
  return Math.min(localDiskGiB(spec), spec.workload?.diskUsedGiB ?? 0) * 1024;
}

import { log, patched, setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import {
  localDiskDataMiB,
  TERMINAL_PHASES,
  VM_MIGRATION_STATES,
  type MigrationPhase,
  type MigrationPolicy,
  type MigrationRequest,
  type MigrationResult,
  type MigrationStatus,
  type MoveFigures,
  type VmMigrationState,
  type VmMigrationStatus,
  type VmSpec,
} from '../common/migration';
import type { Resources } from '../common/resources';
import { MigrationPhaseKey, SourceServerIdKey, TargetServerIdKey } from '../common/search-attributes';
import { renderMigrationDetails } from './details';

type Placement = { serverId: string; incarnationId: string };

/** What a run hands to the next one about its VMs when it continues as new. */
export interface CarriedMigration {
  status: MigrationStatus;
  deleteRequested: string[];
  forceAutoConverge: string[];
  failure?: string;
}

/** A VM as the rest of the workflow sees it: read-only, changed through the transitions of `MigrationState`. */
export type VmView = Readonly<VmMigrationStatus>;

/**
 * The migration object (claim 1b) and every change to it. The phase and each VM's state are written here and only
 * here, one method per transition, so what a VM can go through reads in one place:
 *
 *   pending → moving → moved | pending | failed   (out: arrived; cancelled or to retry with auto-converge; failed)
 *   (new) → provisioned-on-clone                  (a tenant's VM created mid-migration, on the clone)
 *   pending | moved | provisioned-on-clone → deleted  (a tenant's delete; a moving VM's move is stopped first)
 *   moved | provisioned-on-clone → moving-back → returned | stranded (rollback; stranded: it stays on the clone)
 *   returned | moving → pending                   (the rollback completed: home again)
 *   any but deleted → lost                        (the agents run it nowhere: its server restarted or failed)
 *
 * Every change bumps `version`, which is what the scheduling loop waits on, and refreshes the Web UI's details.
 */
export class MigrationState {
  private readonly st: MigrationStatus;
  private readonly deleting: Set<string>;
  private readonly autoConvergeNext: Set<string>;
  private failed: string | undefined;
  private clone: boolean;
  private tick = 0;

  /** A first run starts validating; a run continued from another one resumes with the state it was handed. */
  static start(migrationId: string, request: Pick<MigrationRequest, 'dedicatedHostId' | 'policy' | 'requestedBy'>, carried?: CarriedMigration): MigrationState {
    const status = carried?.status ?? newStatus({ migrationId, ...request });
    if (carried) status.run += 1;
    return new MigrationState(status, carried);
  }

  private constructor(status: MigrationStatus, carried?: CarriedMigration) {
    this.st = status;
    this.deleting = new Set(carried?.deleteRequested ?? []);
    this.autoConvergeNext = new Set(carried?.forceAutoConverge ?? []);
    this.failed = carried?.failure;
    this.clone = status.target !== undefined && status.phase !== 'provisioning-clone';
  }

  /** The migration object, read-only. */
  get status(): Readonly<Omit<MigrationStatus, 'vms'>> & { readonly vms: readonly VmView[] } {
    return this.st;
  }
  get migrationId(): string {
    return this.st.migrationId;
  }
  get phase(): MigrationPhase {
    return this.st.phase;
  }
  get policy(): MigrationPolicy {
    return this.st.policy;
  }
  get dedicatedHostId(): string {
    return this.st.dedicatedHostId;
  }
  get source(): Placement | undefined {
    return this.st.source;
  }
  get target(): Placement | undefined {
    return this.st.target;
  }
  /** VMs a tenant asked to delete: the scheduler will not start (or restart) a move for them. */
  get deleteRequested(): ReadonlySet<string> {
    return this.deleting;
  }
  /** VMs that did not converge once: their next try runs with auto-converge, after the others. */
  get forceAutoConverge(): ReadonlySet<string> {
    return this.autoConvergeNext;
  }
  /** Why the migration must roll back, once something went wrong (the first reason is kept). */
  get failure(): string | undefined {
    return this.failed;
  }
  /** The clone exists on its server: tenant requests may place VMs there. */
  get cloneReady(): boolean {
    return this.clone;
  }
  get vms(): readonly VmView[] {
    return this.st.vms;
  }
  /** Bumped on every change: `condition(() => state.version !== seen)` waits for the next one. */
  get version(): number {
    return this.tick;
  }

  vm(vmId: string): VmView | undefined {
    return this.st.vms.find((v) => v.vmId === vmId);
  }
  vmsIn(...states: VmMigrationState[]): VmView[] {
    return this.st.vms.filter((v) => states.includes(v.state));
  }
  /** Tenant requests are taken until the migration finalizes, rolls back or ends. */
  acceptsRequests(): boolean {
    return this.phase !== 'finalizing' && !TERMINAL_PHASES.has(this.phase) && this.phase !== 'rolling-back';
  }
  /** Short and unique per agent: the migration's random tail, the VM's ordinal (VMs are only ever appended), the try. */
  jobIdFor(vm: VmView, direction: 'out' | 'back'): string {
    return `mig-${this.migrationId.slice(-12)}-${vm.ordinal ?? this.st.vms.indexOf(vm)}-${direction}-${vm.attempts}`;
  }
  /** Where a lost VM is not. */
  nowhere(): string {
    return `neither on ${this.source?.serverId ?? '?'} nor on ${this.target?.serverId ?? '?'} (its server restarted or failed)`;
  }

  // ---- the migration ------------------------------------------------------------------------------------------
  changed(): void {
    this.tick++;
    this.st.updatedAt = now();
    setCurrentDetails(renderMigrationDetails(this.st));
  }
  setPhase(phase: MigrationPhase): void {
    this.st.phase = phase;
    upsertSearchAttributes([{ key: MigrationPhaseKey, value: phase }]);
    log.info('migration phase', { migrationId: this.migrationId, phase });
    this.changed();
  }
  /** `beginMigration` answered: the host is migrating and these are its VMs. */
  begun(snapshot: { source: Placement; capacity: Resources; vms: { vmId: string; name: string; spec: VmSpec }[] }): void {
    this.st.source = snapshot.source;
    this.st.capacity = snapshot.capacity;
    this.st.vms = snapshot.vms.map((v) => {
      // Zero for every VM of a migration begun before disks existed: its schedule is the memory-only one, replayed alike.
      const diskMiB = localDiskDataMiB(v.spec);
      return {
        vmId: v.vmId,
        name: v.name,
        spec: resourcesOf(v.spec),
        dirtyRateMiBps: v.spec.workload?.dirtyRateMiBps,
        ...(diskMiB > 0 ? { diskMiB } : {}),
        state: 'pending' as VmMigrationState,
        attempts: 0,
      };
    });
    upsertSearchAttributes([{ key: SourceServerIdKey, value: snapshot.source.serverId }]);
    this.setPhase('reserving-target');
  }
  waitingForCapacity(): void {
    this.st.waitingForCapacitySince ??= now();
    this.changed();
  }
  targetReserved(serverId: string): void {
    this.st.target = { serverId, incarnationId: `${this.dedicatedHostId}.${this.migrationId.slice(-12)}` };
    this.st.waitingForCapacitySince = undefined;
    upsertSearchAttributes([{ key: TargetServerIdKey, value: serverId }]);
    this.setPhase('provisioning-clone');
  }
  cloneProvisioned(): void {
    this.clone = true;
    this.setPhase('migrating-vms');
  }
  /** Something went wrong: the migration stops launching moves and rolls back (the first reason is the one kept). */
  fail(reason: string): void {
    this.failed ??= reason;
  }
  rollingBack(reason: string): void {
    this.st.lastError = reason;
    this.setPhase('rolling-back');
  }
  /** The end of the migration: completed, rolled back, or failed with the reason. */
  finish(phase: 'completed' | 'rolled-back' | 'failed', lastError?: string): void {
    if (lastError !== undefined) this.st.lastError = lastError;
    this.st.finishedAt = now();
    this.setPhase(phase);
  }
  countRequest(): void {
    this.st.requestsHandled++;
  }

  // ---- one VM -------------------------------------------------------------------------------------------------
  moving(view: VmView): void {
    const vm = this.own(view);
    vm.state = 'moving';
    vm.attempts += 1;
    vm.jobId = this.jobIdFor(vm, 'out');
    vm.error = undefined;
    this.changed();
  }
  moved(view: VmView, figures: MoveFigures | undefined): void {
    const vm = this.own(view);
    vm.state = 'moved';
    vm.figures = figures;
  }
  /** Back in the queue: its move was cancelled, or it gets another try with auto-converge (`retryWithAutoConverge`). */
  requeued(view: VmView, error?: string): void {
    const vm = this.own(view);
    vm.state = 'pending';
    if (error !== undefined) vm.error = error;
  }
  retryWithAutoConverge(view: VmView, error: string): void {
    const vm = this.own(view);
    this.autoConvergeNext.add(vm.vmId);
    this.requeued(vm, error);
    log.warn('VM did not converge; it will be retried with auto-converge', { vmId: vm.vmId });
  }
  moveFailed(view: VmView, error: string): void {
    const vm = this.own(view);
    vm.error = error;
    vm.state = 'failed';
    this.fail(`VM ${vm.vmId} could not be moved: ${vm.error}`);
  }
  /** Runs on no server any more (its server restarted or failed): reported, never declared moved or rolled back. */
  lost(view: VmView): void {
    const vm = this.own(view);
    vm.state = 'lost';
    vm.error = `running ${this.nowhere()}`;
    this.changed();
  }
  provisionedOnClone(vm: { vmId: string; name: string; spec: VmSpec }): void {
    // Ordinals are only ever handed out once; without dropped VMs the next one is the count, as it always was.
    const ordinal = this.st.nextVmOrdinal ?? this.st.vms.length;
    if (this.st.nextVmOrdinal !== undefined) this.st.nextVmOrdinal += 1;
    this.st.vms.push({
      vmId: vm.vmId,
      name: vm.name,
      spec: resourcesOf(vm.spec),
      state: 'provisioned-on-clone',
      attempts: 0,
      ...(this.st.nextVmOrdinal !== undefined ? { ordinal } : {}),
    });
    this.changed();
  }
  deleteAsked(vm: VmView): void {
    this.deleting.add(vm.vmId);
  }
  deleted(view: VmView): void {
    const vm = this.own(view);
    vm.state = 'deleted';
    this.changed();
  }
  movingBack(view: VmView): void {
    const vm = this.own(view);
    vm.state = 'moving-back';
    vm.jobId = this.jobIdFor(vm, 'back');
    this.changed();
  }
  returned(view: VmView): void {
    const vm = this.own(view);
    vm.state = 'returned';
    this.changed();
  }
  /** A rollback could not bring it home: it stays on the clone, which the migration then keeps. */
  stranded(view: VmView, reason: string): void {
    const vm = this.own(view);
    vm.state = 'stranded';
    vm.error = `could not move back: ${reason}`;
    this.changed();
  }
  /** After a complete rollback every VM that runs on the source again waits as before the migration. */
  backHome(): void {
    for (const vm of this.st.vms) if (vm.state === 'returned' || vm.state === 'moving') vm.state = 'pending';
  }

  /** The VM itself, to be changed: only transitions call this. */
  private own(view: VmView): VmMigrationStatus {
    const vm = this.st.vms.find((v) => v === view);
    if (!vm) throw new TypeError(`VM ${view.vmId} is not part of migration ${this.migrationId}`);
    return vm;
  }

  // ---- views --------------------------------------------------------------------------------------------------
  /** What the `status` query answers. */
  view(): MigrationStatus {
    return { ...this.st, counts: this.counts() };
  }
  /** VMs per state, the deleted VMs earlier runs dropped included. */
  private counts(): Record<VmMigrationState, number> {
    const counts = countStates(this.st.vms);
    counts.deleted += this.st.deletedDropped ?? 0;
    return counts;
  }
  result(): MigrationResult {
    const lost = this.vmsIn('lost');
    return {
      migrationId: this.migrationId,
      dedicatedHostId: this.dedicatedHostId,
      phase: this.phase,
      source: this.source,
      target: this.target,
      counts: this.counts(),
      finishedAt: this.st.finishedAt,
      lastError: this.st.lastError,
      ...(lost.length ? { lostVms: lost.map((v) => v.vmId) } : {}),
    };
  }
  /**
   * What the next run needs. Deleted VMs are dropped (only their count is kept): a tenant creating and deleting VMs
   * all migration long must not grow the carried state toward Temporal's payload limit. Every VM keeps its ordinal,
   * so job ids stay unique after the drop.
   */
  carry(): CarriedMigration {
    if (!patched('bounded-carried-state'))
      return { status: this.st, deleteRequested: [...this.deleting], forceAutoConverge: [...this.autoConvergeNext], failure: this.failed };
    const vms = this.st.vms.map((v, i) => ({ ...v, ordinal: v.ordinal ?? i }));
    const kept = vms.filter((v) => v.state !== 'deleted');
    const status: MigrationStatus = {
      ...this.st,
      vms: kept,
      nextVmOrdinal: this.st.nextVmOrdinal ?? this.st.vms.length,
      deletedDropped: (this.st.deletedDropped ?? 0) + (vms.length - kept.length),
    };
    const alive = new Set(kept.map((v) => v.vmId));
    return {
      status,
      deleteRequested: [...this.deleting].filter((id) => alive.has(id)),
      forceAutoConverge: [...this.autoConvergeNext].filter((id) => alive.has(id)),
      failure: this.failed,
    };
  }
}

/** A first run's migration object: validating, nothing known yet but the request. */
function newStatus(input: { migrationId: string; dedicatedHostId: string; policy: MigrationPolicy; requestedBy: string }): MigrationStatus {
  return {
    migrationId: input.migrationId,
    dedicatedHostId: input.dedicatedHostId,
    phase: 'validating',
    policy: input.policy,
    requestedBy: input.requestedBy,
    vms: [],
    counts: emptyCounts(),
    startedAt: now(),
    updatedAt: now(),
    run: 1,
    requestsHandled: 0,
  };
}

/** Workflow time (the SDK makes `Date` deterministic inside workflows). */
export function now(): string {
  return new Date().toISOString();
}

/** Workflow time, ms since the epoch. */
export function nowMs(): number {
  return new Date().getTime();
}

function emptyCounts(): Record<VmMigrationState, number> {
  return Object.fromEntries(VM_MIGRATION_STATES.map((s) => [s, 0])) as Record<VmMigrationState, number>;
}

export function countStates(vms: readonly VmMigrationStatus[]): Record<VmMigrationState, number> {
  const counts = emptyCounts();
  for (const v of vms) counts[v.state] += 1;
  return counts;
}

function resourcesOf(spec: Resources): Resources {
  return { vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, diskGiB: spec.diskGiB };
}

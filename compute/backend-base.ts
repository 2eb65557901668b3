import type { Logger } from 'pino';
import type { Resources } from '../common/resources';
import { vmDisks, type DiskKind } from '../common/vm-spec';
import type {
  AcceptIncomingBody,
  BackendKind,
  Faults,
  FaultsState,
  IncarnationView,
  IncomingView,
  MigrationJob,
  StartMigrationInput,
  VmSpec,
  VmView,
} from './agent-api';
import type { BackendBaseOptions, BackendIncoming, BackendJob, BackendVm } from './backend-contract';
import { AgentFailure, conflict, notFound, relayTargetRefusal, vmMoved } from './errors';
import { AgentError } from './agent-http';
import { IncarnationLedger } from './incarnation-ledger';
import type { PeerClient } from './peer-client';

const resourcesOf = (spec: VmSpec): Resources => ({ vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, diskGiB: spec.diskGiB });
const sameSpec = (a: VmSpec, b: VmSpec) => JSON.stringify(a) === JSON.stringify(b);
const sameUrl = (a: string, b: string) => a.replace(/\/+$/, '') === b.replace(/\/+$/, '');

/**
 * The bookkeeping every `ComputeBackend` shares, whatever runs its VMs: incarnations (via the ledger), the VM map and
 * the tombstones of VMs that moved away, outbound jobs started idempotently by job id, incoming reservations, fault
 * state and the closed flag. A backend supplies how a VM, a job and a destination are made, started and stopped
 * (the abstract members) and narrows a few checks (the overridable hooks, no-ops here); the guest operations, the
 * commit of an incoming VM and `close()` are its own.
 */
export abstract class BackendBase<V extends BackendVm, J extends BackendJob, R extends BackendIncoming> {
  abstract readonly kind: BackendKind;
  readonly peer: PeerClient;
  readonly logger: Logger;
  protected readonly vms = new Map<string, V>();
  /** VMs that migrated away: vmId → the agent URL they went to. */
  protected readonly tombstones = new Map<string, string>();
  protected readonly jobs = new Map<string, J>();
  protected readonly incoming = new Map<string, R>();
  protected faultState: FaultsState = { failMigrationAtRound: null, unreachable: false, linkSlowdown: 1 };
  protected closed = false;
  private pollsHeld = 0;
  private readonly ledger: IncarnationLedger;
  /** Starts waiting for the target's answer, so a concurrent retry of the same job id joins instead of racing. */
  private readonly starting = new Map<string, { input: StartMigrationInput; promise: Promise<MigrationJob> }>();

  constructor(protected readonly opts: BackendBaseOptions) {
    this.logger = opts.logger;
    this.peer = opts.peer;
    this.ledger = new IncarnationLedger(opts.serverId, opts.capacity);
  }

  // ---- what each backend supplies ----------------------------------------------------------------------------

  /** Makes and starts the VM for `createVm` (its room is already allocated); `place` registers it. */
  protected abstract newVm(input: { vmId: string; incarnationId: string; spec: VmSpec }): V;
  /** Stops and forgets a VM here (`forgetVm` does the bookkeeping). */
  protected abstract removeVm(vm: V): void | Promise<void>;
  /** Makes an outbound job; `failAt` is the injected failure it carries, null for one that fails before starting. */
  protected abstract newJob(vm: V, input: StartMigrationInput, failAt: number | null): J;
  /** Starts a registered job, once the target has accepted the VM. */
  protected abstract beginJob(job: J, failAt: number | null, accepted: IncomingView): void;
  /** Makes the record of an accepted incoming migration (its room is already allocated). */
  protected abstract newIncoming(jobId: string, input: AcceptIncomingBody): R;
  /** Runs once the reservation is registered (start listening, log it). */
  protected abstract incomingAccepted(r: R, input: AcceptIncomingBody): void;
  /** Drops a reservation and whatever serves it (`forgetIncoming` does the bookkeeping). */
  protected abstract dropIncoming(r: R): void | Promise<void>;

  // ---- hooks: no-ops unless a backend needs them -------------------------------------------------------------

  /** Called first by the requests that start something here (create, migrate, accept). */
  protected admit(): void {}
  /** Refuses an incoming migration from a source this backend will not take. */
  protected checkSource(_input: AcceptIncomingBody): void {}
  /** Refuses a spec this backend cannot run, before any room is taken (400s name the `spec.` field). */
  protected checkSpec(_spec: VmSpec): void {}
  /** Destroys the local disks of a VM deleted here (a backend that keeps disks overrides it). */
  protected wipeVmDisks(_vm: V): void | Promise<void> {}
  /** Destroys every local disk of a torn-down incarnation still on this server (moved-away VMs' copies included). */
  protected wipeIncarnationDisks(_incarnationId: string): void | Promise<void> {}
  /** The tenants' local disks here, in bytes (none unless a backend keeps disks). */
  localStorage(): { diskBytes: number; wipedBytes: number } {
    return { diskBytes: 0, wipedBytes: 0 };
  }
  /** The disk kinds this backend serves: every backend serves local disks. */
  diskKinds(): readonly DiskKind[] {
    return ['local'];
  }
  /** Refuses a VM that is here but cannot serve (e.g. it has failed). */
  protected checkUsable(_vm: V): void {}
  /** Registers a VM in the map; a backend may watch it from here on. */
  protected addVm(vm: V): void {
    this.vms.set(vm.vmId, vm);
  }
  /** Extra fields for the "VM created" log line. */
  protected describeVm(_vm: V): object {
    return {};
  }
  /** The target accepted the VM but this agent has begun stopping: undo what the target did, if needed. */
  protected async abandonAccepted(_input: StartMigrationInput): Promise<void> {}
  /** Whether a reservation can no longer be released because its VM runs here. */
  protected incomingCommitted(r: R): boolean {
    return r.state === 'committed';
  }
  /** Applies a new link slowdown (fault injection) to what is running. */
  protected applyLinkSlowdown(_slowdown: number): void {}
  /** Fields a backend adds to an incoming view (where its destination listens). */
  protected incomingExtras(_r: R): Partial<IncomingView> {
    return {};
  }
  protected noSuchJob(jobId: string): AgentFailure {
    return notFound('jobId', `no migration ${jobId} on server ${this.opts.serverId}`);
  }

  // ---- incarnations ------------------------------------------------------------------------------------------

  incarnationIds(): string[] {
    return this.ledger.ids();
  }

  prepareIncarnation(incarnationId: string, capacity: Resources): IncarnationView {
    return this.ledger.prepare(incarnationId, capacity);
  }

  getIncarnation(incarnationId: string): IncarnationView | null {
    return this.ledger.view(incarnationId);
  }

  async teardownIncarnation(incarnationId: string): Promise<void> {
    // Removing it first stops new VMs and reservations landing in it while its VMs are being stopped.
    const holders = this.ledger.remove(incarnationId);
    for (const h of holders) {
      if (h.kind === 'incoming') {
        const r = this.incoming.get(h.jobId);
        if (r) await this.dropIncoming(r);
        continue;
      }
      const vm = this.vms.get(h.vmId);
      if (!vm) continue;
      await this.stopMigrationOf(vm);
      if (this.vms.get(h.vmId) === vm) await this.removeVm(vm);
    }
    // Last: with no VM running from them, the tenant's data is destroyed before the server can go back to the pool.
    await this.wipeIncarnationDisks(incarnationId);
    this.logger.info({ incarnationId, released: holders.length }, 'incarnation torn down');
  }

  // ---- VMs ---------------------------------------------------------------------------------------------------

  createVm(input: { vmId: string; incarnationId: string; spec: VmSpec }): VmView {
    this.admit();
    const existing = this.vms.get(input.vmId);
    if (existing) {
      if (existing.incarnationId === input.incarnationId && sameSpec(existing.spec, input.spec)) return this.viewOf(existing);
      throw conflict('VM_EXISTS', 'vmId', `VM ${input.vmId} already exists here with another spec or incarnation`);
    }
    for (const r of this.incoming.values())
      if (r.vmId === input.vmId && r.state === 'reserved') throw conflict('VM_EXISTS', 'vmId', `VM ${input.vmId} is migrating to this server`);
    this.checkDisks(input.spec);
    this.checkSpec(input.spec);
    this.ledger.allocate(input.incarnationId, { kind: 'vm', vmId: input.vmId }, resourcesOf(input.spec), 'spec', 'incarnationId');
    const vm = this.newVm(input);
    this.place(vm);
    this.logger.info({ vmId: vm.vmId, incarnationId: vm.incarnationId, ...this.describeVm(vm) }, 'VM created');
    return this.viewOf(vm);
  }

  getVm(vmId: string): { vm: VmView } | { movedTo: string } | null {
    const vm = this.vms.get(vmId);
    if (vm) {
      this.checkUsable(vm);
      return { vm: this.viewOf(vm) };
    }
    const movedTo = this.tombstones.get(vmId);
    return movedTo ? { movedTo } : null;
  }

  async deleteVm(vmId: string): Promise<void> {
    for (;;) {
      const vm = this.vms.get(vmId);
      if (!vm) {
        const movedTo = this.tombstones.get(vmId);
        if (movedTo) throw vmMoved(vmId, movedTo);
        return; // already gone
      }
      if (vm.migrationJobId) {
        await this.stopMigrationOf(vm);
        continue; // the VM is still here (cancelled) or has moved (the switchover won the race)
      }
      await this.removeVm(vm);
      await this.wipeVmDisks(vm);
      this.logger.info({ vmId }, 'VM deleted');
      return;
    }
  }

  // ---- outbound migrations -----------------------------------------------------------------------------------

  async startMigration(input: StartMigrationInput): Promise<MigrationJob> {
    this.admit();
    const job = this.jobs.get(input.jobId);
    if (job) {
      checkSameJob(job.input, input);
      return job.snapshot();
    }
    const pending = this.starting.get(input.jobId);
    if (pending) {
      checkSameJob(pending.input, input);
      return pending.promise;
    }
    const vm = this.vmHere(input.vmId);
    this.checkUsable(vm);
    if (vm.migrationJobId) throw conflict('MIGRATION_IN_PROGRESS', 'vmId', `VM ${input.vmId} is already migrating (job ${vm.migrationJobId})`);
    if (sameUrl(input.target.agentUrl, this.opts.selfUrl()))
      throw conflict('SAME_SERVER', 'target.agentUrl', `the target is this server (${this.opts.serverId})`);

    vm.migrationJobId = input.jobId;
    const promise = this.launch(vm, input).finally(() => this.starting.delete(input.jobId));
    this.starting.set(input.jobId, { input, promise });
    return promise;
  }

  getMigration(jobId: string): MigrationJob | null {
    return this.jobs.get(jobId)?.snapshot() ?? null;
  }

  /**
   * The job once it has left `running`, or as it is after `waitMs` (the long-poll behind `GET migration?waitMs=`).
   * A job still being started (the target's answer pending) is waited for as well; null if there is no such job.
   */
  async waitForMigration(jobId: string, waitMs: number): Promise<MigrationJob | null> {
    if (waitMs <= 0) return this.getMigration(jobId);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)));
    this.pollsHeld++;
    try {
      const pending = this.starting.get(jobId);
      if (pending) await Promise.race([pending.promise.catch(() => undefined), timeout]);
      const job = this.jobs.get(jobId);
      if (job && !this.closed && job.snapshot().state === 'running') await Promise.race([job.settled, timeout]);
      return this.getMigration(jobId);
    } finally {
      this.pollsHeld--;
      clearTimeout(timer);
    }
  }

  /** Long-polls being held right now (`waitForMigration` calls not yet answered). */
  pollsWaiting(): number {
    return this.pollsHeld;
  }

  async cancelMigration(jobId: string): Promise<MigrationJob> {
    const pending = this.starting.get(jobId);
    if (pending) await pending.promise.catch(() => undefined);
    const job = this.jobs.get(jobId);
    if (!job) throw this.noSuchJob(jobId);
    return job.cancel();
  }

  /**
   * Fault injection: the agent daemon restarted while the server and its hypervisor kept running. VMs and
   * incarnations stay; every migration job is forgotten — one still in flight is aborted first, as a restarted
   * daemon cancels the moves it finds orphaned, so its VM keeps running here — and incoming reservations not yet
   * committed are dropped. A committed incoming VM runs here and stays.
   */
  async restartDaemon(): Promise<void> {
    for (const pending of [...this.starting.values()]) await pending.promise.catch(() => undefined);
    for (const job of [...this.jobs.values()]) {
      if (job.snapshot().state !== 'running') continue;
      try {
        await job.cancel();
      } catch (err) {
        if (!(err instanceof AgentFailure && err.code === 'MIGRATION_COMPLETED')) throw err;
      }
    }
    this.jobs.clear();
    for (const r of [...this.incoming.values()]) if (!this.incomingCommitted(r)) await this.dropIncoming(r);
    this.logger.warn('agent daemon restarted: migration jobs forgotten, VMs kept');
  }

  // ---- inbound migrations ------------------------------------------------------------------------------------

  acceptIncoming(jobId: string, input: AcceptIncomingBody): IncomingView {
    this.admit();
    this.checkSource(input);
    const existing = this.incoming.get(jobId);
    if (existing) {
      if (existing.vmId !== input.vmId || existing.incarnationId !== input.incarnationId)
        throw conflict('JOB_CONFLICT', 'jobId', `incoming migration ${jobId} exists for another VM or incarnation`);
      return this.incomingView(existing);
    }
    if (this.vms.has(input.vmId)) throw conflict('VM_EXISTS', 'vmId', `VM ${input.vmId} already runs on this server`);
    this.checkDisks(input.spec);
    this.checkSpec(input.spec);
    // A reservation for the same VM left by an earlier attempt whose source never released it gives way.
    for (const r of [...this.incoming.values()]) if (r.vmId === input.vmId && r.state === 'reserved') void this.dropIncoming(r);
    this.ledger.allocate(input.incarnationId, { kind: 'incoming', jobId }, resourcesOf(input.spec), 'spec', 'incarnationId');
    const r = this.newIncoming(jobId, input);
    this.incoming.set(jobId, r);
    this.incomingAccepted(r, input);
    return this.incomingView(r);
  }

  releaseIncoming(jobId: string): void {
    const r = this.incoming.get(jobId);
    if (!r) return;
    if (this.incomingCommitted(r)) throw conflict('INCOMING_COMMITTED', 'jobId', `incoming migration ${jobId} was committed; the VM runs here`);
    void this.dropIncoming(r);
  }

  // ---- faults ------------------------------------------------------------------------------------------------

  setFaults(f: Faults): FaultsState {
    if (f.failMigrationAtRound !== undefined) this.faultState.failMigrationAtRound = f.failMigrationAtRound;
    if (f.unreachable !== undefined) this.faultState.unreachable = f.unreachable;
    if (f.linkSlowdown !== undefined) {
      this.faultState.linkSlowdown = f.linkSlowdown;
      this.applyLinkSlowdown(f.linkSlowdown);
    }
    this.logger.warn({ faults: this.faultState }, 'faults set');
    return this.faults();
  }

  faults(): FaultsState {
    return { ...this.faultState };
  }

  // ---- for the backends --------------------------------------------------------------------------------------

  protected assertOpen(): void {
    if (this.closed) throw new AgentFailure(503, 'AGENT_UNAVAILABLE', 'the agent is stopping');
  }

  /** A disk of a kind this backend does not serve: 409 DISK_KIND_UNSUPPORTED naming the disk, before any room is taken. */
  protected checkDisks(spec: VmSpec): void {
    const served = this.diskKinds();
    vmDisks(spec).forEach((d, i) => {
      if (!served.includes(d.kind))
        throw conflict(
          'DISK_KIND_UNSUPPORTED',
          `spec.disks.${i}.kind`,
          `server ${this.opts.serverId} (${this.kind}) does not serve ${d.kind} disks (it serves: ${served.join(', ')})`,
        );
    });
  }

  /** The VM if it is here; else `VM_MOVED` (it migrated away) or a 404. */
  protected vmHere(vmId: string): V {
    const vm = this.vms.get(vmId);
    if (vm) return vm;
    const movedTo = this.tombstones.get(vmId);
    if (movedTo) throw vmMoved(vmId, movedTo);
    throw notFound('vmId', `no VM ${vmId} on server ${this.opts.serverId}`);
  }

  /**
   * The target runs the VM now (a job's hand-over succeeded): the tombstone first, so a caller never sees neither,
   * then the VM is stopped here for good (a source must never resume: that would make a second copy).
   */
  vmMoved(vm: V, agentUrl: string): void | Promise<void> {
    this.tombstones.set(vm.vmId, agentUrl);
    const removed = this.removeVm(vm);
    const logged = () => this.logger.info({ vmId: vm.vmId, movedTo: agentUrl }, 'VM moved away');
    if (removed instanceof Promise) return removed.then(logged);
    logged();
  }

  /** A VM that is new here (created, or arrived by migration): registered, and any old tombstone for it gone. */
  protected place(vm: V): void {
    this.addVm(vm);
    this.tombstones.delete(vm.vmId);
  }

  /** Takes a VM out of the map (if it is still the one there) and frees its room. */
  protected forgetVm(vm: V): void {
    if (this.vms.get(vm.vmId) === vm) this.vms.delete(vm.vmId);
    this.ledger.release(vm.incarnationId, { kind: 'vm', vmId: vm.vmId });
  }

  /** The reservation an incoming commit names, checked against the commit's VM. */
  protected incomingFor(jobId: string, vmId: string): R {
    const r = this.incoming.get(jobId);
    if (!r) throw notFound('jobId', `no incoming migration ${jobId} on server ${this.opts.serverId}`);
    if (r.vmId !== vmId) throw conflict('JOB_CONFLICT', 'vmId', `incoming migration ${jobId} is for VM ${r.vmId}`);
    return r;
  }

  /** The reservation becomes the VM's allocation: same amounts, so it cannot fail. The caller then places the VM. */
  protected commitReservation(r: R): void {
    r.state = 'committed';
    this.ledger.release(r.incarnationId, { kind: 'incoming', jobId: r.jobId });
    this.ledger.allocate(r.incarnationId, { kind: 'vm', vmId: r.vmId }, resourcesOf(r.spec), 'spec', 'incarnationId');
  }

  /** Takes a reservation out of the map (if it is still the one there) and frees its room; false if it was gone. */
  protected forgetIncoming(r: R): boolean {
    if (this.incoming.get(r.jobId) !== r) return false;
    this.incoming.delete(r.jobId);
    this.ledger.release(r.incarnationId, { kind: 'incoming', jobId: r.jobId });
    return true;
  }

  protected incomingView(r: R): IncomingView {
    return {
      jobId: r.jobId,
      vmId: r.vmId,
      incarnationId: r.incarnationId,
      serverId: this.opts.serverId,
      bootId: this.opts.bootId,
      state: r.state,
      ...this.incomingExtras(r),
    };
  }

  protected viewOf(vm: V): VmView {
    return vm.view(this.opts.serverId);
  }

  // ---- internals ---------------------------------------------------------------------------------------------

  /** Reserves room on the target, then starts the job. A definite refusal from the target leaves nothing behind. */
  private async launch(vm: V, input: StartMigrationInput): Promise<MigrationJob> {
    let accepted: IncomingView;
    try {
      accepted = await this.peer.accept(input.target.agentUrl, input.jobId, {
        vmId: vm.vmId,
        incarnationId: input.target.incarnationId,
        spec: vm.spec,
        sourceServerId: this.opts.serverId,
      });
    } catch (err) {
      if (err instanceof AgentError && err.status >= 400 && err.status < 500 && err.status !== 401 && err.status !== 403) {
        vm.migrationJobId = null;
        throw relayTargetRefusal(err);
      }
      // Unreachable, broken, or refusing us as a peer: record a failed job so the caller (and a retry) can see why.
      const message = err instanceof Error ? err.message : String(err);
      const failed = this.newJob(vm, input, null);
      failed.failBeforeStart('TargetUnavailable', `target ${input.target.agentUrl} did not accept the VM: ${message}`);
      this.jobs.set(input.jobId, failed);
      this.logger.warn({ jobId: input.jobId, err: message }, 'migration failed: target unavailable');
      return failed.snapshot();
    }
    if (this.closed) {
      await this.abandonAccepted(input);
      this.assertOpen();
    }
    // An injected failure is consumed by the first migration that really starts.
    const failAt = this.faultState.failMigrationAtRound;
    this.faultState.failMigrationAtRound = null;
    const job = this.newJob(vm, input, failAt);
    this.jobs.set(input.jobId, job);
    this.beginJob(job, failAt, accepted);
    return job.snapshot();
  }

  /** Cancels the VM's migration (or lets a switchover already committing finish) and waits until it has settled. */
  private async stopMigrationOf(vm: V): Promise<void> {
    const jobId = vm.migrationJobId;
    if (!jobId) return;
    const pending = this.starting.get(jobId);
    if (pending) {
      await pending.promise.catch(() => undefined);
      return;
    }
    const job = this.jobs.get(jobId);
    if (!job) {
      vm.migrationJobId = null;
      return;
    }
    try {
      await job.cancel();
    } catch (err) {
      if (!(err instanceof AgentFailure && err.code === 'MIGRATION_COMPLETED')) throw err;
    }
  }
}

function checkSameJob(a: StartMigrationInput, b: StartMigrationInput): void {
  if (a.vmId !== b.vmId || !sameUrl(a.target.agentUrl, b.target.agentUrl) || a.target.incarnationId !== b.target.incarnationId)
    throw conflict('JOB_CONFLICT', 'jobId', `migration ${a.jobId} exists for VM ${a.vmId} to ${a.target.agentUrl}`);
}

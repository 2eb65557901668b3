import type { Logger } from 'pino';
import type { Resources } from '../../common/resources';
import type {
  AcceptIncomingBody,
  CommitIncomingBody,
  Faults,
  FaultsState,
  GuestOp,
  GuestOpResult,
  IncarnationView,
  IncomingView,
  MigrationJob,
  StartMigrationInput,
  VmSpec,
  VmView,
} from '../agent-api';
import { AgentError } from '../agent-http';
import type { ComputeBackend } from '../backend';
import { AgentFailure, conflict, notFound } from '../errors';
import { IncarnationLedger } from '../incarnation-ledger';
import type { PeerClient } from '../peer-client';
import { mibToBytes } from '../units';
import { SimClock } from './clock';
import { SimLink } from './link';
import { SimMigration, type MigrationHost } from './migration';
import { DEFAULT_MAX_ROUNDS, type PrecopyParams } from './precopy';
import { SimVm } from './sim-vm';

export interface SimBackendOptions {
  serverId: string;
  bootId: string;
  capacity: Resources;
  /** NIC bandwidth B in bytes/s (already converted from the fleet's bits/s). */
  nicBytesPerSec: number;
  /** Per-stream cap S as a fraction of B. */
  streamCapFraction: number;
  timeScale: number;
  peer: PeerClient;
  logger: Logger;
  /** This agent's own URL, known once it listens; used to spot a migration to itself and in tombstones. */
  selfUrl: () => string;
}

interface Incoming {
  vmId: string;
  incarnationId: string;
  spec: VmSpec;
  state: 'reserved' | 'committed';
}

const resourcesOf = (spec: VmSpec): Resources => ({ vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, diskGiB: spec.diskGiB });
const sameSpec = (a: VmSpec, b: VmSpec) => JSON.stringify(a) === JSON.stringify(b);
const sameUrl = (a: string, b: string) => a.replace(/\/+$/, '') === b.replace(/\/+$/, '');
const vmMoved = (vmId: string, movedTo: string) =>
  new AgentFailure(409, 'VM_MOVED', `VM ${vmId} has migrated to ${movedTo}`, 'vmId', movedTo);

/**
 * The `sim` backend: VMs are in-memory objects whose guest state is a counter; migrations follow the pre-copy model
 * (precopy.ts) on a fluid model of the server's NIC (link.ts). Everything is lost when the agent stops.
 */
export class SimBackend implements ComputeBackend, MigrationHost {
  readonly kind = 'sim' as const;
  readonly clock: SimClock;
  readonly link: SimLink;
  readonly peer: PeerClient;
  readonly logger: Logger;
  private readonly ledger: IncarnationLedger;
  private readonly vms = new Map<string, SimVm>();
  /** VMs that migrated away: vmId → the agent URL they went to. */
  private readonly tombstones = new Map<string, string>();
  private readonly jobs = new Map<string, SimMigration>();
  /** Starts waiting for the target's answer, so a concurrent retry of the same job id joins instead of racing. */
  private readonly starting = new Map<string, { input: StartMigrationInput; promise: Promise<MigrationJob> }>();
  private readonly incoming = new Map<string, Incoming>();
  private faultState: FaultsState = { failMigrationAtRound: null, unreachable: false, linkSlowdown: 1 };
  private closed = false;

  constructor(private readonly opts: SimBackendOptions) {
    this.logger = opts.logger;
    this.peer = opts.peer;
    this.clock = new SimClock(opts.timeScale);
    this.link = new SimLink(opts.nicBytesPerSec, this.clock, (err) => this.logger.error({ err }, 'sim link failed to advance'));
    this.ledger = new IncarnationLedger(opts.serverId, opts.capacity);
  }

  incarnationIds(): string[] {
    return this.ledger.ids();
  }

  // ---- incarnations ------------------------------------------------------------------------------------------

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
        this.incoming.delete(h.jobId);
        continue;
      }
      const vm = this.vms.get(h.vmId);
      if (!vm) continue;
      await this.stopMigrationOf(vm);
      if (this.vms.get(h.vmId) === vm) this.removeVm(vm);
    }
    this.logger.info({ incarnationId, released: holders.length }, 'incarnation torn down');
  }

  // ---- VMs ---------------------------------------------------------------------------------------------------

  createVm(input: { vmId: string; incarnationId: string; spec: VmSpec }): VmView {
    const existing = this.vms.get(input.vmId);
    if (existing) {
      if (existing.incarnationId === input.incarnationId && sameSpec(existing.spec, input.spec)) return this.viewOf(existing);
      throw conflict('VM_EXISTS', 'vmId', `VM ${input.vmId} already exists here with another spec or incarnation`);
    }
    if (this.reservedIncoming(input.vmId))
      throw conflict('VM_EXISTS', 'vmId', `VM ${input.vmId} is migrating to this server`);
    this.ledger.allocate(input.incarnationId, { kind: 'vm', vmId: input.vmId }, resourcesOf(input.spec), 'spec', 'incarnationId');
    const vm = new SimVm(input.vmId, input.incarnationId, input.spec);
    this.vms.set(vm.vmId, vm);
    this.tombstones.delete(vm.vmId);
    this.logger.info({ vmId: vm.vmId, incarnationId: vm.incarnationId }, 'VM created');
    return this.viewOf(vm);
  }

  getVm(vmId: string): { vm: VmView } | { movedTo: string } | null {
    const vm = this.vms.get(vmId);
    if (vm) return { vm: this.viewOf(vm) };
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
      this.removeVm(vm);
      this.logger.info({ vmId }, 'VM deleted');
      return;
    }
  }

  async guestOp(vmId: string, op: GuestOp): Promise<GuestOpResult> {
    for (;;) {
      if (this.closed) throw new AgentFailure(503, 'AGENT_UNAVAILABLE', 'the agent is stopping');
      const vm = this.vms.get(vmId);
      if (!vm) {
        const movedTo = this.tombstones.get(vmId);
        if (movedTo) throw vmMoved(vmId, movedTo);
        throw notFound('vmId', `no VM ${vmId} on server ${this.opts.serverId}`);
      }
      if (vm.state === 'paused-for-switchover') {
        // Stop-and-copy: the guest is frozen. Wait, then look again: it either resumed here or moved away.
        await vm.whilePaused();
        continue;
      }
      if (op.kind === 'increment') vm.counter += 1;
      return { vmId, counter: vm.counter, servedBy: this.opts.serverId };
    }
  }

  // ---- outbound migrations -----------------------------------------------------------------------------------

  async startMigration(input: StartMigrationInput): Promise<MigrationJob> {
    const job = this.jobs.get(input.jobId);
    if (job) {
      this.checkSameJob(job.input, input);
      return job.snapshot();
    }
    const pending = this.starting.get(input.jobId);
    if (pending) {
      this.checkSameJob(pending.input, input);
      return pending.promise;
    }
    const vm = this.vms.get(input.vmId);
    if (!vm) {
      const movedTo = this.tombstones.get(input.vmId);
      if (movedTo) throw vmMoved(input.vmId, movedTo);
      throw notFound('vmId', `no VM ${input.vmId} on server ${this.opts.serverId}`);
    }
    if (vm.migrationJobId)
      throw conflict('MIGRATION_IN_PROGRESS', 'vmId', `VM ${input.vmId} is already migrating (job ${vm.migrationJobId})`);
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

  async cancelMigration(jobId: string): Promise<MigrationJob> {
    const pending = this.starting.get(jobId);
    if (pending) await pending.promise.catch(() => undefined);
    const job = this.jobs.get(jobId);
    if (!job) throw notFound('jobId', `no migration ${jobId} on server ${this.opts.serverId}`);
    return job.cancel();
  }

  // ---- inbound migrations ------------------------------------------------------------------------------------

  acceptIncoming(jobId: string, input: AcceptIncomingBody): IncomingView {
    if (input.sourceServerId === this.opts.serverId)
      throw conflict('SAME_SERVER', 'sourceServerId', `source and target are the same server (${this.opts.serverId})`);
    const existing = this.incoming.get(jobId);
    if (existing) {
      if (existing.vmId !== input.vmId || existing.incarnationId !== input.incarnationId)
        throw conflict('JOB_CONFLICT', 'jobId', `incoming migration ${jobId} exists for another VM or incarnation`);
      return this.incomingView(jobId, existing);
    }
    if (this.vms.has(input.vmId)) throw conflict('VM_EXISTS', 'vmId', `VM ${input.vmId} already runs on this server`);
    // A reservation for the same VM left by an earlier attempt whose source never released it gives way.
    for (const [otherJob, r] of this.incoming)
      if (r.vmId === input.vmId && r.state === 'reserved') this.dropIncoming(otherJob, r);
    this.ledger.allocate(input.incarnationId, { kind: 'incoming', jobId }, resourcesOf(input.spec), 'spec', 'incarnationId');
    const r: Incoming = { vmId: input.vmId, incarnationId: input.incarnationId, spec: input.spec, state: 'reserved' };
    this.incoming.set(jobId, r);
    this.logger.info({ jobId, vmId: input.vmId, incarnationId: input.incarnationId, from: input.sourceServerId }, 'incoming VM accepted');
    return this.incomingView(jobId, r);
  }

  commitIncoming(jobId: string, input: CommitIncomingBody): VmView {
    const r = this.incoming.get(jobId);
    if (!r) throw notFound('jobId', `no incoming migration ${jobId} on server ${this.opts.serverId}`);
    if (r.vmId !== input.vmId) throw conflict('JOB_CONFLICT', 'vmId', `incoming migration ${jobId} is for VM ${r.vmId}`);
    if (r.state === 'committed') {
      // A replay (the first reply was lost): never reset the counter of a VM that has run since.
      const vm = this.vms.get(r.vmId);
      if (vm) return this.viewOf(vm);
      throw conflict('INCOMING_COMMITTED', 'jobId', `incoming migration ${jobId} was already committed`);
    }
    // The reservation becomes the VM's allocation: same amounts, so it cannot fail.
    this.ledger.release(r.incarnationId, { kind: 'incoming', jobId });
    this.ledger.allocate(r.incarnationId, { kind: 'vm', vmId: r.vmId }, resourcesOf(r.spec), 'spec', 'incarnationId');
    const vm = new SimVm(r.vmId, r.incarnationId, r.spec, input.counter);
    this.vms.set(vm.vmId, vm);
    this.tombstones.delete(vm.vmId);
    r.state = 'committed';
    this.logger.info({ jobId, vmId: vm.vmId, counter: vm.counter }, 'incoming VM started');
    return this.viewOf(vm);
  }

  releaseIncoming(jobId: string): void {
    const r = this.incoming.get(jobId);
    if (!r) return;
    if (r.state === 'committed')
      throw conflict('INCOMING_COMMITTED', 'jobId', `incoming migration ${jobId} was committed; the VM runs here`);
    this.dropIncoming(jobId, r);
  }

  // ---- faults, lifecycle -------------------------------------------------------------------------------------

  setFaults(f: Faults): FaultsState {
    if (f.failMigrationAtRound !== undefined) this.faultState.failMigrationAtRound = f.failMigrationAtRound;
    if (f.unreachable !== undefined) this.faultState.unreachable = f.unreachable;
    if (f.linkSlowdown !== undefined) {
      this.faultState.linkSlowdown = f.linkSlowdown;
      this.link.setSlowdown(f.linkSlowdown);
    }
    this.logger.warn({ faults: this.faultState }, 'faults set');
    return this.faults();
  }

  faults(): FaultsState {
    return { ...this.faultState };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.link.close();
    for (const job of this.jobs.values()) job.halt();
    // Parked guest operations wake, see `closed` and get a 503 instead of hanging the server's shutdown.
    for (const vm of this.vms.values()) vm.unpark(vm.state);
  }

  /** MigrationHost: the target has the VM now. */
  vmMoved(vm: SimVm, agentUrl: string): void {
    if (this.vms.get(vm.vmId) !== vm) return;
    this.removeVm(vm);
    this.tombstones.set(vm.vmId, agentUrl);
    vm.unpark('running');
    this.logger.info({ vmId: vm.vmId, movedTo: agentUrl }, 'VM moved away');
  }

  // ---- internals ---------------------------------------------------------------------------------------------

  /** Reserves room on the target, then starts the stream. A definite refusal from the target leaves nothing behind. */
  private async launch(vm: SimVm, input: StartMigrationInput): Promise<MigrationJob> {
    const params = (failAtRound: number | null): PrecopyParams => ({
      memoryBytes: mibToBytes(vm.spec.memoryMiB),
      dirtyRateBps: mibToBytes(vm.spec.workload?.dirtyRateMiBps ?? 0),
      workingSetBytes: mibToBytes(vm.spec.workload?.workingSetMiB ?? 0),
      maxDowntimeMs: input.maxDowntimeMs,
      autoConverge: input.autoConverge,
      maxRounds: input.maxRounds ?? DEFAULT_MAX_ROUNDS,
      capBps: Math.min(this.opts.streamCapFraction * this.opts.nicBytesPerSec, input.bandwidthCapBps ?? Infinity),
      failAtRound,
    });
    try {
      await this.peer.accept(input.target.agentUrl, input.jobId, {
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
      const failed = new SimMigration(this, vm, input, params(null));
      failed.failBeforeStart('TargetUnavailable', `target ${input.target.agentUrl} did not accept the VM: ${message}`);
      this.jobs.set(input.jobId, failed);
      this.logger.warn({ jobId: input.jobId, err: message }, 'migration failed: target unavailable');
      return failed.snapshot();
    }
    if (this.closed) throw new AgentFailure(503, 'AGENT_UNAVAILABLE', 'the agent is stopping');
    // An injected failure is consumed by the first migration that really starts.
    const failAt = this.faultState.failMigrationAtRound;
    this.faultState.failMigrationAtRound = null;
    const migration = new SimMigration(this, vm, input, params(failAt));
    this.jobs.set(input.jobId, migration);
    migration.begin(failAt === 0);
    return migration.snapshot();
  }

  private checkSameJob(a: StartMigrationInput, b: StartMigrationInput): void {
    if (a.vmId !== b.vmId || !sameUrl(a.target.agentUrl, b.target.agentUrl) || a.target.incarnationId !== b.target.incarnationId)
      throw conflict('JOB_CONFLICT', 'jobId', `migration ${a.jobId} exists for VM ${a.vmId} to ${a.target.agentUrl}`);
  }

  /** Cancels the VM's migration (or lets a switchover already committing finish) and waits until it has settled. */
  private async stopMigrationOf(vm: SimVm): Promise<void> {
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

  private removeVm(vm: SimVm): void {
    this.vms.delete(vm.vmId);
    this.ledger.release(vm.incarnationId, { kind: 'vm', vmId: vm.vmId });
    vm.unpark('running');
  }

  private reservedIncoming(vmId: string): boolean {
    for (const r of this.incoming.values()) if (r.vmId === vmId && r.state === 'reserved') return true;
    return false;
  }

  private dropIncoming(jobId: string, r: Incoming): void {
    this.ledger.release(r.incarnationId, { kind: 'incoming', jobId });
    this.incoming.delete(jobId);
  }

  private incomingView(jobId: string, r: Incoming): IncomingView {
    return { jobId, vmId: r.vmId, incarnationId: r.incarnationId, serverId: this.opts.serverId, bootId: this.opts.bootId, state: r.state };
  }

  private viewOf(vm: SimVm): VmView {
    return vm.view(this.opts.serverId);
  }
}

/** The target's refusal, renamed into the fields of the caller's startMigration request. */
function relayTargetRefusal(err: AgentError): AgentFailure {
  const field =
    err.field === 'incarnationId'
      ? 'target.incarnationId'
      : err.field === 'sourceServerId'
        ? 'target.agentUrl'
        : err.field === 'jobId'
          ? 'jobId'
          : err.field; // vmId and spec.* read the same from the caller's side
  return new AgentFailure(err.status, err.code, `target refused the VM: ${err.message}`, field);
}

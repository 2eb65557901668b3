import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
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
import { AgentFailure, conflict, invalidInput, notFound } from '../errors';
import { IncarnationLedger } from '../incarnation-ledger';
import type { PeerClient } from '../peer-client';
import { QemuMigration, type QemuMigrationHost, type QemuMigrationSettings } from './migration';
import { describeExit, QemuProcess, type MachineSpec } from './qemu-process';
import { QemuVm } from './qemu-vm';
import type { QemuTools } from './tools';

export interface QemuBackendOptions {
  serverId: string;
  bootId: string;
  capacity: Resources;
  peer: PeerClient;
  logger: Logger;
  /** This agent's own URL, known once it listens; used to spot a migration to itself and in tombstones. */
  selfUrl: () => string;
  tools: QemuTools;
  /** This agent's own folder (QMP sockets, serial logs); created, and removed when the agent stops. */
  stateDir: string;
  /**
   * Shared by every qemu agent on this machine: destinations listen on UNIX sockets here, at a path both ends derive
   * from the target's boot id and the job id (the agent API has no field to pass a listen address).
   */
  migrationDir: string;
  /** The most memory one VM may have here (QEMU would start a bigger one and let the host swap or OOM). */
  maxVmMemoryMiB: number;
  maxVmVcpus: number;
  settings: QemuMigrationSettings;
}

/** Below this the guest kernel and its initramfs do not fit. */
export const MIN_VM_MEMORY_MIB = 64;
/** How long an `increment` waits for the guest to print its next counter (it prints every 0.5 s). */
const INCREMENT_WAIT_MS = 5_000;
const MAX_GUEST_OP_WAIT_MS = 8_000;
const GUEST_POLL_MS = 25;
const STOP_GRACE_MS = 2_000;
/** A destination nobody has started sending to after this long is stopped and its reservation freed. */
const IDLE_DESTINATION_MS = 60_000;

interface Incoming {
  jobId: string;
  vmId: string;
  incarnationId: string;
  spec: VmSpec;
  machine: MachineSpec;
  proc: QemuProcess;
  socketPath: string;
  /** committed: the destination runs the guest and is a VM here now. */
  state: 'reserved' | 'committed';
  /** QEMU resumed the guest here (the migration completed). */
  resumed: boolean;
  /** Why the destination is gone, if it is (cancel, failure: QEMU exits then). */
  ended: string | null;
}

const resourcesOf = (spec: VmSpec): Resources => ({ vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, diskGiB: spec.diskGiB });
const sameSpec = (a: VmSpec, b: VmSpec) => JSON.stringify(a) === JSON.stringify(b);
const sameUrl = (a: string, b: string) => a.replace(/\/+$/, '') === b.replace(/\/+$/, '');
const vmMoved = (vmId: string, movedTo: string) =>
  new AgentFailure(409, 'VM_MOVED', `VM ${vmId} has migrated to ${movedTo}`, 'vmId', movedTo);
const vmFailed = (vm: QemuVm) =>
  new AgentFailure(409, 'VM_FAILED', `VM ${vm.vmId} has failed: ${vm.failure?.message ?? 'unknown'}`, 'vmId');

/**
 * The `qemu` backend: every VM is a QEMU process (TCG) on this machine, driven over QMP; migrations are QEMU live
 * migrations between two agents' processes. Guest operations read the guest's counter from its serial console.
 * Every process it starts is tracked and killed when the agent stops.
 */
export class QemuBackend implements ComputeBackend, QemuMigrationHost {
  readonly kind = 'qemu' as const;
  readonly peer: PeerClient;
  readonly logger: Logger;
  readonly settings: QemuMigrationSettings;
  private readonly ledger: IncarnationLedger;
  private readonly vms = new Map<string, QemuVm>();
  private readonly tombstones = new Map<string, string>();
  private readonly jobs = new Map<string, QemuMigration>();
  private readonly starting = new Map<string, { input: StartMigrationInput; promise: Promise<MigrationJob> }>();
  private readonly incoming = new Map<string, Incoming>();
  /** Every QEMU process started and not yet reaped: what `close()` kills. */
  private readonly procs = new Set<QemuProcess>();
  private faultState: FaultsState = { failMigrationAtRound: null, unreachable: false, linkSlowdown: 1 };
  private seq = 0;
  private closed = false;

  constructor(private readonly opts: QemuBackendOptions) {
    this.logger = opts.logger;
    this.peer = opts.peer;
    this.settings = opts.settings;
    this.ledger = new IncarnationLedger(opts.serverId, opts.capacity);
    fs.mkdirSync(opts.stateDir, { recursive: true });
    fs.mkdirSync(opts.migrationDir, { recursive: true });
    this.logger.info({ qemu: opts.tools.qemuVersion, stateDir: opts.stateDir }, 'qemu backend ready');
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
    this.logger.info({ incarnationId, released: holders.length }, 'incarnation torn down');
  }

  // ---- VMs ---------------------------------------------------------------------------------------------------

  createVm(input: { vmId: string; incarnationId: string; spec: VmSpec }): VmView {
    this.assertOpen();
    const existing = this.vms.get(input.vmId);
    if (existing) {
      if (existing.incarnationId === input.incarnationId && sameSpec(existing.spec, input.spec)) return this.viewOf(existing);
      throw conflict('VM_EXISTS', 'vmId', `VM ${input.vmId} already exists here with another spec or incarnation`);
    }
    for (const r of this.incoming.values())
      if (r.vmId === input.vmId && r.state === 'reserved') throw conflict('VM_EXISTS', 'vmId', `VM ${input.vmId} is migrating to this server`);
    // Refused before any process starts: a spec QEMU cannot honour here, then capacity.
    const machine = this.machineFor(input.spec, 'spec');
    this.ledger.allocate(input.incarnationId, { kind: 'vm', vmId: input.vmId }, resourcesOf(input.spec), 'spec', 'incarnationId');
    const proc = this.spawn(`vm-${++this.seq}`, input.vmId, machine, false);
    const vm = new QemuVm(input.vmId, input.incarnationId, input.spec, machine, proc);
    this.adopt(vm);
    this.tombstones.delete(vm.vmId);
    this.logger.info({ vmId: vm.vmId, incarnationId: vm.incarnationId, pid: proc.pid, machine }, 'VM created');
    return this.viewOf(vm);
  }

  getVm(vmId: string): { vm: VmView } | { movedTo: string } | null {
    const vm = this.vms.get(vmId);
    if (vm) {
      if (vm.failure) throw vmFailed(vm);
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
        return;
      }
      if (vm.migrationJobId) {
        await this.stopMigrationOf(vm);
        continue; // still here (cancelled) or moved (the switchover won the race)
      }
      await this.removeVm(vm);
      this.logger.info({ vmId }, 'VM deleted');
      return;
    }
  }

  /**
   * `read`: the last counter the guest printed. `increment`: a real guest counts by itself, so this waits until it
   * has printed a higher value and returns that: the same "each operation sees a larger counter" the sim gives.
   * Both are served wherever the VM runs; during the switchover they wait, then follow it (VM_MOVED).
   */
  async guestOp(vmId: string, op: GuestOp): Promise<GuestOpResult> {
    let floor: number | null = null;
    const started = Date.now();
    for (;;) {
      // A switchover lasts QEMU's downtime (ms); this bound only guards against a VM stuck in that state.
      if (Date.now() - started > MAX_GUEST_OP_WAIT_MS)
        throw new AgentFailure(503, 'GUEST_UNRESPONSIVE', `VM ${vmId} did not answer within ${MAX_GUEST_OP_WAIT_MS} ms`);
      if (this.closed) throw new AgentFailure(503, 'AGENT_UNAVAILABLE', 'the agent is stopping');
      const vm = this.vms.get(vmId);
      if (!vm) {
        const movedTo = this.tombstones.get(vmId);
        if (movedTo) throw vmMoved(vmId, movedTo);
        throw notFound('vmId', `no VM ${vmId} on server ${this.opts.serverId}`);
      }
      if (vm.failure) throw vmFailed(vm);
      const counter = vm.counter();
      if (op.kind === 'read' && vm.state !== 'paused-for-switchover')
        return { vmId, counter, servedBy: this.opts.serverId };
      if (op.kind === 'increment') {
        floor ??= counter;
        if (counter > floor) return { vmId, counter, servedBy: this.opts.serverId };
        if (Date.now() - started > INCREMENT_WAIT_MS && vm.state !== 'paused-for-switchover')
          throw new AgentFailure(503, 'GUEST_UNRESPONSIVE', `VM ${vmId}'s guest printed no new counter within ${INCREMENT_WAIT_MS} ms`);
      }
      await sleep(GUEST_POLL_MS);
    }
  }

  // ---- outbound migrations -----------------------------------------------------------------------------------

  async startMigration(input: StartMigrationInput): Promise<MigrationJob> {
    this.assertOpen();
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
    if (vm.failure) throw vmFailed(vm);
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
    if (!job) throw notFound('jobId', `no migration ${jobId} here`);
    return job.cancel();
  }

  // ---- inbound migrations ------------------------------------------------------------------------------------

  /** Reserves room and starts the destination QEMU (`-incoming defer`), which then listens for the source. */
  acceptIncoming(jobId: string, input: AcceptIncomingBody): IncomingView {
    this.assertOpen();
    const existing = this.incoming.get(jobId);
    if (existing) {
      if (existing.vmId !== input.vmId || existing.incarnationId !== input.incarnationId)
        throw conflict('JOB_CONFLICT', 'jobId', `incoming migration ${jobId} exists for another VM or incarnation`);
      return this.incomingView(existing);
    }
    if (this.vms.has(input.vmId)) throw conflict('VM_EXISTS', 'vmId', `VM ${input.vmId} already runs on this server`);
    const machine = this.machineFor(input.spec, 'spec');
    // A reservation for the same VM left by an earlier attempt whose source never released it gives way.
    for (const r of [...this.incoming.values()]) if (r.vmId === input.vmId && r.state === 'reserved') void this.dropIncoming(r);
    this.ledger.allocate(input.incarnationId, { kind: 'incoming', jobId }, resourcesOf(input.spec), 'spec', 'incarnationId');
    const socketPath = this.migrationSocketPath(this.opts.bootId, jobId);
    fs.rmSync(socketPath, { force: true });
    const proc = this.spawn(`in-${++this.seq}`, input.vmId, machine, true);
    const r: Incoming = {
      jobId, vmId: input.vmId, incarnationId: input.incarnationId, spec: input.spec, machine, proc, socketPath,
      state: 'reserved', resumed: false, ended: null,
    };
    this.incoming.set(jobId, r);
    void this.listen(r);
    this.logger.info({ jobId, vmId: input.vmId, from: input.sourceServerId, pid: proc.pid }, 'incoming VM accepted; destination starting');
    return this.incomingView(r);
  }

  commitIncoming(jobId: string, input: CommitIncomingBody): VmView {
    const r = this.incoming.get(jobId);
    if (!r) throw notFound('jobId', `no incoming migration ${jobId} on server ${this.opts.serverId}`);
    if (r.vmId !== input.vmId) throw conflict('JOB_CONFLICT', 'vmId', `incoming migration ${jobId} is for VM ${r.vmId}`);
    if (r.state === 'reserved') {
      if (r.ended) throw conflict('INCOMING_FAILED', 'jobId', `the destination for ${jobId} is gone: ${r.ended}`);
      // QEMU resumes the destination a few ms after the source reports completed; the source retries.
      if (!r.resumed) throw new AgentFailure(503, 'INCOMING_NOT_READY', `the destination for ${jobId} has not resumed yet`, 'jobId');
      this.promote(r, input.counter);
    }
    const vm = this.vms.get(r.vmId);
    if (!vm) throw conflict('INCOMING_COMMITTED', 'jobId', `incoming migration ${jobId} was committed; the VM is no longer here`);
    vm.handedOverCounter ??= input.counter; // promoted on RESUME, before the source's commit arrived
    return this.viewOf(vm);
  }

  releaseIncoming(jobId: string): void {
    const r = this.incoming.get(jobId);
    if (!r) return;
    if (r.state === 'committed' || r.resumed)
      throw conflict('INCOMING_COMMITTED', 'jobId', `incoming migration ${jobId} was committed; the VM runs here`);
    void this.dropIncoming(r);
  }

  // ---- faults, lifecycle -------------------------------------------------------------------------------------

  setFaults(f: Faults): FaultsState {
    if (f.failMigrationAtRound !== undefined) this.faultState.failMigrationAtRound = f.failMigrationAtRound;
    if (f.unreachable !== undefined) this.faultState.unreachable = f.unreachable;
    if (f.linkSlowdown !== undefined) {
      this.faultState.linkSlowdown = f.linkSlowdown;
      for (const job of this.jobs.values()) void job.updateBandwidth();
    }
    this.logger.warn({ faults: this.faultState }, 'faults set');
    return this.faults();
  }

  faults(): FaultsState {
    return { ...this.faultState };
  }

  /** Kills every QEMU process this agent started and waits until each has been reaped. */
  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.jobs.values()) job.halt();
    for (const vm of this.vms.values()) vm.stopping = true;
    const procs = [...this.procs];
    await Promise.all(procs.map((p) => p.stop(0)));
    for (const r of this.incoming.values()) fs.rmSync(r.socketPath, { force: true });
    fs.rmSync(this.opts.stateDir, { recursive: true, force: true });
    this.logger.info({ killed: procs.length }, 'qemu backend closed');
  }

  // ---- QemuMigrationHost -------------------------------------------------------------------------------------

  migrationSocketPath(targetBootId: string, jobId: string): string {
    const h = createHash('sha256').update(`${targetBootId}\0${jobId}`).digest('hex').slice(0, 24);
    return path.join(this.opts.migrationDir, `${h}.sock`);
  }

  linkSlowdown(): number {
    return this.faultState.linkSlowdown;
  }

  async vmMoved(vm: QemuVm, agentUrl: string): Promise<void> {
    this.tombstones.set(vm.vmId, agentUrl);
    // A postmigrate source must never run again (`cont` would make a second copy): quit it.
    await this.removeVm(vm);
    this.logger.info({ vmId: vm.vmId, movedTo: agentUrl }, 'VM moved away; source QEMU quit');
  }

  // ---- internals ---------------------------------------------------------------------------------------------

  private async launch(vm: QemuVm, input: StartMigrationInput): Promise<MigrationJob> {
    const failAt = (): number | null => {
      // An injected failure is consumed by the first migration that really starts.
      const at = this.faultState.failMigrationAtRound;
      this.faultState.failMigrationAtRound = null;
      return at;
    };
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
      const message = err instanceof Error ? err.message : String(err);
      const failed = new QemuMigration(this, vm, input, null);
      failed.failBeforeStart('TargetUnavailable', `target ${input.target.agentUrl} did not accept the VM: ${message}`);
      this.jobs.set(input.jobId, failed);
      this.logger.warn({ jobId: input.jobId, err: message }, 'migration failed: target unavailable');
      return failed.snapshot();
    }
    if (this.closed) {
      // The target has started a destination for us: have it dropped rather than left waiting.
      await this.peer.release(input.target.agentUrl, input.jobId).catch(() => undefined);
      this.assertOpen();
    }
    const migration = new QemuMigration(this, vm, input, failAt());
    this.jobs.set(input.jobId, migration);
    migration.begin(accepted);
    return migration.snapshot();
  }

  /** The destination: QMP up, events on, then migrate-incoming on the UNIX socket the source will find. */
  private async listen(r: Incoming): Promise<void> {
    const log = this.logger.child({ jobId: r.jobId, vmId: r.vmId, pid: r.proc.pid });
    try {
      const qmp = await r.proc.qmp();
      qmp.on('event', (e) => {
        if (e.event !== 'RESUME' || r.resumed) return;
        r.resumed = true;
        // The guest runs here from this instant, whether or not the source's commit ever arrives.
        if (r.state === 'reserved' && this.incoming.get(r.jobId) === r) this.promote(r, null);
      });
      let connected = false;
      qmp.on('event', (e) => {
        if (e.event === 'MIGRATION' && e.data.status !== 'setup') connected = true;
      });
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
      await qmp.execute('migrate-incoming', { uri: `unix:${r.socketPath}` });
      log.debug({ socketPath: r.socketPath }, 'destination listening');
      // A source that never connects (it died, or gave up before sending) must not leave a QEMU waiting here forever.
      setTimeout(() => {
        if (connected || r.state !== 'reserved' || this.incoming.get(r.jobId) !== r) return;
        log.warn({ waitedMs: IDLE_DESTINATION_MS }, 'no source connected to the destination; dropping it');
        void this.dropIncoming(r);
      }, IDLE_DESTINATION_MS).unref();
    } catch (err) {
      if (!r.ended && r.proc.running) {
        log.warn({ err: err instanceof Error ? err.message : String(err) }, 'destination could not listen; stopping it');
        await r.proc.stop(0);
      }
    }
  }

  /** The incoming becomes a VM here: same amounts, so the ledger swap cannot fail. */
  private promote(r: Incoming, handedOverCounter: number | null): void {
    if (r.state === 'committed') return;
    r.state = 'committed';
    this.ledger.release(r.incarnationId, { kind: 'incoming', jobId: r.jobId });
    this.ledger.allocate(r.incarnationId, { kind: 'vm', vmId: r.vmId }, resourcesOf(r.spec), 'spec', 'incarnationId');
    fs.rmSync(r.socketPath, { force: true });
    const vm = new QemuVm(r.vmId, r.incarnationId, r.spec, r.machine, r.proc, handedOverCounter);
    if (r.proc.exitInfo) vm.failure = { code: 'VmFailed', message: `QEMU exited (${describeExit(r.proc.exitInfo)})` };
    this.adopt(vm);
    this.tombstones.delete(vm.vmId);
    this.logger.info({ jobId: r.jobId, vmId: vm.vmId, pid: r.proc.pid, handedOverCounter }, 'incoming VM running here');
  }

  /** Registers a VM and watches its process: an exit nobody asked for makes the VM failed. */
  private adopt(vm: QemuVm): void {
    this.vms.set(vm.vmId, vm);
    void vm.proc.exited.then((exit) => {
      if (vm.stopping || this.vms.get(vm.vmId) !== vm) return;
      vm.failure = { code: 'VmFailed', message: `QEMU exited unexpectedly (${describeExit(exit)})` };
      vm.state = 'running';
      this.logger.error({ vmId: vm.vmId, pid: vm.proc.pid, exit }, 'VM failed: its QEMU process exited');
    });
    // Connect early so a broken start shows up in the log now, not at the first migration.
    vm.proc.qmp().catch((err: unknown) => {
      if (!vm.stopping) this.logger.warn({ vmId: vm.vmId, err: err instanceof Error ? err.message : String(err) }, 'no QMP connection to the VM');
    });
  }

  private async dropIncoming(r: Incoming): Promise<void> {
    if (this.incoming.get(r.jobId) !== r) return;
    this.incoming.delete(r.jobId);
    this.ledger.release(r.incarnationId, { kind: 'incoming', jobId: r.jobId });
    r.ended ??= 'released';
    await r.proc.stop(0);
    fs.rmSync(r.socketPath, { force: true });
    this.logger.info({ jobId: r.jobId, vmId: r.vmId, exit: r.proc.exitInfo }, 'incoming migration dropped; destination reaped');
  }

  private async removeVm(vm: QemuVm): Promise<void> {
    vm.stopping = true;
    if (this.vms.get(vm.vmId) === vm) this.vms.delete(vm.vmId);
    this.ledger.release(vm.incarnationId, { kind: 'vm', vmId: vm.vmId });
    await vm.proc.stop(STOP_GRACE_MS);
  }

  private spawn(dirName: string, vmId: string, machine: MachineSpec, incoming: boolean): QemuProcess {
    const proc = new QemuProcess({
      tools: this.opts.tools,
      dir: path.join(this.opts.stateDir, dirName),
      machine,
      incoming,
      logger: this.logger,
      name: vmId,
    });
    this.procs.add(proc);
    void proc.exited.then((exit) => {
      this.procs.delete(proc);
      this.logger.debug({ pid: proc.pid, vmId, incoming, exit }, 'QEMU process reaped');
      for (const r of this.incoming.values())
        if (r.proc === proc && r.state === 'reserved') r.ended ??= `QEMU exited (${describeExit(exit)})`;
    });
    return proc;
  }

  /** What QEMU will run for this spec, or a 400 naming the field it cannot honour. */
  private machineFor(spec: VmSpec, prefix: string): MachineSpec {
    if (spec.vcpus < 1) throw invalidInput(`${prefix}.vcpus`, `${prefix}.vcpus: a VM needs at least 1 vCPU`);
    if (spec.vcpus > this.opts.maxVmVcpus)
      throw invalidInput(`${prefix}.vcpus`, `${prefix}.vcpus: ${spec.vcpus} is above this agent's limit of ${this.opts.maxVmVcpus} per VM`);
    if (spec.memoryMiB > this.opts.maxVmMemoryMiB)
      throw invalidInput(`${prefix}.memoryMiB`, `${prefix}.memoryMiB: ${spec.memoryMiB} is above this agent's limit of ${this.opts.maxVmMemoryMiB} MiB per VM`);
    if (spec.memoryMiB < MIN_VM_MEMORY_MIB)
      throw invalidInput(`${prefix}.memoryMiB`, `${prefix}.memoryMiB: ${spec.memoryMiB} is below the ${MIN_VM_MEMORY_MIB} MiB the guest needs`);
    const w = spec.workload;
    const dirtyMiB = w && w.dirtyRateMiBps > 0 ? Math.ceil(w.workingSetMiB) : 0;
    // The dirtier's buffer lives in guest tmpfs: past 1/8 of RAM a small guest runs out of memory.
    if (dirtyMiB > Math.floor(spec.memoryMiB / 8))
      throw invalidInput(
        `${prefix}.workload.workingSetMiB`,
        `${prefix}.workload.workingSetMiB: at most 1/8 of memoryMiB (${Math.floor(spec.memoryMiB / 8)}) for a qemu guest`,
      );
    return { memoryMiB: spec.memoryMiB, vcpus: spec.vcpus, dirtyMiB, dirtyRateMiBps: dirtyMiB > 0 ? Math.ceil(w!.dirtyRateMiBps) : 0 };
  }

  private checkSameJob(a: StartMigrationInput, b: StartMigrationInput): void {
    if (a.vmId !== b.vmId || !sameUrl(a.target.agentUrl, b.target.agentUrl) || a.target.incarnationId !== b.target.incarnationId)
      throw conflict('JOB_CONFLICT', 'jobId', `migration ${a.jobId} exists for VM ${a.vmId} to ${a.target.agentUrl}`);
  }

  private async stopMigrationOf(vm: QemuVm): Promise<void> {
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

  private assertOpen(): void {
    if (this.closed) throw new AgentFailure(503, 'AGENT_UNAVAILABLE', 'the agent is stopping');
  }

  private incomingView(r: Incoming): IncomingView {
    return {
      jobId: r.jobId,
      vmId: r.vmId,
      incarnationId: r.incarnationId,
      serverId: this.opts.serverId,
      bootId: this.opts.bootId,
      state: r.state,
    };
  }

  private viewOf(vm: QemuVm): VmView {
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
          : err.field;
  return new AgentFailure(err.status, err.code, `target refused the VM: ${err.message}`, field);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AcceptIncomingBody, CommitIncomingBody, GuestOp, GuestOpResult, IncomingView, StartMigrationInput, VmSpec, VmView } from '../agent-api';
import type { ComputeBackend } from '../backend';
import { BackendBase } from '../backend-base';
import type { BackendBaseOptions } from '../backend-contract';
import { AgentFailure, conflict, notFound } from '../errors';
import type { DiskKind } from '../../common/vm-spec';
import { measureDirtyRate, type DirtyRateResult } from './dirty-rate';
import { createTap, deleteTap, probeGuest } from './guest-nic';
import { type Incoming, recoverIncoming, startListening, stopNbd } from './incoming';
import { attachDisks, machineFor, type MachineOptions, wipeDisks } from './machine';
import { wipeDiskFile } from './disks';
import { QemuMigration, type QemuMigrationHost, type QemuMigrationSettings } from './migration';
import { featureCapabilities, featureParameters, moveFeatures } from './move-features';
import { describeExit, QemuProcess, type MachineSpec } from './qemu-process';
import { QemuVm } from './qemu-vm';
import type { QemuTools } from './tools';

export interface QemuBackendOptions extends BackendBaseOptions, MachineOptions {
  tools: QemuTools;
  /** This agent's own folder (QMP sockets, serial logs); created, and removed when the agent stops. */
  stateDir: string;
  /**
   * Shared by every qemu agent on this machine: destinations listen on UNIX sockets here, at a path both ends derive
   * from the target's boot id and the job id (the agent API has no field to pass a listen address).
   */
  migrationDir: string;
  /**
   * Where destinations listen for migrations over TCP (this server's fabric address). Unset: UNIX sockets in
   * `migrationDir`, which only agents on one host share.
   */
  migrationHost?: string;
  /** The fleet's server ids: an incoming migration from any other server is refused. Unset: any source. */
  peers?: string[];
  /** The NIC's bandwidth B, bytes/s (the fleet file's bits/s ÷ 8). */
  nicBytesPerSec: number;
}

/** How long an `increment` waits for the guest to print its next counter (it prints every 0.5 s). */
const INCREMENT_WAIT_MS = 5_000;
const MAX_GUEST_OP_WAIT_MS = 8_000;
const GUEST_POLL_MS = 25;
const STOP_GRACE_MS = 2_000;
/** A destination nobody has started sending to after this long is stopped and its reservation freed. */
const IDLE_DESTINATION_MS = 60_000;
/** How long a VM that migrated in may take to answer on its NIC here before the commit is answered "not ready". */
const GUEST_PROBE_MS = 1_500;

const vmFailed = (vm: QemuVm) => new AgentFailure(409, 'VM_FAILED', `VM ${vm.vmId} has failed: ${vm.failure?.message ?? 'unknown'}`, 'vmId');

/**
 * The `qemu` backend: every VM is a QEMU process (TCG) on this machine, driven over QMP; migrations are QEMU live
 * migrations between two agents' processes. Guest operations read the guest's counter from its serial console.
 * Every process it starts is tracked and killed when the agent stops. The bookkeeping it shares with the sim backend
 * is in BackendBase.
 */
export class QemuBackend extends BackendBase<QemuVm, QemuMigration, Incoming> implements ComputeBackend, QemuMigrationHost {
  readonly kind = 'qemu' as const;
  readonly settings: QemuMigrationSettings;
  /** Every QEMU process started and not yet reaped: what `close()` kills. */
  private readonly procs = new Set<QemuProcess>();
  private seq = 0;
  /** The last measured single-stream throughput (see measureLink). */
  private streamMeasured: { bytesPerSec: number; sampleMs: number } | null = null;
  /** Bytes of local disks destroyed since the agent started (what `/v1/info` reports). */
  private wipedBytes = 0;
  /** Local disk files a wipe failed on: file → its incarnation and why (retried at the incarnation's teardown). */
  private readonly unwiped = new Map<string, { incarnationId: string; error: string }>();
  /** Which server each incoming migration comes from (the identity its TLS client certificate must carry). */
  private readonly incomingSource = new Map<string, string>();

  constructor(protected override readonly opts: QemuBackendOptions) {
    super(opts);
    this.settings = opts.settings;
    fs.mkdirSync(opts.stateDir, { recursive: true });
    fs.mkdirSync(opts.migrationDir, { recursive: true });
    fs.mkdirSync(opts.storageDir, { recursive: true, mode: 0o700 });
    fs.chmodSync(opts.storageDir, 0o700);
    this.logger.info({ qemu: opts.tools.qemuVersion, stateDir: opts.stateDir }, 'qemu backend ready');
  }

  // ---- VMs ---------------------------------------------------------------------------------------------------

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
      this.assertOpen();
      const vm = this.vmHere(vmId);
      this.checkUsable(vm);
      const counter = vm.counter();
      if (op.kind === 'read' && vm.state !== 'paused-for-switchover') return { vmId, counter, servedBy: this.opts.serverId };
      if (op.kind === 'increment') {
        floor ??= counter;
        if (counter > floor) return { vmId, counter, servedBy: this.opts.serverId };
        if (Date.now() - started > INCREMENT_WAIT_MS && vm.state !== 'paused-for-switchover')
          throw new AgentFailure(503, 'GUEST_UNRESPONSIVE', `VM ${vmId}'s guest printed no new counter within ${INCREMENT_WAIT_MS} ms`);
      }
      await sleep(GUEST_POLL_MS);
    }
  }

  /**
   * The VM's dirty rate measured by QEMU (`calc-dirty-rate`, page sampling; see dirty-rate.ts), for the control plane
   * to decide a move's settings from. One measurement per VM at a time (QEMU runs one): a second caller waits its turn.
   */
  async measureDirtyRate(vmId: string, sampleMs: number): Promise<DirtyRateResult & { vmId: string }> {
    this.assertOpen();
    const vm = this.vmHere(vmId);
    this.checkUsable(vm);
    const run = vm.measuring.then(async () => measureDirtyRate(await vm.proc.qmp(), sampleMs));
    vm.measuring = run.catch(() => undefined);
    const r = await run;
    this.logger.info({ vmId, dirtyRateBps: Math.round(r.dirtyRateBps), windowsBps: r.windowsBps, windowMs: r.windowMs }, 'dirty rate measured');
    return { vmId, ...r };
  }

  /**
   * One migration stream's throughput on this server's link: QEMU's measured ram.mbps (median over the pre-copy) of
   * the last completed single-channel, uncapped move from here (`method: migration`); before any, the NIC's own figure
   * (`method: nic`: on the testbed's shaped links one stream was measured at 94–98 % of it).
   */
  measureLink(_sampleMs: number): Promise<{ serverId: string; nicBytesPerSec: number; streamBytesPerSec: number; sampleMs: number; method: string }> {
    const nic = this.opts.nicBytesPerSec;
    const m = this.streamMeasured;
    return Promise.resolve({
      serverId: this.opts.serverId,
      nicBytesPerSec: nic,
      streamBytesPerSec: m ? Math.min(nic, m.bytesPerSec) : nic,
      sampleMs: m ? m.sampleMs : 0,
      method: m ? 'migration' : 'nic',
    });
  }

  recordStreamThroughput(bytesPerSec: number, sampleMs: number): void {
    this.streamMeasured = { bytesPerSec, sampleMs };
    this.logger.info({ streamBytesPerSec: Math.round(bytesPerSec) }, 'one stream measured on this link');
  }

  // ---- inbound migrations ------------------------------------------------------------------------------------

  async commitIncoming(jobId: string, input: CommitIncomingBody): Promise<VmView> {
    const r = this.incomingFor(jobId, input.vmId);
    if (r.state === 'reserved') {
      if (r.ended) throw conflict('INCOMING_FAILED', 'jobId', `the destination for ${jobId} is gone: ${r.ended}`);
      // QEMU resumes the destination a few ms after the source reports completed; the source retries.
      if (!r.resumed) throw new AgentFailure(503, 'INCOMING_NOT_READY', `the destination for ${jobId} has not resumed yet`, 'jobId');
      this.promote(r, input.counter);
    }
    const vm = this.vms.get(r.vmId);
    if (!vm) throw conflict('INCOMING_COMMITTED', 'jobId', `incoming migration ${jobId} was committed; the VM is no longer here`);
    vm.handedOverCounter ??= input.counter; // promoted on RESUME, before the source's commit arrived
    if (vm.machine.nic && !vm.answered) {
      // The move is done when the VM answers here on its NIC (QEMU's self-announce has moved its MAC), not before.
      try {
        // The guest's kernel completing a TCP handshake on its service port here: its NIC is live on this server's
        // network (the guest's own answer would add its fork of a handler, seconds under TCG on a loaded host).
        await (vm.answering ??= probeGuest(vm.machine.nic.ip, GUEST_PROBE_MS, { until: 'handshake' }));
        vm.answered = true;
        this.logger.info({ jobId, vmId: vm.vmId, ip: vm.machine.nic.ip }, 'VM answers on its NIC here (TCP handshake)');
      } catch (err) {
        vm.answering = null; // the source's next commit probes again
        throw new AgentFailure(503, 'GUEST_UNRESPONSIVE', `VM ${vm.vmId} does not answer on ${vm.machine.nic.ip} yet: ${(err as Error).message}`, 'vmId');
      }
    }
    return this.viewOf(vm);
  }

  // ---- lifecycle ---------------------------------------------------------------------------------------------

  /** Kills every QEMU process this agent started and waits until each has been reaped. */
  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.jobs.values()) job.halt();
    for (const vm of this.vms.values()) vm.stopping = true;
    const procs = [...this.procs];
    await Promise.all(procs.map((p) => p.stop(0)));
    for (const r of this.incoming.values()) fs.rmSync(r.socketPath, { force: true });
    for (const m of [...this.vms.values(), ...this.incoming.values()]) {
      if (m.machine.nic) deleteTap(m.machine.nic.tap);
      // Its VMs die with the agent: their disks go with them, wiped.
      this.wipe(m.machine, m.incarnationId, 'agent stopping');
    }
    fs.rmSync(this.opts.stateDir, { recursive: true, force: true });
    this.logger.info({ killed: procs.length }, 'qemu backend closed');
  }

  // ---- QemuMigrationHost -------------------------------------------------------------------------------------

  get serverId(): string {
    return this.opts.serverId;
  }

  migrationSocketPath(targetBootId: string, jobId: string): string {
    const h = createHash('sha256').update(`${targetBootId}\0${jobId}`).digest('hex').slice(0, 24);
    return path.join(this.opts.migrationDir, `${h}.sock`);
  }

  pollIncoming(job: StartMigrationInput, vm: QemuVm): Promise<IncomingView> {
    return this.peer.accept(job.target.agentUrl, job.jobId, {
      vmId: vm.vmId,
      incarnationId: job.target.incarnationId,
      spec: vm.spec,
      sourceServerId: this.opts.serverId,
      ...(job.channels ? { channels: job.channels } : {}),
      ...(job.postCopy ? { postCopy: true } : {}),
    });
  }

  /**
   * A source asking again for a VM that already runs here in post-copy wants to recover a broken stream: the
   * destination is paused (`migrate-pause`, if QEMU has not noticed the break itself) and listens again
   * (`migrate-recover`) on a fresh port; the new address is answered from then on (the source waits for it to change).
   */
  override acceptIncoming(jobId: string, input: AcceptIncomingBody): IncomingView {
    const r = this.incoming.get(jobId);
    // A destination that could not start or listen is reported to the source now, not left for it to wait out.
    if (r && r.vmId === input.vmId && r.state === 'reserved' && r.ended && !r.resumed)
      throw conflict('INCOMING_FAILED', 'jobId', `the destination for ${jobId} failed: ${r.ended}`);
    if (r && r.vmId === input.vmId && r.features.postCopy && this.incomingCommitted(r) && !r.recovering)
      void recoverIncoming(r, this.opts.migrationHost, this.logger);
    return super.acceptIncoming(jobId, input);
  }

  linkSlowdown(): number {
    return this.faultState.linkSlowdown;
  }

  // ---- BackendBase -------------------------------------------------------------------------------------------

  /** Refuses new work once stopping: every QEMU process started must be one `close()` kills. */
  protected override admit(): void {
    this.assertOpen();
  }

  /** Refused before any process starts: a spec QEMU cannot honour here (checked before capacity). */
  protected override checkSpec(spec: VmSpec): void {
    machineFor(this.opts, 'check', spec, 'spec');
  }

  /** The local disk files here (their allocated bytes: a sparse disk holds what was written) and what was wiped. */
  override localStorage(): { diskBytes: number; wipedBytes: number } {
    let diskBytes = 0;
    for (const m of [...this.vms.values(), ...this.incoming.values()])
      for (const d of m.machine.disks ?? []) {
        if (d.kind !== 'local') continue;
        try {
          diskBytes += fs.statSync(d.path).blocks * 512;
        } catch {
          // wiped meanwhile
        }
      }
    return { diskBytes, wipedBytes: this.wipedBytes };
  }

  /** Network disks only with the fleet's storage service configured (fleet file `storage.nbd`). */
  override diskKinds(): readonly DiskKind[] {
    return this.opts.networkStorage ? ['local', 'network'] : ['local'];
  }

  /** Only the fleet's servers may send a VM here (the TLS layer checks the same identity again). */
  protected override checkSource(input: AcceptIncomingBody): void {
    if (this.opts.peers && !this.opts.peers.includes(input.sourceServerId))
      throw new AgentFailure(403, 'SOURCE_NOT_IN_FLEET', `sourceServerId: ${input.sourceServerId} is not a server of this fleet`, 'sourceServerId');
  }

  protected override incomingExtras(r: Incoming): Partial<IncomingView> {
    return r.uri ? { migrationUri: r.uri, tls: r.tls, ...(r.nbdAddress ? { nbdAddress: r.nbdAddress } : {}), setupMs: { ...r.setupMs } } : {};
  }

  protected override checkUsable(vm: QemuVm): void {
    if (vm.failure) throw vmFailed(vm);
  }

  protected override newVm(input: { vmId: string; incarnationId: string; spec: VmSpec }): QemuVm {
    const machine = machineFor(this.opts, input.vmId, input.spec, 'spec');
    attachDisks(this.opts, machine, input.vmId, input.spec, null);
    const proc = this.spawn(`vm-${++this.seq}`, input.vmId, machine, false);
    return new QemuVm(input.vmId, input.incarnationId, input.spec, machine, proc);
  }

  protected override describeVm(vm: QemuVm): object {
    return { pid: vm.proc.pid, machine: vm.machine };
  }

  /** Registers a VM and watches its process: an exit nobody asked for makes the VM failed. */
  protected override addVm(vm: QemuVm): void {
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

  protected override async removeVm(vm: QemuVm): Promise<void> {
    vm.stopping = true;
    this.forgetVm(vm);
    await vm.proc.stop(STOP_GRACE_MS);
    if (vm.machine.nic) deleteTap(vm.machine.nic.tap);
    this.wipe(vm.machine, vm.incarnationId, 'VM removed');
  }

  protected override newJob(vm: QemuVm, input: StartMigrationInput, failAt: number | null): QemuMigration {
    return new QemuMigration(this, vm, input, failAt);
  }

  protected override beginJob(job: QemuMigration, _failAt: number | null, accepted: IncomingView): void {
    job.begin(accepted);
  }

  /** The target has started a destination for us: have it dropped rather than left waiting. */
  protected override async abandonAccepted(input: StartMigrationInput): Promise<void> {
    await this.peer.release(input.target.agentUrl, input.jobId).catch(() => undefined);
  }

  protected override noSuchJob(jobId: string): AgentFailure {
    return notFound('jobId', `no migration ${jobId} here`);
  }

  /** Starts the destination QEMU (`-incoming defer`); `incomingAccepted` has it listen for the source. */
  protected override newIncoming(jobId: string, input: AcceptIncomingBody): Incoming {
    const acceptedAt = Date.now();
    const machine = machineFor(this.opts, input.vmId, input.spec, 'spec');
    // Empty disks of the same sizes: the source mirrors into them over NBD.
    attachDisks(this.opts, machine, input.vmId, input.spec, jobId);
    const socketPath = this.migrationSocketPath(this.opts.bootId, jobId);
    fs.rmSync(socketPath, { force: true });
    const proc = this.spawn(`in-${++this.seq}`, input.vmId, machine, true);
    return {
      jobId,
      vmId: input.vmId,
      incarnationId: input.incarnationId,
      spec: input.spec,
      machine,
      proc,
      socketPath,
      uri: null,
      tls: false,
      state: 'reserved',
      resumed: false,
      ended: null,
      nbdAddress: null,
      nbdStarted: false,
      features: moveFeatures(input, machine),
      recovering: false,
      acceptedAt,
      setupMs: {},
    };
  }

  protected override incomingAccepted(r: Incoming, input: AcceptIncomingBody): void {
    this.incomingSource.set(r.jobId, input.sourceServerId);
    void this.listen(r);
    this.logger.info({ jobId: r.jobId, vmId: r.vmId, from: input.sourceServerId, pid: r.proc.pid }, 'incoming VM accepted; destination starting');
  }

  /** Once QEMU has resumed the guest here, it runs here whatever the source says. */
  protected override incomingCommitted(r: Incoming): boolean {
    return r.state === 'committed' || r.resumed;
  }

  protected override async dropIncoming(r: Incoming): Promise<void> {
    if (!this.forgetIncoming(r)) return;
    this.incomingSource.delete(r.jobId);
    r.ended ??= 'released';
    await stopNbd(r, this.logger);
    await r.proc.stop(0);
    fs.rmSync(r.socketPath, { force: true });
    fs.rmSync(`${r.socketPath}.nbd`, { force: true });
    if (r.machine.nic) deleteTap(r.machine.nic.tap);
    // A partial copy of the tenant's disk: wiped, like any other.
    this.wipe(r.machine, r.incarnationId, 'incoming migration dropped');
    this.logger.info({ jobId: r.jobId, vmId: r.vmId, exit: r.proc.exitInfo }, 'incoming migration dropped; destination reaped');
  }

  protected override applyLinkSlowdown(): void {
    for (const job of this.jobs.values()) void job.updateBandwidth();
  }

  // ---- internals ---------------------------------------------------------------------------------------------

  /** The destination: QMP up, events on, then migrate-incoming on the UNIX socket the source will find. */
  private async listen(r: Incoming): Promise<void> {
    const log = this.logger.child({ jobId: r.jobId, vmId: r.vmId, pid: r.proc.pid });
    try {
      const qmp = await r.proc.qmp();
      const qmpAt = Date.now();
      r.setupMs.qemuStart = qmpAt - r.acceptedAt;
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
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }, ...featureCapabilities(r.features)] });
      const params = featureParameters(r.features);
      if (Object.keys(params).length) await qmp.execute('migrate-set-parameters', params);
      const uri = await startListening(qmp, r, this.opts, this.incomingSource.get(r.jobId)!);
      r.setupMs.listenSetup = Date.now() - qmpAt;
      r.uri = uri; // set last: the source reads the set-up times with the address
      log.info({ uri: r.uri, tls: r.tls }, 'destination listening');
      // A source that never connects (it died, or gave up before sending) must not leave a QEMU waiting here forever.
      setTimeout(() => {
        if (connected || r.state !== 'reserved' || this.incoming.get(r.jobId) !== r) return;
        log.warn({ waitedMs: IDLE_DESTINATION_MS }, 'no source connected to the destination; dropping it');
        void this.dropIncoming(r);
      }, IDLE_DESTINATION_MS).unref();
    } catch (err) {
      if (!r.ended && r.proc.running) {
        const why = err instanceof Error ? err.message : String(err);
        log.warn({ err: why }, 'destination could not listen; stopping it');
        r.ended = `it could not listen: ${why}`;
        await r.proc.stop(0);
      }
    }
  }
  /** The incoming becomes a VM here. */
  private promote(r: Incoming, handedOverCounter: number | null): void {
    if (r.state === 'committed') return;
    this.commitReservation(r);
    fs.rmSync(r.socketPath, { force: true });
    // The mirror completed before the switchover: a writable export of the disk the guest now runs on must not stay.
    void stopNbd(r, this.logger).finally(() => fs.rmSync(`${r.socketPath}.nbd`, { force: true }));
    const vm = new QemuVm(r.vmId, r.incarnationId, r.spec, r.machine, r.proc, handedOverCounter);
    if (r.proc.exitInfo) vm.failure = { code: 'VmFailed', message: `QEMU exited (${describeExit(r.proc.exitInfo)})` };
    // The guest runs here from now: its NIC is probed at once, not when the source's commit arrives (that comes after
    // the source has seen `completed` and let go of the mirror), so the commit mostly finds the answer there.
    else if (vm.machine.nic) vm.answering = probeGuest(vm.machine.nic.ip, GUEST_PROBE_MS, { until: 'handshake' });
    vm.answering?.catch(() => undefined); // a failure is reported by the commit that awaits it
    this.place(vm);
    this.logger.info({ jobId: r.jobId, vmId: vm.vmId, pid: r.proc.pid, handedOverCounter }, 'incoming VM running here');
  }

  /** Wipes the machine's local disks, counting the bytes for `/v1/info`; a file that resists is kept for the teardown. */
  private wipe(machine: MachineSpec, incarnationId: string, why: string): void {
    this.wipedBytes += wipeDisks(machine, why, this.logger, (file, err) => this.unwiped.set(file, { incarnationId, error: err.message }));
  }

  /**
   * The incarnation's disk files that could not be wiped when their VM went are tried again; while any remains the
   * teardown fails, so the scheduler keeps the server out of the pool and retries (a server is never handed to the
   * next tenant with this one's data on it).
   */
  protected override wipeIncarnationDisks(incarnationId: string): void {
    const left: string[] = [];
    for (const [file, u] of [...this.unwiped]) {
      if (u.incarnationId !== incarnationId) continue;
      try {
        this.wipedBytes += wipeDiskFile(file);
        this.unwiped.delete(file);
        this.logger.info({ file, incarnationId }, 'local disk wiped on retry');
      } catch (err) {
        left.push(`${path.basename(file)}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (left.length)
      throw new AgentFailure(
        500,
        'WIPE_FAILED',
        `incarnation ${incarnationId}: ${left.length} local disk(s) could not be wiped (${left.join('; ')})`,
        'incarnationId',
      );
  }

  private spawn(dirName: string, vmId: string, machine: MachineSpec, incoming: boolean): QemuProcess {
    if (machine.nic) createTap(machine.nic.tap, this.opts.tenantBridge!, this.opts.qemuUser);
    const proc = new QemuProcess({
      user: this.opts.qemuUser,
      ...(this.settings.tlsDir ? { tlsDir: this.settings.tlsDir } : {}),
      tools: this.opts.tools,
      dir: path.join(this.opts.stateDir, dirName),
      machine,
      incoming,
      logger: this.logger,
      name: vmId,
      // A destination on a loaded server may take long to come up: as long as a source waits for it to listen.
      ...(incoming ? { qmpConnectTimeoutMs: this.settings.listenWaitMs } : {}),
    });
    this.procs.add(proc);
    void proc.exited.then((exit) => {
      this.procs.delete(proc);
      this.logger.debug({ pid: proc.pid, vmId, incoming, exit }, 'QEMU process reaped');
      for (const r of this.incoming.values()) if (r.proc === proc && r.state === 'reserved') r.ended ??= `QEMU exited (${describeExit(exit)})`;
    });
    return proc;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

import { DISK_KINDS, localDiskGiB, localDisks, type DiskKind } from '../../common/vm-spec';
import type {
  AcceptIncomingBody,
  CommitIncomingBody,
  DirtyRateMeasurement,
  GuestOp,
  GuestOpResult,
  IncomingView,
  LinkMeasurement,
  StartMigrationInput,
  VmSpec,
  VmView,
} from '../agent-api';
import type { ComputeBackend } from '../backend';
import { BackendBase } from '../backend-base';
import type { BackendBaseOptions, BackendIncoming } from '../backend-contract';
import { conflict } from '../errors';
import { mibToBytes } from '../units';
import { SimClock } from './clock';
import { SimLink } from './link';
import type { DirtyModel } from './dirty-model';
import { LocalStore } from './local-store';
import { measuredDirtyRateBps, measuredStreamBps } from './measure';
import { SimMigration, type MigrationHost } from './migration';
import { DEFAULT_MAX_ROUNDS } from './precopy';
import { seededRandom, seedOf } from './rng';
import { SimVm } from './sim-vm';

/** The vCPU time one guest operation needs, simulated ms: what a throttled guest stretches (`SimVm.throttleDelayMs`). */
export const GUEST_OP_CPU_MS = 1;

export interface SimBackendOptions extends BackendBaseOptions {
  /** NIC bandwidth B in bytes/s (already converted from the fleet's bits/s). */
  nicBytesPerSec: number;
  /** Per-stream cap S as a fraction of B. */
  streamCapFraction: number;
  timeScale: number;
  /** The server reaches its zone's storage service: network disks are served (else local ones only). */
  networkStorage?: boolean;
  /** Seed of the measurements' noise (measure.ts). Default: from the server id, so every run of a test repeats. */
  measurementSeed?: number;
  /**
   * Simulated ms each outbound move spends before its first byte, off the link (calibration.ts MOVE_SETUP_MS is the
   * testbed's). Default 0: the functional tests' timings; benchmark 1 charges the calibrated figure.
   */
  moveSetupMs?: number;
}

/** A VM's dirtying as the sim models it (dirty-model.ts), from its spec's workload: the truth the measurements sample. */
export function dirtyModelOf(spec: VmSpec): DirtyModel {
  const w = spec.workload;
  const hot = mibToBytes(w?.workingSetMiB ?? 0);
  return {
    hotBytes: hot,
    hotRateBps: mibToBytes(w?.dirtyRateMiBps ?? 0),
    coldBytes: Math.max(0, mibToBytes(spec.memoryMiB) - hot),
    coldRateBps: mibToBytes(w?.coldDirtyRateMiBps ?? 0),
  };
}

/**
 * The `sim` backend: VMs are in-memory objects whose guest state is a counter; migrations follow the pre-copy model
 * (precopy.ts) on a fluid model of the server's NIC (link.ts). Everything is lost when the agent stops. The
 * bookkeeping it shares with the qemu backend is in BackendBase.
 */
export class SimBackend extends BackendBase<SimVm, SimMigration, BackendIncoming> implements ComputeBackend, MigrationHost {
  readonly kind = 'sim' as const;
  readonly clock: SimClock;
  readonly link: SimLink;
  /** The tenants' local disks on this server (their sizes: a disk is as big as the spec says, written or not). */
  private readonly store = new LocalStore();
  private readonly noise: () => number;
  /** The link's measurement, taken once on the first request (before any move: an idle link). */
  private linkMeasured: Promise<LinkMeasurement> | undefined;

  constructor(protected override readonly opts: SimBackendOptions) {
    super(opts);
    this.clock = new SimClock(opts.timeScale);
    this.link = new SimLink(opts.nicBytesPerSec, this.clock, (err) => this.logger.error({ err }, 'sim link failed to advance'));
    this.noise = seededRandom(opts.measurementSeed ?? seedOf(opts.serverId));
  }

  // ---- measurements ------------------------------------------------------------------------------------------

  /** The model's distinct dirtying over `sampleMs` of simulated time (throttle included), with seeded noise. */
  async measureDirtyRate(vmId: string, sampleMs: number): Promise<DirtyRateMeasurement> {
    this.assertOpen();
    const vm = this.vmHere(vmId);
    const throttle = vm.throttlePct;
    await this.clock.sleepUntil(this.clock.now() + sampleMs);
    this.assertOpen();
    const dirtyRateBps = measuredDirtyRateBps(dirtyModelOf(vm.spec), sampleMs, throttle, this.noise);
    return { vmId, dirtyRateBps, sampleMs, method: 'sim' };
  }

  /** One stream's cap S on an idle link, with noise; measured once (the first call), then answered as measured. */
  measureLink(sampleMs: number): Promise<LinkMeasurement> {
    this.assertOpen();
    this.linkMeasured ??= (async () => {
      await this.clock.sleepUntil(this.clock.now() + sampleMs);
      const stream = measuredStreamBps(this.opts.streamCapFraction * this.opts.nicBytesPerSec, this.opts.nicBytesPerSec, this.noise);
      return { serverId: this.opts.serverId, nicBytesPerSec: this.opts.nicBytesPerSec, streamBytesPerSec: stream, sampleMs, method: 'sim' };
    })();
    return this.linkMeasured;
  }

  // ---- VMs ---------------------------------------------------------------------------------------------------

  async guestOp(vmId: string, op: GuestOp): Promise<GuestOpResult> {
    for (;;) {
      this.assertOpen();
      const vm = this.vmHere(vmId);
      if (vm.state === 'paused-for-switchover') {
        // Stop-and-copy: the guest is frozen. Wait, then look again: it either resumed here or moved away.
        await vm.whilePaused();
        continue;
      }
      // A throttled guest (auto-converge) serves its operations more slowly.
      const delay = vm.throttleDelayMs(GUEST_OP_CPU_MS);
      if (delay > 0) {
        await this.clock.sleepUntil(this.clock.now() + Math.min(delay, 100 * GUEST_OP_CPU_MS));
        // Paused or moved away meanwhile: look again (the loop waits out a pause, or answers VM_MOVED).
        if ((vm.state as string) === 'paused-for-switchover' || this.vms.get(vmId) !== vm) continue;
      }
      if (op.kind === 'increment') vm.counter += 1;
      return { vmId, counter: vm.counter, servedBy: this.opts.serverId };
    }
  }

  // ---- inbound migrations ------------------------------------------------------------------------------------

  commitIncoming(jobId: string, input: CommitIncomingBody): VmView {
    const r = this.incomingFor(jobId, input.vmId);
    if (r.state === 'committed') {
      // A replay (the first reply was lost): never reset the counter of a VM that has run since.
      const vm = this.vms.get(r.vmId);
      if (vm) return this.viewOf(vm);
      throw conflict('INCOMING_COMMITTED', 'jobId', `incoming migration ${jobId} was already committed`);
    }
    this.commitReservation(r);
    const vm = new SimVm(r.vmId, r.incarnationId, r.spec, input.counter);
    this.place(vm);
    this.logger.info({ jobId, vmId: vm.vmId, counter: vm.counter }, 'incoming VM started');
    return this.viewOf(vm);
  }

  // ---- lifecycle ---------------------------------------------------------------------------------------------

  async close(): Promise<void> {
    this.closed = true;
    this.link.close();
    for (const job of this.jobs.values()) job.halt();
    // Parked guest operations wake, see `closed` and get a 503 instead of hanging the server's shutdown.
    for (const vm of this.vms.values()) vm.unpark(vm.state);
  }

  /** Local disks (a size, copied when the VM moves) and, with the storage service, network ones (a name, nothing to copy). */
  override diskKinds(): readonly DiskKind[] {
    return this.opts.networkStorage === false ? ['local'] : DISK_KINDS;
  }

  // ---- BackendBase -------------------------------------------------------------------------------------------

  protected override newVm(input: { vmId: string; incarnationId: string; spec: VmSpec }): SimVm {
    this.store.hold(input.incarnationId, input.vmId, localDiskGiB(input.spec) * 2 ** 30);
    return new SimVm(input.vmId, input.incarnationId, input.spec);
  }

  protected override wipeVmDisks(vm: SimVm): void {
    this.store.wipe(vm.incarnationId, vm.vmId);
  }

  protected override wipeIncarnationDisks(incarnationId: string): void {
    this.store.wipeIncarnation(incarnationId);
  }

  override localStorage(): { diskBytes: number; wipedBytes: number } {
    return this.store.usage();
  }

  protected override removeVm(vm: SimVm): void {
    this.forgetVm(vm);
    vm.unpark('running');
  }

  protected override newJob(vm: SimVm, input: StartMigrationInput, failAt: number | null): SimMigration {
    const localGiB = localDiskGiB(vm.spec);
    return new SimMigration(this, vm, input, {
      hasLocalDisk: localDisks(vm.spec).length > 0,
      // The data written to the local disks (at most their size): what the mirror copies; zeros are skipped.
      diskBytes: Math.min(localGiB, vm.spec.workload?.diskUsedGiB ?? 0) * 2 ** 30,
      diskWriteBps: localGiB > 0 ? mibToBytes(vm.spec.workload?.diskWriteMiBps ?? 0) : 0,
      memoryBytes: mibToBytes(vm.spec.memoryMiB),
      dirtyRateBps: mibToBytes(vm.spec.workload?.dirtyRateMiBps ?? 0),
      workingSetBytes: mibToBytes(vm.spec.workload?.workingSetMiB ?? 0),
      coldDirtyRateBps: mibToBytes(vm.spec.workload?.coldDirtyRateMiBps ?? 0),
      maxDowntimeMs: input.maxDowntimeMs,
      autoConverge: input.autoConverge,
      maxRounds: input.maxRounds ?? DEFAULT_MAX_ROUNDS,
      // Each channel is capped at S (one stream's cap); a multifd move's k channels together at min(B, k·S).
      capBps: Math.min(
        this.opts.nicBytesPerSec,
        (input.channels ?? 1) * this.opts.streamCapFraction * this.opts.nicBytesPerSec,
        input.bandwidthCapBps ?? Infinity,
      ),
      failAtRound: failAt,
      postCopyOnGiveUp: input.postCopy === true,
      setupMs: this.opts.moveSetupMs ?? 0,
    });
  }

  protected override beginJob(job: SimMigration, failAt: number | null, _accepted: IncomingView): void {
    job.begin(failAt === 0);
  }

  protected override checkSource(input: AcceptIncomingBody): void {
    if (input.sourceServerId === this.opts.serverId)
      throw conflict('SAME_SERVER', 'sourceServerId', `source and target are the same server (${this.opts.serverId})`);
  }

  protected override newIncoming(jobId: string, input: AcceptIncomingBody): BackendIncoming {
    // The target creates the empty disks the source mirrors into as it accepts the VM.
    this.store.hold(input.incarnationId, input.vmId, localDiskGiB(input.spec) * 2 ** 30);
    return { jobId, vmId: input.vmId, incarnationId: input.incarnationId, spec: input.spec, state: 'reserved' };
  }

  protected override incomingAccepted(r: BackendIncoming, input: AcceptIncomingBody): void {
    this.logger.info({ jobId: r.jobId, vmId: r.vmId, incarnationId: r.incarnationId, from: input.sourceServerId }, 'incoming VM accepted');
  }

  protected override dropIncoming(r: BackendIncoming): void {
    // A copy that never became the VM (cancel, failure, give-up): its partial disks go with the reservation.
    if (this.forgetIncoming(r) && r.state === 'reserved') this.store.wipe(r.incarnationId, r.vmId);
  }

  protected override applyLinkSlowdown(slowdown: number): void {
    this.link.setSlowdown(slowdown);
  }
}

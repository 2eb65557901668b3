import type { Resources } from '../common/resources';
import type { DiskKind } from '../common/vm-spec';
import type {
  AcceptIncomingBody,
  BackendKind,
  CommitIncomingBody,
  DirtyRateMeasurement,
  Faults,
  FaultsState,
  GuestOp,
  GuestOpResult,
  IncarnationView,
  IncomingView,
  LinkMeasurement,
  MigrationJob,
  StartMigrationInput,
  VmSpec,
  VmView,
} from './agent-api';

/**
 * What the host agent's HTTP service needs from whatever actually runs VMs: the `sim` backend (compute/sim/) or,
 * later, a `qemu` backend driving QMP. Inputs arrive already validated by zod; expected refusals are thrown as
 * `AgentFailure` (compute/errors.ts) and become 4xx replies. The service owns HTTP, auth and fault routing only.
 */
export interface ComputeBackend {
  readonly kind: BackendKind;

  /** The disk kinds this backend runs VMs with; a spec with another kind is refused before anything starts. */
  diskKinds(): readonly DiskKind[];

  /** The tenants' local disks here: bytes held, and bytes wiped (deleted VMs, torn-down incarnations, dropped incoming copies). */
  localStorage(): { diskBytes: number; wipedBytes: number };

  /** Incarnation ids live on this server. */
  incarnationIds(): string[];

  // Incarnations: a slice of this server given to one dedicated host.
  prepareIncarnation(incarnationId: string, capacity: Resources): IncarnationView;
  getIncarnation(incarnationId: string): IncarnationView | null;
  /**
   * Deletes the incarnation's VMs (cancelling their migrations), drops incoming reservations for it and destroys every
   * local disk of the incarnation still on this server (those of VMs that moved away included). Idempotent.
   */
  teardownIncarnation(incarnationId: string): Promise<void>;

  // VMs.
  createVm(input: { vmId: string; incarnationId: string; spec: VmSpec }): VmView;
  /** A VM here; else `movedTo` if it migrated away (a tombstone); else null. */
  getVm(vmId: string): { vm: VmView } | { movedTo: string } | null;
  /** Cancels its migration first if one runs, and destroys its local disks here. Throws `VM_MOVED` for a VM that migrated away. */
  deleteVm(vmId: string): Promise<void>;
  /** Waits while the VM is paused for switchover; throws `VM_MOVED` if it has left. */
  guestOp(vmId: string, op: GuestOp): Promise<GuestOpResult>;

  // Measurements (agent-api.ts, "measurements"): what the control plane decides a move's settings from. Optional: a
  // backend without them answers 501 and the control plane falls back on the tenant's declared workload.
  /**
   * The VM's dirty rate over `sampleMs`: bytes/s of distinct memory dirtied. qemu: `calc-dirty-rate` (mode
   * page-sampling, calc-time in ms) over windows of ≤ 1 s, each followed by `query-dirty-rate` until `measured`, the
   * mean of their `dirty-rate` (MiB/s) × 2^20 (compute/qemu/dirty-rate.ts). Throws like `guestOp` for a VM not here.
   * Does not change the VM.
   */
  measureDirtyRate?(vmId: string, sampleMs: number): Promise<DirtyRateMeasurement>;
  /**
   * One migration stream's throughput on this server's link, measured once on an idle link and answered from then on
   * (qemu: a timed transfer to a peer, or the `ram.mbps` of the first single-channel move; the NIC's figure until then).
   */
  measureLink?(sampleMs: number): Promise<LinkMeasurement>;

  // Outbound migrations (this server is the source).
  startMigration(input: StartMigrationInput): Promise<MigrationJob>;
  getMigration(jobId: string): MigrationJob | null;
  /** Long-polls being held right now. */
  pollsWaiting(): number;
  /** Fault injection: the daemon restarts, the VMs keep running; migration jobs are aborted and forgotten. */
  restartDaemon(): Promise<void>;
  /** The job as soon as it leaves `running`, or as it is after `waitMs` (the long-poll behind `GET migration?waitMs`). */
  waitForMigration(jobId: string, waitMs: number): Promise<MigrationJob | null>;
  cancelMigration(jobId: string): Promise<MigrationJob>;

  // Inbound migrations (this server is the target), called by the source's agent.
  acceptIncoming(jobId: string, input: AcceptIncomingBody): IncomingView;
  /** May wait (qemu: until the VM answers on its NIC here). */
  commitIncoming(jobId: string, input: CommitIncomingBody): VmView | Promise<VmView>;
  releaseIncoming(jobId: string): void;

  setFaults(faults: Faults): FaultsState;
  faults(): FaultsState;

  /** Stops timers and in-flight work; waiting guest operations are answered 503. */
  close(): Promise<void>;
}

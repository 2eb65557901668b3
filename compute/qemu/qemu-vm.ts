import type { VmSpec, VmState, VmView } from '../agent-api';
import type { MachineSpec, QemuProcess } from './qemu-process';

/**
 * A VM run by the `qemu` backend: one QEMU process. Its guest state lives in the guest; the counter the API shows is
 * the last one the guest printed on its serial console.
 */
export class QemuVm {
  state: VmState = 'running';
  /** The outbound migration that owns this VM now, from the moment it is requested. */
  migrationJobId: string | null = null;
  /** Set when QEMU exited without being asked to: the VM is reported failed from then on. */
  failure: { code: string; message: string } | null = null;
  /** The agent stops this process on purpose (delete, after migrating away, shutdown): its exit is not a failure. */
  stopping = false;
  /** A VM that migrated in has answered on its NIC here (checked once, before the move is confirmed). */
  answered = false;
  /** The probe of its NIC under way (started as QEMU resumes it here, so the source's commit finds it running). */
  answering: Promise<number | null> | null = null;
  /** The dirty-rate measurement running on this VM, if any (QEMU runs one at a time). */
  measuring: Promise<unknown> = Promise.resolve();

  constructor(
    readonly vmId: string,
    readonly incarnationId: string,
    readonly spec: VmSpec,
    readonly machine: MachineSpec,
    readonly proc: QemuProcess,
    /**
     * For a VM that arrived by migration: the source's last counter, shown until this process's serial log has a
     * line of its own (the guest prints every 0.5 s, and its next line is this + 1).
     */
    public handedOverCounter: number | null = null,
  ) {}

  counter(): number {
    return this.proc.readCounter() ?? this.handedOverCounter ?? 0;
  }

  view(serverId: string): VmView {
    return { vmId: this.vmId, incarnationId: this.incarnationId, serverId, spec: this.spec, state: this.state, counter: this.counter() };
  }
}

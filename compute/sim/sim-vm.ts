import type { VmSpec, VmState, VmView } from '../agent-api';

/**
 * A simulated VM. Its guest state is one counter, kept "in its memory": it travels with the VM when it migrates.
 * While paused for switchover, guest operations park on `whilePaused()` and resume in arrival order.
 */
export class SimVm {
  state: VmState = 'running';
  /** The outbound migration that owns this VM now, from the moment it is requested. */
  migrationJobId: string | null = null;
  private parked: Array<() => void> = [];

  constructor(
    readonly vmId: string,
    readonly incarnationId: string,
    readonly spec: VmSpec,
    public counter = 0,
  ) {}

  pause(): void {
    this.state = 'paused-for-switchover';
  }

  /** Leaves the pause (switchover aborted) or the VM is gone; parked operations look again, oldest first. */
  unpark(state: VmState = 'running'): void {
    this.state = state;
    const parked = this.parked;
    this.parked = [];
    for (const wake of parked) wake();
  }

  /** Resolves when the current pause ends (at once if not paused). */
  whilePaused(): Promise<void> {
    if (this.state !== 'paused-for-switchover') return Promise.resolve();
    return new Promise((resolve) => this.parked.push(resolve));
  }

  view(serverId: string): VmView {
    return { vmId: this.vmId, incarnationId: this.incarnationId, serverId, spec: this.spec, state: this.state, counter: this.counter };
  }
}

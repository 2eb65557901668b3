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
  /** While a move throttles the guest (auto-converge): where its current throttle is read. */
  throttledBy: (() => number) | null = null;

  constructor(
    readonly vmId: string,
    readonly incarnationId: string,
    readonly spec: VmSpec,
    public counter = 0,
  ) {}

  /** Auto-converge's throttle on the guest now, %: the share of CPU time its vCPUs lose. */
  get throttlePct(): number {
    return this.throttledBy?.() ?? 0;
  }

  /**
   * How much longer one guest operation takes than unthrottled, simulated ms: an operation needing `cpuMs` of vCPU
   * time gets only (100 − throttle) % of it, so it takes cpuMs / (1 − throttle) — throttling costs the guest.
   */
  throttleDelayMs(cpuMs: number): number {
    const share = (100 - this.throttlePct) / 100;
    return share > 0 ? cpuMs / share - cpuMs : Infinity;
  }

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
    return {
      vmId: this.vmId,
      incarnationId: this.incarnationId,
      serverId,
      spec: this.spec,
      state: this.state,
      counter: this.counter,
      ...(this.throttlePct > 0 ? { throttlePct: this.throttlePct } : {}),
    };
  }
}

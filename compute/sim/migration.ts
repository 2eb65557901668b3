import type { Logger } from 'pino';
import type { StartMigrationInput } from '../agent-api';
import { AgentError } from '../agent-http';
import { MigrationJobBase, type JobHost, type JobProgress } from '../migration-job';
import type { PeerClient } from '../peer-client';
import type { SimClock } from './clock';
import type { SimLink } from './link';
import type { SimVm } from './sim-vm';
import { SimVmMove, type VmMoveParams } from './vm-move';

/** What a migration needs from the agent that runs it. */
export interface MigrationHost extends JobHost<SimVm> {
  readonly clock: SimClock;
  readonly link: SimLink;
  readonly peer: PeerClient;
  readonly logger: Logger;
}

/** How often, and how far apart (wall ms), the source retries handing the VM over when the target does not answer. */
const COMMIT_ATTEMPTS = 3;
const COMMIT_RETRY_MS = 25;

/**
 * One outbound live migration, driven by the source agent: its move (vm-move.ts: the local-disk mirror, then the
 * memory pre-copy alongside it) runs on the server's link; at switchover the VM pauses, the rest is copied, and after the switchover cost the VM's state (spec and counter) is
 * committed to the target agent over HTTP. Until that commit succeeds the source's copy is authoritative, so a
 * cancel, a give-up or a target that does not answer all leave the VM running here. The job's lifecycle is
 * MigrationJobBase's (compute/migration-job.ts).
 */
export class SimMigration extends MigrationJobBase<SimVm> {
  private readonly move: SimVmMove;
  /** The VM has local disks (its progress then has a disk part, even with no data to copy). */
  private readonly hasLocalDisk: boolean;
  /** Simulated time the job ended at (its end figures are taken there). */
  private endMs: number | undefined;
  private memoryRemainingAtEnd = 0;
  private diskRemainingAtEnd = 0;
  private onLink = false;
  /** Simulated ms the move spends before its first byte, off the link (calibration.ts MOVE_SETUP_MS when charged). */
  private readonly setupCostMs: number;

  constructor(
    private readonly host: MigrationHost,
    vm: SimVm,
    input: StartMigrationInput,
    params: VmMoveParams & { hasLocalDisk: boolean; setupMs?: number },
  ) {
    super(host, vm, input);
    this.hasLocalDisk = params.hasLocalDisk;
    this.setupCostMs = params.setupMs ?? 0;
    this.move = new SimVmMove(host.link, params, {
      onPause: (t) => this.onPause(t),
      onCopied: (t) => this.onCopied(t),
      onGiveUp: (t, code, message) => {
        this.onLink = false;
        this.endAt(t, 'failed', { code, message });
      },
    });
  }

  override failBeforeStart(code: string, message: string): void {
    this.memoryRemainingAtEnd = this.move.precopy.memoryBytes;
    this.diskRemainingAtEnd = this.move.mirror?.diskBytes ?? 0;
    super.failBeforeStart(code, message);
  }

  /** Puts the move on the link (the target has accepted); the VM starts being copied now. */
  begin(failAtRoundZero: boolean): void {
    this.vm.state = 'migrating';
    if (failAtRoundZero) {
      this.endAt(this.host.link.sync(), 'failed', { code: 'InjectedFault', message: 'injected failure at round 0' });
      return;
    }
    if (this.setupCostMs > 0) {
      // The destination starting and accepting: time that passes off the link.
      const until = this.host.clock.now() + this.setupCostMs;
      this.host.clock.sleepUntil(until, this.abort.signal).then(
        () => {
          if (this.state === 'running') this.startOnLink();
        },
        () => undefined, // cancelled or halted meanwhile; whoever aborted has settled the job
      );
      return;
    }
    this.startOnLink();
  }

  private startOnLink(): void {
    this.onLink = true;
    // The guest pays for auto-converge's throttle while the move runs (its operations slow).
    this.vm.throttledBy = () => (this.state === 'running' ? this.move.precopy.throttlePct : 0);
    this.move.start();
    this.log.info({ target: this.input.target, memoryBytes: this.move.precopy.memoryBytes, diskBytes: this.move.mirror?.diskBytes ?? 0 }, 'migration started');
  }

  protected override beforeCancel(): void {
    this.host.link.sync();
  }

  protected override async stopForCancel(): Promise<void> {
    this.endAt(this.host.link.sync(), 'cancelled', { code: 'Cancelled', message: 'cancelled before switchover' });
  }

  protected override progress(): JobProgress {
    const running = this.state === 'running';
    const now = running ? this.host.link.sync() : 0;
    const f = this.move.precopy;
    const m = this.move.mirror;
    const elapsedS = (this.totalTimeMs ?? 0) / 1000;
    const memoryRemaining = running ? f.remainingAt(now) : this.memoryRemainingAtEnd;
    const diskRemaining = running ? (m?.remainingAt(now) ?? 0) : this.diskRemainingAtEnd;
    const sent = this.move.bytesSent;
    return {
      round: f.round,
      bytesSent: sent,
      bytesRemaining: memoryRemaining + diskRemaining,
      memoryBytes: f.memoryBytes,
      dirtyRateBps: f.dirtyRateBps(),
      // While running: this move's current share of the NIC. After: its average over the whole job.
      throughputBps: running ? this.move.rateBps() : elapsedS > 0 ? sent / elapsedS : 0,
      throttlePct: f.throttlePct,
      memory: { bytesTotal: f.memoryBytes, bytesTransferred: f.bytesSent, bytesRemaining: memoryRemaining },
      disk: this.hasLocalDisk ? { bytesTotal: m?.diskBytes ?? 0, bytesCopied: m?.bytesCopied ?? 0, bytesRemaining: diskRemaining } : null,
    };
  }

  private onPause(t: number): void {
    this.vm.pause();
    this.log.debug({ round: this.move.precopy.round, simMs: t }, 'paused for switchover');
  }

  private onCopied(copiedAt: number): void {
    this.onLink = false;
    void this.switchover(copiedAt);
  }

  private async switchover(copiedAt: number): Promise<void> {
    const endMs = copiedAt + this.move.precopy.switchoverCostMs;
    try {
      await this.host.clock.sleepUntil(endMs, this.abort.signal);
    } catch {
      return; // cancelled or halted meanwhile; whoever aborted has settled the job
    }
    // A cancel may have landed between the timer firing and this line running: never hand over a cancelled VM.
    if (this.state !== 'running') return;
    this.committing = true;
    const { agentUrl } = this.input.target;
    let lastError: unknown;
    for (let attempt = 1; attempt <= COMMIT_ATTEMPTS; attempt++) {
      try {
        await this.host.peer.commit(agentUrl, this.jobId, { vmId: this.vm.vmId, spec: this.vm.spec, counter: this.vm.counter });
        return this.completed(copiedAt, endMs);
      } catch (err) {
        // A replayed commit that the target had already applied: the VM runs there, never resume it here.
        if (err instanceof AgentError && err.code === 'INCOMING_COMMITTED') return this.completed(copiedAt, endMs);
        lastError = err;
        if (!(err instanceof AgentError && err.retryable) || this.abort.signal.aborted) break;
        await new Promise((r) => setTimeout(r, COMMIT_RETRY_MS * attempt));
      }
    }
    if (this.state !== 'running') return;
    // Before the VM resumes here, make sure the target did not start it after all (a reply lost on the way back):
    // dropping its reservation either succeeds (it never ran there) or says it was committed (it runs there).
    try {
      await this.host.peer.release(agentUrl, this.jobId);
    } catch (err) {
      if (err instanceof AgentError && err.code === 'INCOMING_COMMITTED') return this.completed(copiedAt, endMs);
      // Target unreachable: resume here. Had a commit landed unseen, two copies would exist; on loopback a request
      // is either refused before it is handled (503) or answered, so the sim does not produce that case.
    }
    if (this.state !== 'running') return;
    const message = lastError instanceof Error ? lastError.message : String(lastError);
    this.log.warn({ err: message }, 'target did not take the VM at switchover; it keeps running on the source');
    this.endAt(endMs, 'failed', { code: 'TargetUnavailable', message: `switchover failed: ${message}` });
  }

  private completed(copiedAt: number, endMs: number): void {
    if (this.state !== 'running') return; // halted while the commit was in flight
    // After post-copy the VM ran on the target while its last pages arrived: its downtime is the switchover alone.
    const f = this.move.precopy;
    this.downtimeMs = f.postCopyAtMs !== undefined ? f.switchoverCostMs : copiedAt - f.pausedAtMs! + f.switchoverCostMs;
    this.setupMs = this.setupCostMs;
    this.endMs = endMs;
    void this.movedToTarget(); // synchronous here: the job is completed when this returns
    this.log.info(
      {
        downtimeMs: this.downtimeMs,
        totalTimeMs: this.totalTimeMs,
        bytesSent: this.move.bytesSent,
        diskBytesCopied: this.move.mirror?.bytesCopied ?? 0,
        rounds: this.move.precopy.round + 1,
      },
      'migration completed',
    );
  }

  /** Ends the job at simulated time `t` with the VM still (or again) running on the source. */
  private endAt(t: number, state: 'failed' | 'cancelled', error: { code: string; message: string }): void {
    if (this.state !== 'running') return;
    this.endMs = t;
    this.memoryRemainingAtEnd = this.move.precopy.remainingAt(t);
    this.diskRemainingAtEnd = this.move.mirror?.remainingAt(t) ?? 0;
    this.endHere(state, error);
  }

  protected override stopHere(): void {
    this.abort.abort(new Error('stopped'));
    if (this.onLink) this.move.stop();
    this.onLink = false;
    this.vm.throttledBy = null;
    this.vm.unpark('running');
  }

  protected override onFinish(): void {
    this.vm.throttledBy = null;
    if (this.endMs !== undefined && this.move.startMs !== undefined) this.totalTimeMs = Math.max(0, this.endMs - this.move.startMs);
  }
}

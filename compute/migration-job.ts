import type { Logger } from 'pino';
import type { MigrationJob, MigrationState, StartMigrationInput } from './agent-api';
import { conflict } from './errors';
import type { PeerClient } from './peer-client';

/**
 * The lifecycle every outbound migration job shares, whatever moves the bytes (the sim's fluid model, QEMU): its
 * state and timestamps, `settled`, the end with the VM still on the source (and the target's reservation released),
 * the end with the VM on the target (a tombstone here), cancel, halt, and the snapshot the agent API returns. A
 * backend's job extends this and supplies the measured progress and how its own stream is stopped.
 */

/**
 * Xen's give-up rules, which both backends apply when auto-converge is off: `maxRounds` rounds done, or more than
 * MAX_SENT_FACTOR × the VM's memory sent. With auto-converge QEMU throttles the guest instead.
 */
export const DEFAULT_MAX_ROUNDS = 30;
export const MAX_SENT_FACTOR = 3;

/**
 * More than MAX_SENT_FACTOR × `memoryBytes` sent. The sim's byte counts are sums of float pieces whose split depends on
 * when its timers woke, so a move that sent exactly 3·M (a guest rewriting all of it every round) must not read as over
 * on one run and not on the next: a relative slack far below one page absorbs the rounding.
 */
export function sentTooMuch(bytesSent: number, memoryBytes: number): boolean {
  return bytesSent > MAX_SENT_FACTOR * memoryBytes * (1 + 1e-9);
}

export interface JobError {
  code: string;
  message: string;
}

/** What a backend measures of its job: the snapshot's progress fields. */
export type JobProgress = Pick<
  MigrationJob,
  'round' | 'bytesSent' | 'bytesRemaining' | 'memoryBytes' | 'dirtyRateBps' | 'throughputBps' | 'throttlePct' | 'memory' | 'disk' | 'phasesMs'
>;

/** The VM as a job sees it: which job owns it now. */
export interface JobVm {
  readonly vmId: string;
  migrationJobId: string | null;
}

/** What a job needs from the agent that runs it. */
export interface JobHost<V extends JobVm> {
  readonly peer: PeerClient;
  readonly logger: Logger;
  /** The target runs the VM now: forget it here (never resume it) and leave a tombstone pointing at `agentUrl`. */
  vmMoved(vm: V, agentUrl: string): void | Promise<void>;
}

export abstract class MigrationJobBase<V extends JobVm> {
  state: MigrationState = 'running';
  protected readonly startedAt = new Date().toISOString();
  protected finishedAt: string | undefined;
  protected error: JobError | undefined;
  /** Milliseconds the VM was paused for the switchover (simulated in the sim, measured by QEMU). */
  protected downtimeMs: number | undefined;
  protected totalTimeMs: number | undefined;
  /**
   * A completed move's time off the link, ms. A backend that knows it sets it (the sim: what it charged); otherwise it
   * is the job's wall time less `totalTimeMs` (QEMU's total-time), as the testbed's calibration defines it.
   */
  protected setupMs: number | undefined;
  /** Set while the VM is being handed over to the target: a cancel then waits for the outcome. */
  protected committing = false;
  protected readonly abort = new AbortController();
  /** The target's reservation being released after the job ended here. */
  protected released: Promise<void> = Promise.resolve();
  private settle!: () => void;
  /** Resolves once the job is completed, failed or cancelled. */
  readonly settled = new Promise<void>((resolve) => (this.settle = resolve));
  protected readonly log: Logger;

  constructor(
    private readonly jobHost: JobHost<V>,
    protected readonly vm: V,
    readonly input: StartMigrationInput,
  ) {
    this.log = jobHost.logger.child({ jobId: input.jobId, vmId: input.vmId });
  }

  get jobId(): string {
    return this.input.jobId;
  }

  // ---- what each backend supplies ----------------------------------------------------------------------------

  /** The progress fields of the snapshot, as measured now (or as they were at the end). */
  protected abstract progress(): JobProgress;
  /** Stops the backend's stream and puts the VM back to running here (the job is ending on the source). */
  protected abstract stopHere(): void;
  /** Ends the stream for a cancel and waits until the job has settled (a backend may race the switchover). */
  protected abstract stopForCancel(): Promise<void>;
  /** Runs as the job leaves `running`, before `settled` resolves: a backend records its end figures. */
  protected onFinish(_state: MigrationState): void {}
  /** Runs before a cancel looks at the state (the sim brings its clock up to date). */
  protected beforeCancel(): void {}
  /** Runs after the job ended here and before the target is released (qemu: the disk mirror is torn down first). */
  protected beforeRelease(): Promise<void> {
    return Promise.resolve();
  }

  // ---- the lifecycle -----------------------------------------------------------------------------------------

  /** A job that never started because the target could not be reached: it exists so a retry with its id sees why. */
  failBeforeStart(code: string, message: string): void {
    this.vm.migrationJobId = null;
    this.finish('failed', { code, message });
  }

  /** Before the hand-over: stop and leave the VM on the source. During it: wait for its outcome. After: MIGRATION_COMPLETED. */
  async cancel(): Promise<MigrationJob> {
    this.beforeCancel();
    if (this.committing) await this.settled;
    if (this.state === 'completed') throw conflict('MIGRATION_COMPLETED', 'jobId', `migration ${this.jobId} has completed; the VM runs on the target`);
    if (this.state !== 'running') return this.snapshot();
    await this.stopForCancel();
    // A backend may lose the race to a switchover already under way (QEMU completing as migrate_cancel arrives).
    if ((this.state as MigrationState) === 'completed')
      throw conflict('MIGRATION_COMPLETED', 'jobId', `migration ${this.jobId} completed before the cancel took effect`);
    await this.released; // so the caller sees the target's capacity free again when cancel returns
    return this.snapshot();
  }

  /** The agent is stopping: drop everything without telling anyone (as a crash would). */
  halt(): void {
    this.abort.abort(new Error('agent stopping'));
    if (this.state === 'running') this.finish('failed', { code: 'AgentStopped', message: 'the source agent stopped' });
  }

  snapshot(): MigrationJob {
    return {
      jobId: this.jobId,
      vmId: this.input.vmId,
      target: { agentUrl: this.input.target.agentUrl, incarnationId: this.input.target.incarnationId },
      state: this.state,
      ...this.progress(),
      downtimeMs: this.downtimeMs,
      totalTimeMs: this.totalTimeMs,
      ...(this.setupMsNow() !== undefined ? { setupMs: this.setupMsNow() } : {}),
      startedAt: this.startedAt,
      finishedAt: this.finishedAt,
      error: this.error,
    };
  }

  private setupMsNow(): number | undefined {
    if (this.state !== 'completed') return undefined;
    if (this.setupMs !== undefined) return this.setupMs;
    if (this.finishedAt === undefined || this.totalTimeMs === undefined) return undefined;
    return Math.max(0, Date.parse(this.finishedAt) - Date.parse(this.startedAt) - this.totalTimeMs);
  }

  // ---- for the backends --------------------------------------------------------------------------------------

  /** Ends the job with the VM still (or again) running on the source, and frees the target's reservation. */
  protected endHere(state: 'failed' | 'cancelled', error: JobError): void {
    if (this.state !== 'running') return;
    this.stopHere();
    this.vm.migrationJobId = null;
    this.finish(state, error);
    const { round, bytesSent } = this.progress();
    (state === 'failed' ? this.log.warn : this.log.info).call(this.log, { error, round, bytesSent }, `migration ${state}`);
    this.released = this.beforeRelease()
      .catch((err: unknown) => this.log.warn({ err: err instanceof Error ? err.message : err }, 'clean-up before releasing the target failed'))
      .then(() => this.jobHost.peer.release(this.input.target.agentUrl, this.jobId))
      .catch((err: unknown) => {
        // The target may be down; its reservation for this VM gives way to the next attempt (see acceptIncoming).
        this.log.debug({ err: err instanceof Error ? err.message : err }, 'could not release the target reservation');
      });
  }

  /**
   * The target runs the VM: forget it here, leave the tombstone, and the job is completed — at once when the
   * backend's `vmMoved` is synchronous (the sim), once it has finished otherwise (QEMU quits the source process).
   */
  protected movedToTarget(): void | Promise<void> {
    const done = () => {
      if (this.state === 'running') this.finish('completed');
    };
    let moving: void | Promise<void>;
    try {
      moving = this.jobHost.vmMoved(this.vm, this.input.target.agentUrl);
    } catch (err) {
      done();
      throw err;
    }
    if (moving instanceof Promise) return moving.finally(done);
    done();
  }

  protected finish(state: MigrationState, error?: JobError): void {
    this.state = state;
    this.committing = false;
    this.error = error;
    this.finishedAt = new Date().toISOString();
    this.onFinish(state);
    this.settle();
  }
}

import type { Logger } from 'pino';
import type { MigrationJob, MigrationState, StartMigrationInput } from '../agent-api';
import { AgentError } from '../agent-http';
import { conflict } from '../errors';
import type { PeerClient } from '../peer-client';
import type { SimClock } from './clock';
import type { SimLink } from './link';
import { PrecopyFlow, SWITCHOVER_COST_MS, type PrecopyParams } from './precopy';
import type { SimVm } from './sim-vm';

/** What a migration needs from the agent that runs it. */
export interface MigrationHost {
  readonly clock: SimClock;
  readonly link: SimLink;
  readonly peer: PeerClient;
  readonly logger: Logger;
  /** The target has started the VM: forget it here and leave a tombstone pointing at `agentUrl`. */
  vmMoved(vm: SimVm, agentUrl: string): void;
}

type Phase = 'precopy' | 'stop-copy' | 'switching' | 'committing' | 'done';

/** How often, and how far apart (wall ms), the source retries handing the VM over when the target does not answer. */
const COMMIT_ATTEMPTS = 3;
const COMMIT_RETRY_MS = 25;

/**
 * One outbound live migration, driven by the source agent: its pre-copy stream runs on the server's link; at
 * switchover the VM pauses, the rest is copied, and after the switchover cost the VM's state (spec and counter) is
 * committed to the target agent over HTTP. Until that commit succeeds the source's copy is authoritative, so a
 * cancel, a give-up or a target that does not answer all leave the VM running here.
 */
export class SimMigration {
  state: MigrationState = 'running';
  private phase: Phase = 'precopy';
  private readonly flow: PrecopyFlow;
  private readonly abort = new AbortController();
  private readonly startedAt = new Date().toISOString();
  private finishedAt: string | undefined;
  private error: { code: string; message: string } | undefined;
  private downtimeMs: number | undefined;
  private totalTimeMs: number | undefined;
  private bytesRemainingAtEnd = 0;
  private onLink = false;
  /** The target's reservation being released after the job ended here. */
  private released: Promise<void> = Promise.resolve();
  private settle!: () => void;
  /** Resolves once the job is completed, failed or cancelled. */
  readonly settled = new Promise<void>((resolve) => (this.settle = resolve));
  private readonly log: Logger;

  constructor(
    private readonly host: MigrationHost,
    private readonly vm: SimVm,
    readonly input: StartMigrationInput,
    params: PrecopyParams,
  ) {
    this.log = host.logger.child({ jobId: input.jobId, vmId: input.vmId });
    this.flow = new PrecopyFlow(params, {
      onPause: (t) => this.onPause(t),
      onCopied: (t) => this.onCopied(t),
      onGiveUp: (t, code, message) => {
        this.onLink = false;
        this.endHere(t, 'failed', { code, message });
      },
    });
  }

  get jobId(): string {
    return this.input.jobId;
  }

  /** A job that never started because the target could not be reached: it exists so a retry with its id sees why. */
  failBeforeStart(code: string, message: string): void {
    this.vm.migrationJobId = null;
    this.finish('failed', { code, message }, this.flow.memoryBytes);
  }

  /** Puts the stream on the link (the target has accepted); the VM starts being copied now. */
  begin(failAtRoundZero: boolean): void {
    this.vm.state = 'migrating';
    if (failAtRoundZero) {
      this.endHere(this.host.link.sync(), 'failed', { code: 'InjectedFault', message: 'injected failure at round 0' });
      return;
    }
    this.onLink = true;
    this.flow.start(this.host.link.add(this.flow));
    this.log.info({ target: this.input.target, memoryBytes: this.flow.memoryBytes }, 'migration started');
  }

  /** Before the commit is sent: stop and leave the VM on the source. After: wait for the commit's outcome. */
  async cancel(): Promise<MigrationJob> {
    this.host.link.sync();
    if (this.phase === 'committing') await this.settled;
    if (this.state === 'completed')
      throw conflict('MIGRATION_COMPLETED', 'jobId', `migration ${this.jobId} has completed; the VM runs on the target`);
    if (this.state !== 'running') return this.snapshot();
    this.endHere(this.host.link.sync(), 'cancelled', { code: 'Cancelled', message: 'cancelled before switchover' });
    await this.released; // so the caller sees the target's capacity free again when cancel returns
    return this.snapshot();
  }

  /** The agent is stopping: drop everything without telling anyone (as a crash would). */
  halt(): void {
    this.abort.abort(new Error('agent stopping'));
    if (this.state === 'running') this.finish('failed', { code: 'AgentStopped', message: 'the source agent stopped' }, 0);
  }

  snapshot(): MigrationJob {
    const running = this.state === 'running';
    const now = running ? this.host.link.sync() : 0;
    const f = this.flow;
    const elapsedS = (this.totalTimeMs ?? 0) / 1000;
    return {
      jobId: this.jobId,
      vmId: this.input.vmId,
      target: { agentUrl: this.input.target.agentUrl, incarnationId: this.input.target.incarnationId },
      state: this.state,
      round: f.round,
      bytesSent: f.bytesSent,
      bytesRemaining: running ? f.remainingAt(now) : this.bytesRemainingAtEnd,
      memoryBytes: f.memoryBytes,
      dirtyRateBps: f.dirtyRateBps(),
      // While running: this stream's current share of the NIC. After: its average over the whole job.
      throughputBps: running ? f.rateBps : elapsedS > 0 ? f.bytesSent / elapsedS : 0,
      throttlePct: f.throttlePct,
      downtimeMs: this.downtimeMs,
      totalTimeMs: this.totalTimeMs,
      startedAt: this.startedAt,
      finishedAt: this.finishedAt,
      error: this.error,
    };
  }

  private onPause(t: number): void {
    this.phase = 'stop-copy';
    this.vm.pause();
    this.log.debug({ round: this.flow.round, simMs: t }, 'paused for switchover');
  }

  private onCopied(copiedAt: number): void {
    this.onLink = false;
    this.phase = 'switching';
    void this.switchover(copiedAt);
  }

  private async switchover(copiedAt: number): Promise<void> {
    const endMs = copiedAt + SWITCHOVER_COST_MS;
    try {
      await this.host.clock.sleepUntil(endMs, this.abort.signal);
    } catch {
      return; // cancelled or halted meanwhile; whoever aborted has settled the job
    }
    // A cancel may have landed between the timer firing and this line running: never hand over a cancelled VM.
    if (this.state !== 'running') return;
    this.phase = 'committing';
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
    this.endHere(endMs, 'failed', { code: 'TargetUnavailable', message: `switchover failed: ${message}` });
  }

  private completed(copiedAt: number, endMs: number): void {
    if (this.state !== 'running') return; // halted while the commit was in flight
    this.downtimeMs = copiedAt - this.flow.pausedAtMs! + SWITCHOVER_COST_MS;
    this.host.vmMoved(this.vm, this.input.target.agentUrl);
    this.finish('completed', undefined, 0, endMs);
    this.log.info(
      { downtimeMs: this.downtimeMs, totalTimeMs: this.totalTimeMs, bytesSent: this.flow.bytesSent, rounds: this.flow.round + 1 },
      'migration completed',
    );
  }

  /** Ends the job with the VM still (or again) running on the source, and frees the target's reservation. */
  private endHere(t: number, state: 'failed' | 'cancelled', error: { code: string; message: string }): void {
    if (this.state !== 'running') return;
    this.abort.abort(new Error(state));
    if (this.onLink) this.host.link.remove(this.flow);
    this.onLink = false;
    this.vm.migrationJobId = null;
    this.vm.unpark('running');
    this.finish(state, error, this.flow.remainingAt(t), t);
    (state === 'failed' ? this.log.warn : this.log.info).call(this.log, { error }, `migration ${state}`);
    this.released = this.host.peer.release(this.input.target.agentUrl, this.jobId).catch((err: unknown) => {
      // The target may be down; its reservation for this VM gives way to the next attempt (see acceptIncoming).
      this.log.debug({ err: err instanceof Error ? err.message : err }, 'could not release the target reservation');
    });
  }

  private finish(state: MigrationState, error: { code: string; message: string } | undefined, remaining: number, endMs?: number): void {
    this.state = state;
    this.phase = 'done';
    this.error = error;
    this.bytesRemainingAtEnd = remaining;
    this.finishedAt = new Date().toISOString();
    if (endMs !== undefined && this.flow.startMs !== undefined) this.totalTimeMs = Math.max(0, endMs - this.flow.startMs);
    this.settle();
  }
}

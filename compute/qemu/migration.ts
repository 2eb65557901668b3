import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { IncomingView, StartMigrationInput } from '../agent-api';
import { AgentError } from '../agent-http';
import { DEFAULT_MAX_ROUNDS, MAX_SENT_FACTOR, MigrationJobBase, sentTooMuch, type JobHost, type JobProgress } from '../migration-job';
import type { PeerClient } from '../peer-client';
import { mibToBytes } from '../units';
import { EventWake } from './event-wake';
import { DiskMirror, type DiskProgress } from './mirror';
import { featureCapabilities, featureParameters, moveFeatures, type MoveFeatures } from './move-features';
import { describeExit } from './qemu-process';
import type { QemuVm } from './qemu-vm';
import { QmpError, type QmpClient } from './qmp';
import { queryMigrateSchema, type QueryMigrate } from './query-migrate';

/**
 * When a pre-copy that does not converge is given up (`NotConverging`); QEMU itself would iterate forever.
 * Without auto-converge, Xen's rules as in the sim: `maxRounds` rounds done (QEMU's dirty-sync-count − 1) or more
 * than 3× the guest's RAM sent. With auto-converge QEMU throttles the guest instead, so only the round limit below
 * and the wall-clock limit (`maxMigrationMs`, both cases) apply.
 */
export const AUTO_CONVERGE_ROUND_LIMIT = 1000;
/** QEMU caps downtime-limit at 2000 s. */
const QEMU_MAX_DOWNTIME_MS = 2_000_000;

export interface QemuMigrationSettings {
  pollIntervalMs: number;
  /** Bytes/s when the policy sets no cap (QEMU's own default, 128 MiB/s, is too low). */
  defaultMaxBandwidthBps: number;
  /** Auto-converge's first throttle step and increment, percent (QEMU's defaults: 20 and 10). */
  throttleInitialPct: number;
  throttleStepPct: number;
  maxMigrationMs: number;
  /** How long to wait for the target's destination to listen (agent option `qemu.listenWaitMs`). */
  listenWaitMs: number;
  /** A stream that sends nothing for this long (while QEMU says active) is given up: `MigrationStalled`. */
  stallTimeoutMs: number;
  /**
   * `tls`: migrations over TCP are encrypted (QEMU tls-creds-x509 from `tlsDir`, the target's name checked);
   * `insecure`: plaintext, only when the fleet says so. UNIX-socket migrations (both ends on one host) use neither.
   */
  transport: 'tls' | 'insecure';
  /** This server's credential folder (QEMU's file names; see compute/fleet-ca.ts). */
  tlsDir?: string;
}

/** What a migration needs from the agent that runs it. */
export interface QemuMigrationHost extends JobHost<QemuVm> {
  readonly peer: PeerClient;
  readonly logger: Logger;
  readonly settings: QemuMigrationSettings;
  readonly serverId: string;
  /**
   * Asks the target again (accept is idempotent) for where its destination listens, once it does. During a paused
   * post-copy the same call asks the target to listen again for the recovery (see qemu-backend's recoverIncoming).
   */
  pollIncoming(job: StartMigrationInput, vm: QemuVm): Promise<IncomingView>;
  /** Divides the bandwidth (fault injection). */
  linkSlowdown(): number;
  /** A completed single-channel move's measured stream throughput (bytes/s): what `measureLink` answers from then on. */
  recordStreamThroughput(bytesPerSec: number, sampleMs: number): void;
}

type Stop = { state: 'failed' | 'cancelled'; code: string; message: string };

const COMMIT_WINDOW_MS = 5_000;
const MIGRATION_EVENTS: ReadonlySet<string> = new Set(['MIGRATION', 'STOP', 'RESUME']);
const JOB_EVENTS: ReadonlySet<string> = new Set(['BLOCK_JOB_READY', 'BLOCK_JOB_ERROR', 'JOB_STATUS_CHANGE']);
const COMMIT_RETRY_MS = 50;

/**
 * One outbound live migration of a QEMU VM, driven by the source agent over QMP: the target agent has started a
 * destination with identical arguments and `-incoming defer`, listening on a UNIX socket; this side sets the policy
 * (max-bandwidth, downtime-limit, auto-converge), runs `migrate` and polls `query-migrate`. QEMU decides the
 * switchover; its measured downtime and total time are what the job reports. Until QEMU says `completed` the source
 * is authoritative: a cancel, a give-up, or a failure leaves the VM running here and the destination exits.
 */
export class QemuMigration extends MigrationJobBase<QemuVm> {
  private round = 0;
  private bytesSent = 0;
  private bytesRemaining: number;
  private memoryBytes: number;
  private dirtyRateBps = 0;
  private throughputBps = 0;
  private throttlePct = 0;
  /** Set when this side decided to end the migration (cancel, give-up, fault) before sending migrate_cancel. */
  private stop: Stop | null = null;
  private migrateSent = false;
  /** The stream's progress: the last byte count seen rising, and when. */
  private progressBytes = 0;
  private progressAt = Date.now();
  private qmp: QmpClient | null = null;
  /** The local disks' mirror (none for a VM without local disks: network disks stay where they are). */
  private mirror: DiskMirror | null = null;
  private diskProgress: DiskProgress | null;
  /** The mirrors were completed at pre-switchover and the migration continued. */
  private switchedOver = false;
  /** multifd channels and post-copy permission of this move (both ends derive the same). */
  private readonly features: MoveFeatures;
  /** `migrate-start-postcopy` was sent: from then on the VM runs on the target and cannot come back. */
  private postcopy = false;
  /** The post-copy stream was paused (by us on a stall, or by QEMU on a broken socket); the recovery runs. */
  private recovering: Promise<void> | null = null;
  /** Where the last stream went: a recovery waits for the target to listen somewhere new. */
  private uri = '';
  /** QEMU's ram.mbps (as bytes/s) at each poll while the pre-copy stream ran unthrottled by a cap. */
  private readonly rateSamples: number[] = [];
  /**
   * Where the job's wall time went, ms per phase in the order they ran (the agent API's `phasesMs`). Keys with a dot
   * break another phase down (the destination's own set-up, QEMU's setup time and downtime) and are not summed.
   */
  private readonly phases: Record<string, number> = {};
  private phaseFrom = Date.now();

  constructor(
    private readonly host: QemuMigrationHost,
    vm: QemuVm,
    input: StartMigrationInput,
    private readonly failAtRound: number | null,
  ) {
    super(host, vm, input);
    this.memoryBytes = mibToBytes(vm.spec.memoryMiB);
    this.bytesRemaining = this.memoryBytes;
    const local = (vm.machine.disks ?? []).filter((d) => d.kind === 'local');
    const total = local.reduce((a, d) => a + d.sizeBytes, 0);
    this.diskProgress = local.length ? { bytesTotal: total, bytesCopied: 0, bytesRemaining: total } : null;
    this.features = moveFeatures(input, vm.machine);
  }

  /** The target has accepted and is starting its destination: run the migration in the background. */
  begin(incoming: IncomingView): void {
    this.vm.state = 'migrating';
    void this.run(incoming);
  }

  /** Before QEMU has completed: stop it, and the VM stays here (MigrationJobBase.cancel). */
  protected override async stopForCancel(): Promise<void> {
    this.stop ??= { state: 'cancelled', code: 'Cancelled', message: 'cancelled before switchover' };
    if (this.migrateSent) await this.qmp?.execute('migrate_cancel').catch(() => undefined);
    await this.settled;
  }

  /** Applies a changed bandwidth (fault injection) to a migration in flight. */
  async updateBandwidth(): Promise<void> {
    if (this.state !== 'running' || !this.qmp) return;
    await this.qmp.execute('migrate-set-parameters', { 'max-bandwidth': this.maxBandwidth() }).catch(() => undefined);
    await this.mirror?.setSpeed(this.mirrorSpeed());
  }

  protected override progress(): JobProgress {
    return {
      round: this.round,
      bytesSent: this.bytesSent,
      bytesRemaining: this.bytesRemaining,
      memoryBytes: this.memoryBytes,
      dirtyRateBps: this.dirtyRateBps,
      throughputBps: this.throughputBps,
      throttlePct: this.throttlePct,
      memory: { bytesTotal: this.memoryBytes, bytesTransferred: this.bytesSent, bytesRemaining: this.bytesRemaining },
      // The local disks' copy: bytes copied / remaining / total as QEMU's query-block-jobs reports them.
      disk: this.diskProgress && { ...this.diskProgress },
      phasesMs: { ...this.phases },
    };
  }

  /** The phase `name` ends now: its time since the previous phase ended is added to it. */
  private phase(name: string): void {
    const now = Date.now();
    this.phases[name] = (this.phases[name] ?? 0) + (now - this.phaseFrom);
    this.phaseFrom = now;
  }

  // ---- the run ------------------------------------------------------------------------------------------------

  private async run(incoming: IncomingView): Promise<void> {
    const s = this.host.settings;
    const started = Date.now();
    try {
      const qmp = await this.vm.proc.qmp();
      this.qmp = qmp;
      const target = await this.waitForListener(incoming, s.listenWaitMs);
      this.phase('listenWait');
      for (const [k, v] of Object.entries(target?.setupMs ?? {})) this.phases[`target.${k}`] = v;
      if (!target || this.stop || this.abort.signal.aborted) return this.endWith(this.stop);
      const uri = target.migrationUri!;
      const tls = await this.secureChannel(qmp, uri, target);
      this.phase('tlsCreds');
      if (this.diskProgress) {
        await this.mirrorDisks(qmp, target, tls, started);
        if (this.stop || this.abort.signal.aborted) return this.endWith(this.stop);
      }
      await qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'events', state: true },
          { capability: 'auto-converge', state: this.input.autoConverge },
          // With local disks the mirrors are completed while the guest is stopped, before the target may run it.
          { capability: 'pause-before-switchover', state: this.mirror !== null },
          ...featureCapabilities(this.features),
        ],
      });
      await qmp.execute('migrate-set-parameters', {
        'max-bandwidth': this.maxBandwidth(),
        'downtime-limit': Math.max(1, Math.min(QEMU_MAX_DOWNTIME_MS, Math.round(this.input.maxDowntimeMs))),
        'cpu-throttle-initial': s.throttleInitialPct,
        'cpu-throttle-increment': s.throttleStepPct,
        ...featureParameters(this.features),
        // The policy's cap holds in post-copy too (QEMU's own default there is unlimited).
        ...(this.features.postCopy ? { 'max-postcopy-bandwidth': this.input.bandwidthCapBps ? this.maxBandwidth() : 0 } : {}),
        ...tls,
      });
      if (this.stop || this.abort.signal.aborted) return this.endWith(this.stop);
      this.migrateSent = true; // set before the write, so a cancel from now on sends migrate_cancel after it
      this.progressAt = Date.now();
      this.uri = uri;
      await qmp.execute('migrate', { uri });
      this.phase('migrateSetup');
      this.log.info(
        {
          target: this.input.target,
          uri,
          tls: 'tls-creds' in tls && tls['tls-creds'] !== '',
          maxBandwidthBps: this.maxBandwidth(),
          maxDowntimeMs: this.input.maxDowntimeMs,
          autoConverge: this.input.autoConverge,
          channels: this.features.channels,
          postCopy: this.features.postCopy,
        },
        'migration started',
      );
      await this.poll(qmp, started);
    } catch (err) {
      if (this.abort.signal.aborted || this.state !== 'running') return;
      const message = err instanceof Error ? err.message : String(err);
      // After migrate-start-postcopy the VM cannot come back here: never cancel and resume this copy.
      if (this.postcopy) return this.postcopyLost(message);
      const exit = this.vm.proc.exitInfo;
      if (exit) return this.endWith({ state: 'failed', code: 'VmFailed', message: `the VM's QEMU process exited (${describeExit(exit)})` });
      // QEMU is alive but we lost track: make sure no migration goes on behind our back before the VM counts as here.
      if (this.migrateSent) await this.qmp?.execute('migrate_cancel').catch(() => undefined);
      this.endWith({ state: 'failed', code: err instanceof StepError ? err.code : 'MigrationFailed', message });
    }
  }

  private async poll(qmp: QmpClient, started: number): Promise<void> {
    // A status change (pre-switchover with the guest stopped, completed) is acted on when QEMU announces it.
    const wake = new EventWake(qmp, MIGRATION_EVENTS);
    try {
      await this.pollUntilDone(qmp, started, wake);
    } finally {
      wake.close();
    }
  }

  private async pollUntilDone(qmp: QmpClient, started: number, wake: EventWake): Promise<void> {
    const s = this.host.settings;
    for (;;) {
      if (this.abort.signal.aborted) return;
      let q: QueryMigrate;
      try {
        q = queryMigrateSchema.parse(await qmp.execute('query-migrate', undefined, { timeoutMs: 5_000 }));
      } catch (err) {
        // A busy QEMU may answer late; keep asking until the time limit. A closed socket is final.
        if (!(err instanceof QmpError && err.code === 'TIMEOUT')) throw err;
        q = {};
      }
      this.update(q);
      switch (q.status) {
        case 'completed':
          // "completed" can show before total-time and downtime are filled in.
          if ((q['total-time'] ?? 0) > 0) return this.completed(q);
          break;
        case 'failed':
          if (this.postcopy) return this.postcopyLost(q['error-desc'] ?? 'QEMU reported the post-copy failed');
          return this.endWith(this.stop ?? { state: 'failed', code: 'MigrationFailed', message: q['error-desc'] ?? 'QEMU reported the migration failed' });
        case 'cancelled':
          return this.endWith(this.stop ?? { state: 'failed', code: 'MigrationFailed', message: 'QEMU cancelled the migration' });
        case 'pre-switchover':
          this.vm.state = 'paused-for-switchover';
          if (this.mirror && !this.switchedOver && !this.stop) {
            this.phase('ram');
            await this.switchOverDisks(qmp);
            this.phase('diskSwitchover');
          }
          break;
        case 'device':
          this.vm.state = 'paused-for-switchover';
          break;
        case 'postcopy-active':
        case 'postcopy-paused':
        case 'postcopy-recover-setup':
        case 'postcopy-recover':
          await this.postcopyStep(qmp, q, started);
          break;
        default:
          // Once post-copy was asked for, QEMU may report `active` a little longer: nothing to give up any more.
          if (!this.stop && !this.postcopy) {
            const stop = this.giveUpReason(q, Date.now() - started);
            if (stop?.code === 'NotConverging' && this.features.postCopy && !this.postcopy && Date.now() - started <= s.maxMigrationMs) {
              // Post-copy is for a pre-copy that cannot converge, not for one that ran out of time.
              await this.startPostcopy(qmp, stop.message);
              break;
            }
            if (stop) {
              this.stop = stop;
              this.log.warn({ round: this.round, bytesSent: this.bytesSent, reason: stop.message }, 'giving up the migration');
              await qmp.execute('migrate_cancel').catch(() => undefined);
            }
          }
      }
      await wake.sleep(s.pollIntervalMs, this.abort.signal);
    }
  }

  private update(q: QueryMigrate): void {
    const ram = q.ram;
    if (!ram) return;
    const syncs = ram['dirty-sync-count'] ?? 1;
    // QEMU syncs the dirty bitmap once before the first pass and once per pass after it: round i runs after sync i + 1.
    this.round = Math.max(0, syncs - 1);
    this.bytesSent = ram.transferred;
    this.bytesRemaining = ram.remaining;
    this.memoryBytes = ram.total;
    this.dirtyRateBps = (ram['dirty-pages-rate'] ?? 0) * (ram['page-size'] ?? 4096);
    this.throughputBps = ((ram.mbps ?? 0) * 1e6) / 8;
    if (q.status === 'active' && this.throughputBps > 0) this.rateSamples.push(this.throughputBps);
    this.throttlePct = Math.min(100, q['cpu-throttle-percentage'] ?? 0);
  }

  private giveUpReason(q: QueryMigrate, elapsedMs: number): Stop | null {
    const s = this.host.settings;
    const rounds = this.round; // completed pre-copy rounds
    if (this.failAtRound !== null && rounds >= this.failAtRound)
      return { state: 'failed', code: 'InjectedFault', message: `injected failure at round ${this.failAtRound}` };
    if (elapsedMs > s.maxMigrationMs)
      return { state: 'failed', code: 'NotConverging', message: `not converged within ${s.maxMigrationMs} ms (round ${rounds})` };
    // A network that drops the stream (a partition) leaves QEMU waiting on TCP retransmits for many minutes.
    const now = Date.now();
    if (this.bytesSent > this.progressBytes) {
      this.progressBytes = this.bytesSent;
      this.progressAt = now;
    } else if (q.status === 'active' && now - this.progressAt > s.stallTimeoutMs) {
      return { state: 'failed', code: 'MigrationStalled', message: `no byte sent for ${now - this.progressAt} ms (the network to the target is down?)` };
    }
    if (this.input.autoConverge) {
      if (rounds >= AUTO_CONVERGE_ROUND_LIMIT)
        return { state: 'failed', code: 'NotConverging', message: `not converging after ${rounds} rounds even with auto-converge` };
      return null;
    }
    const maxRounds = this.input.maxRounds ?? DEFAULT_MAX_ROUNDS;
    if (rounds >= maxRounds) return { state: 'failed', code: 'NotConverging', message: `not converging after ${rounds} rounds (maxRounds ${maxRounds})` };
    const memory = q.ram?.total ?? this.memoryBytes;
    if (sentTooMuch(this.bytesSent, memory))
      return { state: 'failed', code: 'NotConverging', message: `sent ${this.bytesSent} bytes, more than ${MAX_SENT_FACTOR}× the VM's memory` };
    return null;
  }

  /**
   * Pre-copy does not converge: switch to post-copy. The guest stops here, its device state and the pages still dirty
   * go over, and it resumes on the target, which fetches every page it touches that has not arrived from this side.
   * From this moment the job cannot be cancelled: the VM's memory is split over two servers.
   */
  private async startPostcopy(qmp: QmpClient, why: string): Promise<void> {
    this.committing = true;
    this.postcopy = true;
    this.vm.state = 'paused-for-switchover';
    this.log.warn({ round: this.round, bytesSent: this.bytesSent, reason: why }, 'pre-copy does not converge: switching to post-copy');
    await qmp.execute('migrate-start-postcopy');
  }

  /**
   * During post-copy: a stream that sends nothing for `stallTimeoutMs` (a partition: TCP would retransmit for many
   * minutes) is paused with `migrate-pause`; a paused stream (by us, or by QEMU on a broken socket) is recovered: the
   * target is asked to listen again (`migrate-recover` there), then this side resumes with `migrate` resume:true.
   * Neither end gives up the VM meanwhile; only `maxMigrationMs` since the start ends the job (`PostcopyFailed`).
   */
  private async postcopyStep(qmp: QmpClient, q: QueryMigrate, started: number): Promise<void> {
    this.postcopy = true;
    this.committing = true;
    this.vm.state = 'paused-for-switchover';
    const s = this.host.settings;
    const now = Date.now();
    if (this.bytesSent > this.progressBytes) {
      this.progressBytes = this.bytesSent;
      this.progressAt = now;
    }
    if (q.status === 'postcopy-active' && now - this.progressAt > s.stallTimeoutMs && !this.recovering) {
      this.log.warn({ stalledMs: now - this.progressAt }, 'post-copy stream stalled: pausing it (migrate-pause)');
      await qmp.execute('migrate-pause').catch((err: unknown) => this.log.warn({ err: String(err) }, 'migrate-pause failed'));
      this.progressAt = now;
      return;
    }
    if (q.status === 'postcopy-paused' && !this.recovering) {
      this.recovering = this.recover(qmp, started).finally(() => {
        this.recovering = null;
        this.progressAt = Date.now();
      });
    }
    if (now - started > s.maxMigrationMs && q.status !== 'postcopy-active')
      throw new StepError('PostcopyFailed', `post-copy not recovered within ${s.maxMigrationMs} ms`);
  }

  /** Asks the target for a new listening address until it has one (the network may still be down), then resumes. */
  private async recover(qmp: QmpClient, started: number): Promise<void> {
    const s = this.host.settings;
    const pausedAt = Date.now();
    this.log.warn({ uri: this.uri }, 'post-copy paused: recovering');
    for (;;) {
      if (this.abort.signal.aborted || Date.now() - started > s.maxMigrationMs) return;
      const view = await this.host.pollIncoming(this.input, this.vm).catch(() => null);
      if (view?.migrationUri && view.migrationUri !== this.uri) {
        this.uri = view.migrationUri;
        await qmp.execute('migrate', { uri: view.migrationUri, resume: true });
        // How long the guest ran with part of its memory unreachable, summed over recoveries: the operator's figure
        // for a partition during post-copy (it is inside the post-copy phase, so it carries a dot).
        this.phases['postcopy.paused'] = (this.phases['postcopy.paused'] ?? 0) + (Date.now() - pausedAt);
        this.log.warn({ uri: view.migrationUri, pausedMs: Date.now() - pausedAt }, 'post-copy resumed (migrate resume:true)');
        return;
      }
      await sleep(1_000, this.abort.signal);
    }
  }

  /**
   * Post-copy failed for good: neither end has the whole VM. The source is not resumed (its copy is stale) and is
   * kept for an operator; the VM is marked failed here.
   */
  private postcopyLost(message: string): void {
    this.vm.failure = { code: 'PostcopyFailed', message };
    this.endHere('failed', { code: 'PostcopyFailed', message: `post-copy failed; the VM is lost on both ends: ${message}` });
  }

  private async completed(q: QueryMigrate): Promise<void> {
    this.committing = true;
    this.vm.state = 'paused-for-switchover'; // postmigrate: stopped for good
    const syncs = q.ram?.['dirty-sync-count'] ?? 1;
    this.round = Math.max(0, syncs - 2); // the last sync was the stop-and-copy's, which is not a round
    this.bytesRemaining = 0;
    this.downtimeMs = q.downtime ?? 0;
    this.totalTimeMs = q['total-time'];
    // With disks the RAM phase ended at pre-switchover; what follows is the device state and the resume on the target.
    this.phase(this.switchedOver ? 'finalCopy' : 'ram');
    this.phases['qemu.setup'] = q['setup-time'] ?? 0;
    this.phases['qemu.downtime'] = this.downtimeMs;
    this.phases['qemu.total'] = this.totalTimeMs ?? 0;
    // One stream's throughput, as QEMU measured it: the median of its rate while pre-copy ran, if nothing capped it.
    if (this.features.channels === 1 && !this.input.bandwidthCapBps && this.rateSamples.length >= 5) {
      const sorted = [...this.rateSamples].sort((x, y) => x - y);
      this.host.recordStreamThroughput(sorted[Math.floor(sorted.length / 2)]!, this.totalTimeMs ?? 0);
    }
    // The guest is stopped, so its serial log is final: the target's first line will be this + 1.
    const counter = this.vm.counter();
    try {
      // The target drops its exports once the guest runs there; the source lets go of them first.
      await this.mirror?.detach();
      this.phase('detach');
      await this.commitToTarget(counter);
      this.phase('commit');
    } finally {
      await this.movedToTarget();
    }
    this.log.info(
      {
        downtimeMs: this.downtimeMs,
        totalTimeMs: this.totalTimeMs,
        setupTimeMs: q['setup-time'],
        bytesSent: this.bytesSent,
        rounds: this.round + 1,
        lastCounter: counter,
      },
      'migration completed',
    );
  }

  /**
   * Tells the target agent the VM is its own now. QEMU has already switched over (the destination runs), so this
   * cannot undo anything: if the target does not answer the source still never resumes, and the target finds its
   * running destination by itself.
   */
  private async commitToTarget(counter: number): Promise<void> {
    const deadline = Date.now() + COMMIT_WINDOW_MS;
    for (;;) {
      try {
        await this.host.peer.commit(this.input.target.agentUrl, this.jobId, { vmId: this.vm.vmId, spec: this.vm.spec, counter });
        return;
      } catch (err) {
        const retry = err instanceof AgentError && (err.retryable || err.code === 'INCOMING_NOT_READY');
        if (!retry || Date.now() > deadline || this.abort.signal.aborted) {
          this.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'target did not confirm the switchover; the VM runs there all the same');
          return;
        }
        await sleep(COMMIT_RETRY_MS, this.abort.signal);
      }
    }
  }

  /** Ends the job with the VM still running here; the target drops its (exited) destination when released. */
  private endWith(stop: Stop | null): void {
    const s = stop ?? { state: 'cancelled', code: 'Cancelled', message: 'cancelled before the migration started' };
    this.endHere(s.state, { code: s.code, message: s.message });
  }

  /** The mirror goes before the target is released: jobs cancelled, the target's exports detached from here. */
  protected override async beforeRelease(): Promise<void> {
    await this.mirror?.abort();
  }

  /**
   * Mirrors the local disks into the target's exports until every mirror is READY, then switches them to
   * write-blocking. Gives up like the RAM stream does: nothing copied for `stallTimeoutMs`, or past `maxMigrationMs`.
   */
  private async mirrorDisks(qmp: QmpClient, target: IncomingView, tls: Record<string, string>, started: number): Promise<void> {
    const s = this.host.settings;
    if (!target.nbdAddress) throw new StepError('TargetUnavailable', 'the target exports no disks for the mirror');
    const mirror = new DiskMirror(qmp, this.vm.machine.disks ?? [], this.jobId, this.log);
    this.mirror = mirror;
    const creds = tls['tls-creds'];
    await mirror.start({ address: target.nbdAddress, ...(creds ? { tlsCredsId: creds, tlsHostname: target.serverId } : {}) }, this.mirrorSpeed());
    this.phase('mirrorStart');
    let progressAt = Date.now();
    let copied = 0;
    // READY is announced (BLOCK_JOB_READY, JOB_STATUS_CHANGE): the RAM migration starts then, not at the next tick.
    const wake = new EventWake(qmp, JOB_EVENTS);
    try {
      for (;;) {
        if (this.stop || this.abort.signal.aborted) return;
        const p = await mirror.poll();
        this.diskProgress = p.progress;
        if (p.state === 'failed') throw new StepError('DiskMirrorFailed', p.message);
        if (p.state === 'ready') break;
        const now = Date.now();
        if (p.progress.bytesCopied > copied) {
          copied = p.progress.bytesCopied;
          progressAt = now;
        } else if (now - progressAt > s.stallTimeoutMs) {
          throw new StepError('MigrationStalled', `the disk mirror copied nothing for ${now - progressAt} ms (the network to the target is down?)`);
        }
        if (now - started > s.maxMigrationMs) throw new StepError('NotConverging', `the disk mirror was not ready within ${s.maxMigrationMs} ms`);
        await wake.sleep(s.pollIntervalMs, this.abort.signal);
      }
    } finally {
      wake.close();
    }
    this.phase('mirrorCopy');
    await mirror.activeSync();
    this.phase('mirrorSync');
  }

  /** At pre-switchover: the mirrors are completed (the guest is stopped), then QEMU may switch over. */
  private async switchOverDisks(qmp: QmpClient): Promise<void> {
    try {
      await this.mirror!.complete();
      this.diskProgress = this.mirror!.progress;
      this.switchedOver = true;
      await qmp.execute('migrate-continue', { state: 'pre-switchover' });
    } catch (err) {
      this.stop = { state: 'failed', code: 'DiskMirrorFailed', message: err instanceof Error ? err.message : String(err) };
      this.log.warn({ reason: this.stop.message }, 'disk mirror failed at switchover; cancelling the migration');
      await qmp.execute('migrate_cancel').catch(() => undefined);
    }
  }

  /** The mirror's rate limit: the policy's bandwidth cap (over the fault's slowdown), else none (the NIC limits it). */
  private mirrorSpeed(): number {
    const cap = this.input.bandwidthCapBps;
    return cap ? Math.max(1, Math.round(cap / this.host.linkSlowdown())) : 0;
  }

  protected override stopHere(): void {
    if (this.vm.state !== 'running' && !this.vm.failure) this.vm.state = 'running';
  }

  protected override onFinish(): void {
    // The source's QEMU has quit (movedToTarget finishes the job once it has): the last phase of a completed move.
    if ('commit' in this.phases) this.phase('sourceStop');
    // QEMU's total-time for a completed move; otherwise wall time from the request to the end.
    this.totalTimeMs ??= Date.parse(this.finishedAt!) - Date.parse(this.startedAt);
    // Like the sim: once finished, the average over the job.
    this.throughputBps = this.totalTimeMs > 0 ? this.bytesSent / (this.totalTimeMs / 1000) : 0;
  }

  private maxBandwidth(): number {
    const bps = this.input.bandwidthCapBps ?? this.host.settings.defaultMaxBandwidthBps;
    return Math.max(1, Math.round(bps / this.host.linkSlowdown()));
  }

  /**
   * The TLS parameters for `migrate-set-parameters`: over TCP with `tls`, client credentials (added once per job)
   * and the target's server id as the name its certificate must carry. Both ends must agree on the transport: a
   * target that listens in plaintext while this side wants TLS (or the reverse) is refused before a byte is sent.
   */
  private async secureChannel(qmp: QmpClient, uri: string, target: IncomingView): Promise<Record<string, string>> {
    const s = this.host.settings;
    if (!uri.startsWith('tcp:')) return { 'tls-creds': '' };
    const wantTls = s.transport === 'tls';
    if (target.tls !== wantTls)
      throw new StepError(
        'TransportMismatch',
        `the target listens ${target.tls ? 'with TLS' : 'in plaintext'} but this server's migration.transport is ${s.transport}`,
      );
    if (!wantTls) return { 'tls-creds': '' };
    const id = `tls-${createHash('sha256').update(this.jobId).digest('hex').slice(0, 12)}`;
    this.vm.proc.refreshRevocations(); // QEMU checks the target against the fleet's CRL of now
    await qmp
      .execute('object-add', { 'qom-type': 'tls-creds-x509', id, dir: this.vm.proc.tlsDir ?? s.tlsDir!, endpoint: 'client', 'verify-peer': true })
      .catch((err: unknown) => {
        if (!(err instanceof QmpError && /duplicate|already/i.test(err.message))) throw err; // a retry of this job added it already
      });
    return { 'tls-creds': id, 'tls-hostname': target.serverId };
  }

  /** The destination listens once the target has run migrate-incoming; the target then reports where. */
  private async waitForListener(incoming: IncomingView, timeoutMs: number): Promise<IncomingView | null> {
    const deadline = Date.now() + timeoutMs;
    let view = incoming;
    while (!view.migrationUri) {
      if (this.stop || this.abort.signal.aborted) return null;
      if (!this.vm.proc.running) throw new Error('the VM exited');
      if (Date.now() > deadline) throw new StepError('TargetUnavailable', `the target's destination did not listen within ${timeoutMs} ms (qemu.listenWaitMs)`);
      await sleep(50, this.abort.signal);
      view = await this.host.pollIncoming(this.input, this.vm).catch((err: unknown) => {
        if (err instanceof AgentError && !err.retryable) throw new StepError('TargetUnavailable', `the target dropped the incoming migration: ${err.message}`);
        return view;
      });
    }
    return view;
  }
}

class StepError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import { FailureTypes, type MoveFigures } from '../common/migration';
import type { AgentClient, MigrationJob } from '../compute/agent-client';
import type { Inventory } from '../inventory';
import type { AgentDirectory } from '../compute/agent-directory';
import { orNull } from './failures';
import type { ServerIncarnation } from './migration-steps';

export interface LiveMigrateInput {
  migrationId: string;
  /** Chosen by the workflow, the agent's idempotency key: a retried activity finds the same job and follows it. */
  jobId: string;
  vmId: string;
  from: ServerIncarnation;
  to: ServerIncarnation;
  maxDowntimeMs: number;
  bandwidthCapBps?: number;
  autoConverge: boolean;
  /** Migration channels (multifd); omitted: one stream. */
  channels?: number;
  /** Switch to post-copy if the move does not converge (policy `postCopy`); omitted: no. */
  postCopy?: boolean;
}

/** What a move heartbeats: the job's figures, with its progress in two parts (memory, and local disks or null). */
export type MoveProgress = Pick<
  MigrationJob,
  'jobId' | 'vmId' | 'state' | 'round' | 'bytesSent' | 'bytesRemaining' | 'memoryBytes' | 'dirtyRateBps' | 'throughputBps' | 'throttlePct' | 'memory' | 'disk'
>;

const POLL_MS = 100;

function figuresOf(job: MigrationJob): MoveFigures {
  return {
    rounds: job.round,
    bytesSent: job.bytesSent,
    memoryBytes: job.memoryBytes,
    downtimeMs: job.downtimeMs ?? 0,
    totalTimeMs: job.totalTimeMs ?? 0,
    ...(job.setupMs !== undefined ? { setupMs: job.setupMs } : {}),
    // Absent from an agent that predates disks, and for a VM with no local disk.
    ...(job.disk ? { diskBytesCopied: job.disk.bytesCopied } : {}),
  };
}

function progressOf(job: MigrationJob): MoveProgress {
  const { jobId, vmId, state, round, bytesSent, bytesRemaining, memoryBytes, dirtyRateBps, throughputBps, throttlePct, memory, disk } = job;
  return { jobId, vmId, state, round, bytesSent, bytesRemaining, memoryBytes, dirtyRateBps, throughputBps, throttlePct, memory, disk };
}

/**
 * How long one long-poll of the agent (`GET migration?waitMs=`) may wait for the job to end: the agent answers the
 * moment the job leaves `running`, else after this long with its progress, which is heartbeated. So it is also the
 * most time between heartbeats of a running move (the heartbeat timeout is 15 s).
 */
const WAIT_MS = 1_000;

/**
 * Follows the job until it leaves `running`, by long-polling the agent. An agent that ignores `waitMs` answers at
 * once: the loop then sleeps out the rest of POLL_MS, the old polling. `cancelled` (the activity's) ends the wait early.
 */
async function pollUntilDone(
  agent: AgentClient,
  jobId: string,
  onProgress: (job: MigrationJob) => void,
  sleep: (ms: number) => Promise<void>,
  cancelled?: Promise<never>,
): Promise<MigrationJob> {
  for (;;) {
    const asked = Date.now();
    const reply = agent.getMigration(jobId, { waitMs: WAIT_MS });
    const job = await (cancelled ? Promise.race([reply, cancelled]) : reply);
    if (!job)
      throw ApplicationFailure.create({
        type: FailureTypes.MoveFailed,
        message: `agent ${agent.baseUrl} lost migration job ${jobId} (restarted?)`,
        nonRetryable: true,
      });
    if (job.state !== 'running') return job;
    onProgress(job);
    const early = POLL_MS - (Date.now() - asked);
    if (early > 0) await sleep(early);
  }
}

/** One VM's live migration, driven by the source agent; the activity follows it, heartbeats progress and honours cancellation. */
export function createLiveMigration({ inventory, agents }: { inventory: Inventory; agents: AgentDirectory }) {
  const recordArrival = async (input: { migrationId: string; vmId: string; to: ServerIncarnation }) => {
    await inventory.moveVmPlacement({
      vmId: input.vmId,
      migrationId: input.migrationId,
      toIncarnationId: input.to.incarnationId,
      actor: `migration:${input.migrationId}`,
    });
  };

  return {
    async liveMigrateVm(input: LiveMigrateInput): Promise<MoveFigures> {
      const ctx = Context.current();
      const source = await agents.forServer(input.from.serverId);
      const target = await agents.forServer(input.to.serverId);
      // Idempotent by job id: after a worker restart the agent answers with the job it already has (usually still
      // running), and the activity follows it rather than start over. The start waits like a long-poll, so a move that
      // ends within WAIT_MS costs this one round trip.
      let job = await source.startMigration(
        {
          jobId: input.jobId,
          vmId: input.vmId,
          target: { agentUrl: target.baseUrl, incarnationId: input.to.incarnationId },
          maxDowntimeMs: input.maxDowntimeMs,
          bandwidthCapBps: input.bandwidthCapBps,
          autoConverge: input.autoConverge,
          ...(input.channels !== undefined ? { channels: input.channels } : {}),
          ...(input.postCopy ? { postCopy: true } : {}),
        },
        { waitMs: WAIT_MS },
      );
      const heartbeat = (j: MigrationJob) => ctx.heartbeat(progressOf(j));
      try {
        if (job.state === 'running') {
          heartbeat(job);
          job = await pollUntilDone(source, input.jobId, heartbeat, (ms) => ctx.sleep(ms), ctx.cancelled);
        }
      } catch (err) {
        if (!(err instanceof CancelledFailure)) throw err;
        // A worker shutting down or a lost heartbeat is not a request to stop the VM's move: leave the job running on
        // the agent, and the next attempt (on this or another worker) follows it by its job id.
        if (!ctx.cancellationDetails?.cancelRequested) throw err;
        // Stop the move on the agent before acknowledging, so the workflow never sees a move that is still going.
        try {
          await source.cancelMigration(input.jobId);
        } catch (cancelErr) {
          ctx.log.info('cancel found the move already finished', { jobId: input.jobId, error: String(cancelErr) });
        }
        const final = await pollUntilDone(
          source,
          input.jobId,
          () => undefined,
          (ms) => new Promise((r) => setTimeout(r, ms)),
        );
        if (final.state === 'completed') await recordArrival(input);
        throw err;
      }
      if (job.state === 'completed') {
        await recordArrival(input);
        return figuresOf(job);
      }
      const code = job.error?.code ?? job.state;
      throw ApplicationFailure.create({
        type: code === 'NotConverging' ? FailureTypes.NotConverging : code === 'TargetUnavailable' ? FailureTypes.TargetUnavailable : FailureTypes.MoveFailed,
        message: `${input.vmId}: ${job.error?.message ?? `move ${job.state}`} (round ${job.round}, ${job.bytesSent} bytes sent)`,
        nonRetryable: true,
        details: [progressOf(job)],
      });
    },

    /**
     * Where is the VM after an interrupted move? Stops the job if it still runs, then makes the inventory agree with
     * the agents. The workflow decides what to do next from the answer.
     */
    async settleVm(input: {
      migrationId: string;
      vmId: string;
      jobId: string;
      from: ServerIncarnation;
      to: ServerIncarnation;
    }): Promise<{ location: 'source' | 'target' | 'gone' | 'lost'; figures?: MoveFigures }> {
      const vm = await orNull(inventory.getVm(input.vmId));
      if (!vm || vm.state === 'deleted') return { location: 'gone' };
      const source = await agents.forServer(input.from.serverId);
      let job = await source.getMigration(input.jobId);
      if (job?.state === 'running') {
        try {
          await source.cancelMigration(input.jobId);
        } catch {
          // finished in the meantime; the poll below tells how
        }
        job = await pollUntilDone(
          source,
          input.jobId,
          () => undefined,
          (ms) => new Promise((r) => setTimeout(r, ms)),
        );
      }
      if (job?.state === 'completed') {
        await recordArrival(input);
        return { location: 'target', figures: figuresOf(job) };
      }
      // No finished job to go by (the agent lost it, or never started it): ask both agents, not the inventory — an
      // agent that restarted took its VMs with it, and the inventory cannot know.
      const target = await agents.forServer(input.to.serverId);
      const [onSource, onTarget] = await Promise.all([source.getVm(input.vmId), target.getVm(input.vmId)]);
      if (onTarget?.incarnationId === input.to.incarnationId) {
        await recordArrival(input);
        return { location: 'target' };
      }
      if (onSource?.incarnationId === input.from.incarnationId) return { location: 'source' };
      return { location: 'lost' };
    },
  };
}

import { Client, type Pool } from 'pg';
import type { Logger } from '../common/logger';
import type { Metrics } from '../common/metrics';
import { createAgentClient } from '../compute/agent-client';
import type { AgentClientTls } from '../compute/agent-tls';
import { DEPROVISION_CHANNEL, type Inventory } from '../inventory';

export interface SchedulerOptions {
  inventory: Inventory;
  /** For LISTEN: a dedicated connection, not one from the pool. */
  databaseUrl: string;
  schedulerId: string;
  logger: Logger;
  /** The control plane's agent-plane certificate (compute/agent-tls.ts). */
  agentTls: AgentClientTls;
  /** The sweep catches rows written while this scheduler was down or a notification was missed. */
  sweepIntervalMs?: number;
  /** A claim older than this is taken to belong to a dead scheduler and may be claimed again. */
  staleClaimMs?: number;
  /** De-provisionings done and failed are counted here when given. */
  metrics?: Metrics;
}

export interface RunningScheduler {
  /** Handles whatever is pending now; resolves with how many jobs it completed. */
  drain(): Promise<number>;
  /** Whether the LISTEN connection is up (readiness; without it the scheduler still works from the sweep, late). */
  listening(): boolean;
  stop(): Promise<void>;
}

/**
 * The scheduler microservice of claim 5: when a migration deletes the old host incarnation, it tears the incarnation
 * down on that server's agent and returns the server to the pool. Woken by LISTEN/NOTIFY, with a periodic sweep.
 * Two schedulers never process one row twice: claims use FOR UPDATE SKIP LOCKED.
 */
export async function startScheduler(opts: SchedulerOptions): Promise<RunningScheduler> {
  const { inventory, logger, schedulerId } = opts;
  const sweepMs = opts.sweepIntervalMs ?? 5_000;
  let stopped = false;
  let running: Promise<number> | null = null;
  let again = false;

  const processOnce = async (): Promise<number> => {
    let done = 0;
    for (;;) {
      const jobs = await inventory.claimDeprovisionJobs({ schedulerId, limit: 10, staleAfterMs: opts.staleClaimMs ?? 60_000 });
      if (jobs.length === 0) return done;
      for (const job of jobs) {
        try {
          const agent = createAgentClient({ baseUrl: job.agentUrl, tls: opts.agentTls, timeoutMs: 10_000 });
          await agent.teardownIncarnation(job.incarnationId);
          await inventory.completeDeprovisionJob({ jobId: job.id, schedulerId });
          done++;
          opts.metrics?.deprovisions.inc({ outcome: 'done' });
          logger.info({ jobId: job.id, serverId: job.serverId, incarnationId: job.incarnationId, afterState: job.afterState }, 'de-provisioned server');
        } catch (err) {
          // Left claimed: once the claim goes stale a sweep (here or in another scheduler) tries again.
          opts.metrics?.deprovisions.inc({ outcome: 'failed' });
          logger.warn({ err, jobId: job.id, serverId: job.serverId }, 'de-provisioning failed; will retry');
        }
      }
    }
  };

  /** Coalesces wake-ups: one pass at a time, and one more if something arrived during it. */
  const wake = (): Promise<number> => {
    if (stopped) return Promise.resolve(0);
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      let total = 0;
      do {
        again = false;
        try {
          total += await processOnce();
        } catch (err) {
          logger.error({ err }, 'scheduler pass failed');
        }
      } while (again && !stopped);
      return total;
    })().finally(() => {
      running = null;
    });
    return running;
  };

  let listener: Client | null = null;
  const listen = async () => {
    const client = new Client({ connectionString: opts.databaseUrl });
    client.on('notification', () => void wake());
    client.on('error', (err) => {
      logger.warn({ err }, 'LISTEN connection lost; relying on the sweep until it is back');
      listener = null;
      void client.end().catch(() => undefined);
    });
    await client.connect();
    await client.query(`LISTEN ${DEPROVISION_CHANNEL}`);
    listener = client;
  };
  await listen();
  const timer = setInterval(() => {
    if (!listener && !stopped) listen().catch((err) => logger.warn({ err }, 'LISTEN reconnect failed'));
    void wake();
  }, sweepMs);
  void wake(); // rows written while no scheduler was running

  return {
    listening: () => listener !== null,
    drain: async () => {
      let total = 0;
      for (;;) {
        const n = await wake();
        total += n;
        if (n === 0 && !running) return total;
      }
    },
    stop: async () => {
      stopped = true;
      clearInterval(timer);
      await running;
      await listener?.end().catch(() => undefined);
    },
  };
}

export type { Pool };

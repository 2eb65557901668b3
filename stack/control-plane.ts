import { Client } from '@temporalio/client';
import type { NativeConnection, Worker } from '@temporalio/worker';
import { Pool } from 'pg';
import { apiSecurityFromEnv, startApiServer, type RunningApiServer } from '../api/server';
import { createHostService, type HostService } from '../api/host-service';
import type { Env } from '../common/config';
import type { Logger } from '../common/logger';
import type { Metrics } from '../common/metrics';
import { stopInReverse } from '../common/stop-in-reverse';
import { connectTemporalClient, connectTemporalWorker } from '../common/temporal-connection';
import { createAgentDirectory, type AgentDirectory } from '../compute/agent-directory';
import type { AgentClientTls } from '../compute/agent-tls';
import { createInventory, type Inventory } from '../inventory';
import { migrateDatabase } from '../inventory/migrate';
import { createMigrationWorker, type MigrationWorkerOptions } from '../workers/migration-worker';
import { startScheduler, type RunningScheduler, type SchedulerOptions } from '../workers/scheduler';

/**
 * The composition root: the one place dhm's control plane is put together — pool → inventory → agent directory →
 * worker → scheduler → host service → API. `dhm up`, the per-role commands (`dhm worker|scheduler|api`), the tests'
 * stack and the bench build through it and differ only in the roles they ask for.
 */

/** The inventory's Postgres pool, migrated, and the inventory over it. */
export interface InventoryStore {
  pool: Pool;
  inventory: Inventory;
  close(): Promise<void>;
}

/** The pool's limits (DATABASE_* in common/config.ts); the defaults are the environment's. */
export interface DatabaseLimits {
  statementTimeoutMs: number;
  idleInTransactionTimeoutMs: number;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
}

export const databaseLimitsFrom = (env: Env): DatabaseLimits => ({
  statementTimeoutMs: env.DATABASE_STATEMENT_TIMEOUT_MS,
  idleInTransactionTimeoutMs: env.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS,
  connectTimeoutMs: env.DATABASE_CONNECT_TIMEOUT_MS,
  idleTimeoutMs: env.DATABASE_IDLE_TIMEOUT_MS,
});

const DEFAULT_LIMITS: DatabaseLimits = { statementTimeoutMs: 30_000, idleInTransactionTimeoutMs: 60_000, connectTimeoutMs: 10_000, idleTimeoutMs: 30_000 };

export async function openInventoryStore(o: { databaseUrl: string; poolSize: number; logger: Logger; limits?: DatabaseLimits }): Promise<InventoryStore> {
  const l = o.limits ?? DEFAULT_LIMITS;
  const pool = new Pool({
    connectionString: o.databaseUrl,
    max: o.poolSize,
    // Bounded everywhere: a flood queues for at most connectTimeoutMs, a query runs at most statementTimeoutMs.
    connectionTimeoutMillis: l.connectTimeoutMs,
    idleTimeoutMillis: l.idleTimeoutMs,
    statement_timeout: l.statementTimeoutMs,
    idle_in_transaction_session_timeout: l.idleInTransactionTimeoutMs,
  });
  pool.on('error', (err) => o.logger.warn({ err }, 'idle Postgres connection failed'));
  try {
    await migrateDatabase(pool);
  } catch (err) {
    await pool.end();
    throw new Error(`DATABASE_URL: ${(err as Error).message}`);
  }
  return { pool, inventory: createInventory(pool), close: () => pool.end() };
}

/** What the control plane presents to host agents (one object, so how agents are authenticated has one home). */
export interface AgentCredentials {
  /** The control plane's client certificate for the agent plane (mTLS with the fleet CA; compute/agent-tls.ts). */
  tls: AgentClientTls;
}

/** The agent of each server, found through the inventory. */
export function agentDirectoryFor(inventory: Inventory, credentials: AgentCredentials): AgentDirectory {
  return createAgentDirectory({ lookupAgentUrl: async (id) => (await inventory.getServer(id)).agentUrl, tls: credentials.tls });
}

export interface ControlPlaneOptions {
  env: Env;
  logger: Logger;
  store: InventoryStore;
  agentCredentials: AgentCredentials;
  /** Default: the directory over the inventory (`agentDirectoryFor`); the bench passes a timed one. */
  agents?: AgentDirectory;
  temporal: { address?: string; namespace: string; taskQueue: string };
  /** Run a migration worker (workflows + activities) in this process. */
  worker?: Partial<Pick<MigrationWorkerOptions, 'workflowBundle' | 'identity' | 'shutdownGraceTime' | 'metrics'>>;
  /** Run the de-provisioning scheduler in this process. */
  scheduler?: { databaseUrl: string } & Partial<Pick<SchedulerOptions, 'schedulerId' | 'sweepIntervalMs' | 'staleClaimMs' | 'metrics'>>;
  /** Build the host service (tenant VM requests) — implied by `api`. */
  hostService?: boolean;
  /** Serve the HTTP API in this process. */
  api?: { operatorToken: string; host?: string; port: number; metrics?: Metrics; sealingKey?: string };
}

export interface ControlPlane {
  inventory: Inventory;
  agents: AgentDirectory;
  /** The Temporal client (when a host service or API runs here). */
  temporal: { client: Client; taskQueue: string; namespace: string } | null;
  worker: { worker: Worker; connection: NativeConnection } | null;
  scheduler: RunningScheduler | null;
  hostService: HostService | null;
  api: RunningApiServer | null;
  /** Stops what this control plane started, in reverse order (the store stays: its opener closes it). */
  stop(): Promise<void>;
}

export async function startControlPlane(o: ControlPlaneOptions): Promise<ControlPlane> {
  const { env, logger, store } = o;
  const { inventory } = store;
  const stops: Array<() => Promise<void>> = [];
  const stop = () => stopInReverse(stops, logger, 'the control plane');
  try {
    const agents = o.agents ?? agentDirectoryFor(inventory, o.agentCredentials);
    const { namespace, taskQueue } = o.temporal;

    let worker: ControlPlane['worker'] = null;
    if (o.worker) {
      const connection = await connectTemporalWorker(env, o.temporal.address);
      stops.push(() => connection.close());
      const w = await createMigrationWorker({ connection, namespace, taskQueue, inventory, agents, ...o.worker });
      const running = w.run();
      stops.push(async () => {
        if (w.getState() === 'RUNNING') w.shutdown();
        await running;
      });
      worker = { worker: w, connection };
    }

    let scheduler: RunningScheduler | null = null;
    if (o.scheduler) {
      scheduler = await startScheduler({
        inventory,
        schedulerId: `scheduler-${process.pid}`,
        logger: logger.child({ component: 'scheduler' }),
        agentTls: o.agentCredentials.tls,
        ...o.scheduler,
      });
      stops.push(scheduler.stop);
    }

    let temporal: ControlPlane['temporal'] = null;
    let hostService: HostService | null = null;
    let api: RunningApiServer | null = null;
    if (o.hostService || o.api) {
      const connection = await connectTemporalClient(env, o.temporal.address);
      stops.push(() => connection.close());
      temporal = { client: new Client({ connection, namespace }), taskQueue, namespace };
      hostService = createHostService({ inventory, agents, temporal, logger: logger.child({ component: 'host-service' }) });
    }
    if (o.api && temporal && hostService) {
      api = await startApiServer({
        inventory,
        hostService,
        temporal,
        pool: store.pool,
        logger: logger.child({ component: 'api' }),
        ...apiSecurityFromEnv(env),
        ...o.api,
      });
      stops.push(api.stop);
    }
    return { inventory, agents, temporal, worker, scheduler, hostService, api, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

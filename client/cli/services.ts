import { Connection, Client } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import type { Command } from 'commander';
import { Pool } from 'pg';
import { createAgentDirectory } from '../../activities/agent-directory';
import { loadEnv, type Env } from '../../common/config';
import { UserFacingError } from '../../common/errors';
import { createLogger, type Logger } from '../../common/logger';
import { installTemporalRuntime } from '../../common/temporal-runtime';
import { startFleetAgents } from '../../compute/fleet-agents';
import { createInventory } from '../../inventory';
import { loadFleetFile } from '../../inventory/fleet-file';
import { migrateDatabase } from '../../inventory/migrate';
import { createMigrationWorker } from '../../workers/migration-worker';
import { startScheduler } from '../../workers/scheduler';
import { startApiServer } from '../api/server';
import { createHostService } from '../host-service';
import { untilSignal } from './up';

/** What every long-running service needs from the environment; one line naming the variable when missing. */
function required(env: Env, name: 'DATABASE_URL' | 'TEMPORAL_ADDRESS'): string {
  const v = env[name];
  if (!v) throw new UserFacingError(`${name}: required for this service (\`dhm up\` runs everything with embedded defaults)`, name);
  return v;
}

async function openInventory(env: Env, logger: Logger) {
  const pool = new Pool({ connectionString: required(env, 'DATABASE_URL'), max: env.DATABASE_POOL_SIZE });
  pool.on('error', (err) => logger.warn({ err }, 'idle Postgres connection failed'));
  try {
    await migrateDatabase(pool);
  } catch (err) {
    await pool.end();
    throw new Error(`DATABASE_URL: ${(err as Error).message}`);
  }
  return { pool, inventory: createInventory(pool) };
}

function agentDirectory(env: Env, inventory: ReturnType<typeof createInventory>) {
  return createAgentDirectory({ lookupAgentUrl: async (id) => (await inventory.getServer(id)).agentUrl, secret: env.DHM_AGENT_SECRET });
}

/** Runs `body` until SIGTERM/SIGINT, then its stop function; exits 0 after a clean stop. */
async function serve(name: string, body: (env: Env, logger: Logger) => Promise<() => Promise<void>>): Promise<void> {
  const env = loadEnv();
  const logger = createLogger(name, env.LOG_LEVEL);
  const signal = untilSignal();
  const stop = await body(env, logger);
  logger.info('ready');
  logger.info({ signal: await signal }, 'stopping');
  await stop();
  process.exit(0);
}

/** The separate processes of a production deployment; one image, the command selects the role. */
export function registerServiceCommands(program: Command): void {
  program
    .command('worker')
    .description('run a migration worker (workflows + activities) on TEMPORAL_TASK_QUEUE; SIGTERM hands moves over')
    .action(() =>
      serve('migration-worker', async (env, logger) => {
        installTemporalRuntime(logger);
        const { pool, inventory } = await openInventory(env, logger);
        const connection = await NativeConnection.connect({ address: required(env, 'TEMPORAL_ADDRESS') });
        const worker = await createMigrationWorker({ connection, namespace: env.TEMPORAL_NAMESPACE, taskQueue: env.TEMPORAL_TASK_QUEUE, inventory, agents: agentDirectory(env, inventory) });
        const running = worker.run();
        return async () => {
          if (worker.getState() === 'RUNNING') worker.shutdown();
          await running;
          await connection.close();
          await pool.end();
        };
      }),
    );

  program
    .command('scheduler')
    .description('run the scheduler that de-provisions servers whose host incarnation was deleted')
    .action(() =>
      serve('scheduler', async (env, logger) => {
        const { pool, inventory } = await openInventory(env, logger);
        const scheduler = await startScheduler({ inventory, databaseUrl: required(env, 'DATABASE_URL'), schedulerId: `scheduler-${process.pid}`, logger, agentSecret: env.DHM_AGENT_SECRET });
        return async () => {
          await scheduler.stop();
          await pool.end();
        };
      }),
    );

  program
    .command('api')
    .description('run the HTTP API')
    .action(() =>
      serve('api', async (env, logger) => {
        if (!env.DHM_OPERATOR_TOKEN) throw new UserFacingError('DHM_OPERATOR_TOKEN: required for the API service', 'DHM_OPERATOR_TOKEN');
        const { pool, inventory } = await openInventory(env, logger);
        const connection = await Connection.connect({ address: required(env, 'TEMPORAL_ADDRESS') });
        const client = new Client({ connection, namespace: env.TEMPORAL_NAMESPACE });
        const temporal = { client, taskQueue: env.TEMPORAL_TASK_QUEUE };
        const hostService = createHostService({ inventory, agents: agentDirectory(env, inventory), temporal, logger });
        const api = await startApiServer({ inventory, hostService, temporal, pool, operatorToken: env.DHM_OPERATOR_TOKEN, logger, host: env.DHM_API_HOST, port: env.DHM_API_PORT });
        return async () => {
          await api.stop();
          await connection.close();
          await pool.end();
        };
      }),
    );

  program
    .command('agents')
    .description('run sim host agents for the servers of a fleet file and register them in the inventory')
    .option('--fleet <file>', 'fleet file (default DHM_FLEET_FILE or the built-in default)')
    .action((o: { fleet?: string }) =>
      serve('agents', async (env, logger) => {
        const fleet = loadFleetFile(o.fleet ?? env.DHM_FLEET_FILE);
        const { pool, inventory } = await openInventory(env, logger);
        const agents = await startFleetAgents(fleet, { timeScale: env.DHM_TIME_SCALE, secret: env.DHM_AGENT_SECRET, logger });
        await inventory.seedFleet(fleet, new Map([...agents.agents].map(([id, a]) => [id, a.url])), { actor: 'agents' });
        return async () => {
          await agents.stop();
          await pool.end();
        };
      }),
    );
}

import * as path from 'node:path';
import type { Command } from 'commander';
import type { Pool } from 'pg';
import { loadEnv, type Env } from '../common/config';
import { UserFacingError } from '../common/errors';
import { createLogger, type Logger } from '../common/logger';
import { createMetrics, type Metrics } from '../common/metrics';
import { startOpsServer, type ReadinessCheck } from '../common/ops-server';
import { connectTemporalClient } from '../common/temporal-connection';
import { installTemporalRuntime } from '../common/temporal-runtime';
import { ensureAgentPki, loadControlPlaneTls, loadServerTls, revokeServer, rotateServer } from '../compute/agent-tls';
import { startFleetAgents } from '../compute/fleet-agents';
import { loadFleetFile } from '../inventory/fleet-file';
import {
  databaseLimitsFrom,
  openInventoryStore,
  startControlPlane,
  type AgentCredentials,
  type ControlPlaneOptions,
  type InventoryStore,
} from '../stack/control-plane';
import { requireSearchAttributes } from '../stack/temporal-namespace';
import { ensureTemporalPki } from '../stack/temporal-tls';
import { untilSignal } from './up';

/** What every long-running service needs from the environment; one line naming the variable when missing. */
function required(env: Env, name: 'DATABASE_URL' | 'TEMPORAL_ADDRESS' | 'DHM_AGENT_TLS_DIR' | 'DHM_AGENT_CLIENT_TLS_DIR'): string {
  const v = env[name];
  if (!v) throw new UserFacingError(`${name}: required for this service (\`dhm up\` runs everything with embedded defaults)`, name);
  return v;
}

function openStore(env: Env, logger: Logger): Promise<InventoryStore> {
  return openInventoryStore({ databaseUrl: required(env, 'DATABASE_URL'), poolSize: env.DATABASE_POOL_SIZE, limits: databaseLimitsFrom(env), logger });
}

/**
 * Before a role that starts or lists migrations touches anything: dhm's search attributes are on the namespace (a
 * migration cannot start without them). Refused in one line naming what is missing and how to register it.
 */
async function checkNamespace(env: Env): Promise<void> {
  const connection = await connectTemporalClient(env);
  try {
    await requireSearchAttributes(connection, env.TEMPORAL_NAMESPACE);
  } finally {
    await connection.close();
  }
}

/** The control plane's certificate for calling agents (`dhm pki`'s control-plane folder): required, checked at start. */
export function controlPlaneAgentCredentials(env: Env): AgentCredentials {
  return { tls: loadControlPlaneTls(required(env, 'DHM_AGENT_CLIENT_TLS_DIR'), 'DHM_AGENT_CLIENT_TLS_DIR') };
}

/** The control plane for one role, on the configured Temporal namespace and task queue. */
function controlPlane(env: Env, logger: Logger, store: InventoryStore, roles: Partial<Pick<ControlPlaneOptions, 'worker' | 'scheduler' | 'api'>>) {
  return startControlPlane({
    env,
    logger,
    store,
    agentCredentials: controlPlaneAgentCredentials(env),
    temporal: { namespace: env.TEMPORAL_NAMESPACE, taskQueue: env.TEMPORAL_TASK_QUEUE },
    ...roles,
  });
}

/**
 * The ops endpoints (/healthz, /readyz, /metrics) of a role without an HTTP API, on DHM_METRICS_PORT when set.
 * Returns its stop function (a no-op when the port is unset).
 */
async function opsEndpoints(env: Env, logger: Logger, metrics: Metrics, readiness: Record<string, ReadinessCheck>): Promise<() => Promise<void>> {
  if (env.DHM_METRICS_PORT === undefined) return async () => undefined;
  const ops = await startOpsServer({ host: env.DHM_METRICS_HOST, port: env.DHM_METRICS_PORT, metrics, readiness, logger });
  return ops.stop;
}

const postgresAnswers =
  (pool: Pool): ReadinessCheck =>
  async () =>
    void (await pool.query('SELECT 1'));

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
        const sdkMetrics = env.DHM_TEMPORAL_METRICS_PORT;
        installTemporalRuntime(logger, sdkMetrics === undefined ? {} : { metricsBindAddress: `${bindHost(env.DHM_METRICS_HOST)}:${sdkMetrics}` });
        await checkNamespace(env);
        const store = await openStore(env, logger);
        const metrics = createMetrics({ role: 'worker' });
        const plane = await controlPlane(env, logger, store, { worker: { metrics } });
        const { worker, connection } = plane.worker!;
        const stopOps = await opsEndpoints(env, logger, metrics, {
          postgres: postgresAnswers(store.pool),
          temporal: async () => void (await connection.withDeadline(Date.now() + 2_000, () => connection.workflowService.getSystemInfo({}))),
          worker: async () => {
            if (worker.getState() !== 'RUNNING') throw new Error(`worker is ${worker.getState()}`);
          },
        });
        return async () => {
          await plane.stop();
          await stopOps();
          await store.close();
        };
      }),
    );

  program
    .command('scheduler')
    .description('run the scheduler that de-provisions servers whose host incarnation was deleted')
    .action(() =>
      serve('scheduler', async (env, logger) => {
        const store = await openStore(env, logger);
        const metrics = createMetrics({ role: 'scheduler' });
        const plane = await controlPlane(env, logger, store, { scheduler: { databaseUrl: required(env, 'DATABASE_URL'), metrics } });
        const scheduler = plane.scheduler!;
        const stopOps = await opsEndpoints(env, logger, metrics, {
          postgres: postgresAnswers(store.pool),
          listen: async () => {
            if (!scheduler.listening()) throw new Error('LISTEN connection down (sweeping only)');
          },
        });
        return async () => {
          await stopOps();
          await plane.stop();
          await store.close();
        };
      }),
    );

  program
    .command('api')
    .description('run the HTTP API')
    .action(() =>
      serve('api', async (env, logger) => {
        if (!env.DHM_OPERATOR_TOKEN) throw new UserFacingError('DHM_OPERATOR_TOKEN: required for the API service', 'DHM_OPERATOR_TOKEN');
        await checkNamespace(env);
        const store = await openStore(env, logger);
        const plane = await controlPlane(env, logger, store, {
          api: { operatorToken: env.DHM_OPERATOR_TOKEN, host: env.DHM_API_HOST, port: env.DHM_API_PORT, metrics: createMetrics({ role: 'api' }) },
        });
        return async () => {
          await plane.stop();
          await store.close();
        };
      }),
    );

  program
    .command('agents')
    .description('run sim host agents for the servers of a fleet file (mTLS with the certificates of DHM_AGENT_TLS_DIR; no database)')
    .option('--fleet <file>', 'fleet file (default DHM_FLEET_FILE or the built-in default)')
    .action((o: { fleet?: string }) =>
      serve('agents', async (env, logger) => {
        const fleet = loadFleetFile(o.fleet ?? env.DHM_FLEET_FILE);
        // Credentials before anything else: without them nothing is bound and nothing is connected to.
        const tlsDir = required(env, 'DHM_AGENT_TLS_DIR');
        const creds = new Map(
          fleet.servers.filter((s) => s.backend === 'sim').map((s) => [s.id, loadServerTls(path.join(tlsDir, s.id), s.id, 'DHM_AGENT_TLS_DIR')]),
        );
        const metrics = createMetrics({ role: 'agents' });
        const agents = await startFleetAgents(fleet, {
          timeScale: env.DHM_TIME_SCALE,
          tls: (id) => creds.get(id)!,
          faultRoutes: env.DHM_AGENT_FAULTS,
          logger,
          host: env.DHM_AGENT_HOST,
          ...(env.DHM_AGENT_ADVERTISE_HOST ? { advertiseHost: env.DHM_AGENT_ADVERTISE_HOST } : {}),
          metrics,
        });
        // Agents hold no database credentials: the inventory learns their URLs from `dhm fleet-seed` (or `dhm up`).
        const stopOps = await opsEndpoints(
          env,
          logger,
          metrics,
          Object.fromEntries(
            [...agents.agents.values()].map((a) => [
              a.serverId,
              async () => {
                if (!a.ready()) throw new Error('agent is stopping');
              },
            ]),
          ),
        );
        logger.info({ agents: Object.fromEntries([...agents.agents].map(([id, a]) => [id, a.url])) }, 'agents listening');
        return async () => {
          await stopOps();
          await agents.stop();
        };
      }),
    );

  program
    .command('fleet-seed')
    .description("seed the inventory with a fleet file's servers and their agents' URLs (https://<agent host>:<agentPort>)")
    .option('--fleet <file>', 'fleet file (default DHM_FLEET_FILE or the built-in default)')
    .requiredOption('--agent-host <host>', 'the host name the agents are reached by (as DHM_AGENT_ADVERTISE_HOST of `dhm agents`)')
    .action(async (o: { fleet?: string; agentHost: string }) => {
      const env = loadEnv();
      const logger = createLogger('fleet-seed', env.LOG_LEVEL);
      const fleet = loadFleetFile(o.fleet ?? env.DHM_FLEET_FILE);
      const unported = fleet.servers.find((s) => s.agentPort === 0);
      if (unported) throw new UserFacingError(`--fleet: server ${unported.id} has no agentPort (its agent's URL cannot be known ahead)`, 'fleet');
      const store = await openStore(env, logger);
      try {
        const urls = new Map(fleet.servers.map((s) => [s.id, `https://${o.agentHost}:${s.agentPort}`]));
        const seeded = await store.inventory.seedFleet(fleet, urls, { actor: 'fleet-seed' });
        process.stdout.write(`${JSON.stringify(seeded)}\n`);
      } finally {
        await store.close();
      }
    });

  program
    .command('pki')
    .description(
      "make (once) the agent plane's fleet CA, the control plane's certificate and one per server of a fleet file; or rotate or revoke a server's certificates",
    )
    .option('--fleet <file>', 'fleet file (default DHM_FLEET_FILE or the built-in default)')
    .requiredOption(
      '--out <dir>',
      "folder (0700): ca/ (keep its key here), control-plane/ (DHM_AGENT_CLIENT_TLS_DIR), servers/ (DHM_AGENT_TLS_DIR), temporal/ (Temporal frontend's mTLS: server/, client/, ui/, its own ca/)",
    )
    .option('--temporal-name <names>', "extra DNS names (comma-separated) for the Temporal frontend's certificate, besides temporal-frontend and localhost")
    .option('--rotate <serverId>', "new keys and certificates for this server, the old ones revoked (restart only that server's agent)")
    .option('--revoke <serverId>', "revoke this server's certificates: agents and the control plane refuse them from their next call")
    .action(async (o: { fleet?: string; out: string; rotate?: string; revoke?: string; temporalName?: string }) => {
      const root = path.resolve(o.out);
      if (o.rotate && o.revoke) throw new UserFacingError('--rotate, --revoke: one at a time', '--rotate');
      if (o.revoke) {
        process.stdout.write(`${JSON.stringify({ revoked: revokeServer(root, o.revoke, '--revoke'), server: o.revoke })}\n`);
        return;
      }
      if (o.rotate) {
        process.stdout.write(`${JSON.stringify({ rotated: o.rotate, ...(await rotateServer(root, o.rotate, '--rotate')) })}\n`);
        return;
      }
      const names = (o.temporalName ?? '')
        .split(',')
        .map((n) => n.trim())
        .filter(Boolean);
      const bad = names.find((n) => !/^[A-Za-z0-9.-]{1,253}$/.test(n));
      if (bad !== undefined) throw new UserFacingError(`--temporal-name: ${JSON.stringify(bad)} is not a DNS name`, '--temporal-name');
      const env = loadEnv();
      const fleet = loadFleetFile(o.fleet ?? env.DHM_FLEET_FILE);
      const pki = await ensureAgentPki(
        root,
        fleet.servers.map((s) => s.id),
        { field: '--out' },
      );
      const temporal = await ensureTemporalPki(path.join(root, 'temporal'), { names, field: '--out' });
      process.stdout.write(
        `${JSON.stringify({ ca: pki.caDir, controlPlane: pki.controlPlaneDir, servers: path.join(pki.root, 'servers'), temporal: { server: temporal.serverDir, client: temporal.clientDir, ui: temporal.uiDir } })}\n`,
      );
    });
}

/** The SDK's exporter takes `host:port`; an IPv6 literal needs brackets. */
function bindHost(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client } from '@temporalio/client';
import { Pool } from 'pg';
import { createAgentDirectory, type AgentDirectory } from '../activities/agent-directory';
import type { Env } from '../common/config';
import type { Fleet } from '../common/fleet';
import type { Logger } from '../common/logger';
import { connectTemporalClient, connectTemporalWorker } from '../common/temporal-connection';
import { installTemporalRuntime } from '../common/temporal-runtime';
import { createAgentClient } from '../compute/agent-client';
import { startFleetAgents, type FleetAgentsOptions } from '../compute/fleet-agents';
import { createInventory, type Inventory } from '../inventory';
import { loadFleetFile } from '../inventory/fleet-file';
import { migrateDatabase } from '../inventory/migrate';
import { createMigrationWorker } from '../workers/migration-worker';
import { startScheduler } from '../workers/scheduler';
import { startApiServer } from './api/server';
import { startDevStack, type DevStack, type DevStackOptions } from './dev-stack';
import { createHostService, type HostService } from './host-service';
import { stopInReverse } from '../common/stop-in-reverse';

export interface Credentials {
  apiUrl: string;
  operatorToken: string;
  temporalAddress: string;
  temporalUiUrl: string | null;
}

export interface EmbeddedSystem {
  stack: DevStack;
  inventory: Inventory;
  agents: AgentDirectory;
  hostService: HostService;
  temporal: { client: Client; taskQueue: string; namespace: string };
  fleet: Fleet;
  credentials: Credentials;
  credentialsFile: string;
  stop(): Promise<void>;
}

export function credentialsPath(env: Env): string {
  return path.join(env.DHM_HOME, 'credentials.json');
}

/**
 * Everything `dhm up` runs in one foreground process: Postgres and the Temporal dev server (or external ones), one
 * host agent per server of the fleet file (sim ones unless `backendFilter` lets others run), a migration worker, the
 * scheduler and the HTTP API.
 */
export async function startEmbeddedSystem(opts: {
  env: Env;
  logger: Logger;
  fleet?: Fleet;
  timeScale?: number;
  stateDir?: string;
  apiPort?: number;
  /** Which fleet servers get an agent here (default: the `sim` ones; `qemu` servers run real VMs: opt in). */
  backendFilter?: FleetAgentsOptions['backendFilter'];
  /** Options of the `qemu` agents. */
  qemu?: FleetAgentsOptions['qemu'];
  /**
   * Agents already running elsewhere (a testbed's, inside their namespaces), by server id: none is started here, and
   * no bearer secret is sent to them (it would cross their network in plaintext; they take none).
   */
  externalAgents?: ReadonlyMap<string, string>;
  /** Cluster mode (DHM_TEMPORAL_MODE=cluster): schema upgrade, readiness deadline. */
  cluster?: DevStackOptions['cluster'];
}): Promise<EmbeddedSystem> {
  const { env, logger } = opts;
  installTemporalRuntime(logger);
  const stops: Array<() => Promise<void>> = [];
  const stopAll = () => stopInReverse(stops, logger, 'the embedded system');
  try {
    const stack = await startDevStack({ env, logger, stateDir: opts.stateDir, cluster: opts.cluster });
    stops.push(stack.stop);
    const pool = new Pool({ connectionString: stack.databaseUrl, max: env.DATABASE_POOL_SIZE });
    pool.on('error', (err) => logger.warn({ err }, 'idle Postgres connection failed'));
    stops.push(() => pool.end());
    await migrateDatabase(pool);
    const inventory = createInventory(pool);

    const fleet = opts.fleet ?? loadFleetFile(env.DHM_FLEET_FILE);
    const external = opts.externalAgents;
    const agentSecret = external ? undefined : (env.DHM_AGENT_SECRET ?? randomBytes(24).toString('base64url'));
    const fleetAgents = external
      ? { agents: new Map<string, { url: string }>(), stop: async () => undefined }
      : await startFleetAgents(fleet, {
          timeScale: opts.timeScale ?? env.DHM_TIME_SCALE,
          secret: agentSecret,
          logger: logger.child({ component: 'agent' }),
          backendFilter: opts.backendFilter,
          qemu: opts.qemu,
        });
    stops.push(() => fleetAgents.stop());
    const agentUrls = new Map(external ?? [...fleetAgents.agents].map(([id, a]) => [id, a.url]));
    await inventory.seedFleet(fleet, agentUrls, { actor: 'dhm-up' });
    if (agentSecret) await restoreSimulatedVms(inventory, agentUrls, agentSecret, logger);
    const agents = createAgentDirectory({ lookupAgentUrl: async (id) => (await inventory.getServer(id)).agentUrl, secret: agentSecret });

    // TLS / API key settings apply when the stack uses the configured TEMPORAL_ADDRESS, not its own dev server.
    const nativeConnection = await connectTemporalWorker(env, stack.temporalAddress);
    stops.push(() => nativeConnection.close());
    const connection = await connectTemporalClient(env, stack.temporalAddress);
    stops.push(() => connection.close());
    const client = new Client({ connection, namespace: stack.namespace });
    const taskQueue = env.TEMPORAL_TASK_QUEUE;

    const worker = await createMigrationWorker({ connection: nativeConnection, namespace: stack.namespace, taskQueue, inventory, agents });
    const running = worker.run();
    stops.push(async () => {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await running;
    });
    const scheduler = await startScheduler({ inventory, databaseUrl: stack.databaseUrl, schedulerId: `scheduler-${process.pid}`, logger: logger.child({ component: 'scheduler' }), agentSecret });
    stops.push(() => scheduler.stop());

    const hostService = createHostService({ inventory, agents, temporal: { client, taskQueue }, logger: logger.child({ component: 'host-service' }) });
    const operatorToken = env.DHM_OPERATOR_TOKEN ?? randomBytes(24).toString('base64url');
    const api = await startApiServer({
      inventory,
      hostService,
      temporal: { client, taskQueue },
      pool,
      operatorToken,
      logger: logger.child({ component: 'api' }),
      host: env.DHM_API_HOST,
      port: opts.apiPort ?? env.DHM_API_PORT,
    });
    stops.push(() => api.stop());

    const credentials: Credentials = { apiUrl: api.url, operatorToken, temporalAddress: stack.temporalAddress, temporalUiUrl: stack.uiUrl };
    const credentialsFile = path.join(opts.stateDir ?? env.DHM_HOME, 'credentials.json');
    fs.writeFileSync(credentialsFile, `${JSON.stringify(credentials, null, 2)}\n`, { mode: 0o600 });
    fs.chmodSync(credentialsFile, 0o600);
    stops.push(async () => fs.rmSync(credentialsFile, { force: true }));

    return { stack, inventory, agents, hostService, temporal: { client, taskQueue, namespace: stack.namespace }, fleet, credentials, credentialsFile, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/**
 * Sim agents keep VMs in memory, so after a restart of `dhm up` they are empty while the inventory still lists the
 * tenants' VMs. Recreate them from the inventory so the embedded fleet matches what tenants were told.
 */
async function restoreSimulatedVms(inventory: Inventory, agentUrls: Map<string, string>, secret: string, logger: Logger): Promise<void> {
  let restored = 0;
  for (const host of await inventory.listHosts()) {
    for (const incarnation of await inventory.listIncarnations({ dedicatedHostId: host.id })) {
      const url = agentUrls.get(incarnation.serverId);
      if (!url) continue;
      const agent = createAgentClient({ baseUrl: url, secret });
      await agent.prepareIncarnation({ incarnationId: incarnation.id, capacity: incarnation.capacity });
      for (const vm of await inventory.listVms({ dedicatedHostId: host.id })) {
        if (vm.incarnationId !== incarnation.id || vm.state !== 'running') continue;
        const workload = vm.workload as { dirtyRateMiBps?: number; workingSetMiB?: number };
        const spec = {
          ...vm.spec,
          ...(typeof workload.dirtyRateMiBps === 'number' && typeof workload.workingSetMiB === 'number'
            ? { workload: { dirtyRateMiBps: workload.dirtyRateMiBps, workingSetMiB: workload.workingSetMiB } }
            : {}),
        };
        await agent.createVm({ vmId: vm.id, incarnationId: incarnation.id, spec });
        restored++;
      }
    }
  }
  if (restored) logger.info({ restored }, 'recreated simulated VMs from the inventory');
}

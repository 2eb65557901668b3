import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AgentDirectory } from '../compute/agent-directory';
import type { Env } from '../common/config';
import type { Fleet, FleetServer } from '../common/fleet';
import { UserFacingError } from '../common/errors';
import type { Logger } from '../common/logger';
import { installTemporalRuntime } from '../common/temporal-runtime';
import { createAgentClient } from '../compute/agent-client';
import { ensureAgentPki, type AgentClientTls, type AgentPki } from '../compute/agent-tls';
import { startFleetAgents, type FleetAgentsOptions } from '../compute/fleet-agents';
import { vmSpecOf, type Inventory } from '../inventory';
import { loadFleetFile } from '../inventory/fleet-file';
import { startDevStack, type DevStack, type DevStackOptions } from '.';
import type { HostService } from '../api/host-service';
import { databaseLimitsFrom, openInventoryStore, startControlPlane, type ControlPlane } from './control-plane';
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
  temporal: NonNullable<ControlPlane['temporal']>;
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
   * Agents already running elsewhere (a testbed's, inside their namespaces), by server id: none is started here; they
   * are called with `externalAgentTls`, the control-plane certificate of their fleet's CA.
   */
  externalAgents?: ReadonlyMap<string, string>;
  externalAgentTls?: AgentClientTls;
  /** The agents' fault-injection routes (tests' stacks). Default: DHM_AGENT_FAULTS. */
  faultRoutes?: boolean;
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
    const store = await openInventoryStore({ databaseUrl: stack.databaseUrl, poolSize: env.DATABASE_POOL_SIZE, limits: databaseLimitsFrom(env), logger });
    stops.push(store.close);
    const { inventory } = store;

    const fleet = opts.fleet ?? loadFleetFile(env.DHM_FLEET_FILE);
    const external = opts.externalAgents;
    // The agent plane's PKI: made in <home>/pki on the first start (0700, keys 0600), reused after; nothing to configure.
    let agentTls: AgentClientTls;
    let pki: AgentPki | undefined;
    if (external) {
      if (!opts.externalAgentTls)
        throw new UserFacingError("externalAgentTls: required with externalAgents (their fleet CA's control-plane certificate)", 'externalAgentTls');
      agentTls = opts.externalAgentTls;
    } else {
      const filter = opts.backendFilter ?? ((s: FleetServer) => s.backend === 'sim');
      pki = await ensureAgentPki(
        path.join(opts.stateDir ?? env.DHM_HOME, 'pki'),
        fleet.servers.filter(filter).map((s) => s.id),
      );
      agentTls = pki.controlPlane;
    }
    const fleetAgents = !pki
      ? { agents: new Map<string, { url: string }>(), stop: async () => undefined }
      : await startFleetAgents(fleet, {
          timeScale: opts.timeScale ?? env.DHM_TIME_SCALE,
          tls: pki.server,
          faultRoutes: opts.faultRoutes ?? env.DHM_AGENT_FAULTS,
          logger: logger.child({ component: 'agent' }),
          backendFilter: opts.backendFilter,
          qemu: opts.qemu,
        });
    stops.push(() => fleetAgents.stop());
    const agentUrls = new Map(external ?? [...fleetAgents.agents].map(([id, a]) => [id, a.url]));
    await inventory.seedFleet(fleet, agentUrls, { actor: 'dhm-up' });
    if (!external) await restoreSimulatedVms(inventory, agentUrls, agentTls, logger);

    // TLS / API key settings apply when the stack uses the configured TEMPORAL_ADDRESS, not its own dev server.
    const operatorToken = env.DHM_OPERATOR_TOKEN ?? randomBytes(24).toString('base64url');
    const plane = await startControlPlane({
      env,
      logger,
      store,
      agentCredentials: { tls: agentTls },
      temporal: { address: stack.temporalAddress, namespace: stack.namespace, taskQueue: env.TEMPORAL_TASK_QUEUE },
      worker: {},
      scheduler: { databaseUrl: stack.databaseUrl },
      api: {
        operatorToken,
        host: env.DHM_API_HOST,
        port: opts.apiPort ?? env.DHM_API_PORT,
        sealingKey: env.DHM_API_SEALING_KEY ?? keptSecret(path.join(opts.stateDir ?? env.DHM_HOME, 'api-sealing.key')),
      },
    });
    stops.push(plane.stop);
    const api = plane.api!;
    const { agents } = plane;
    const hostService = plane.hostService!;
    const temporal = plane.temporal!;

    const credentials: Credentials = { apiUrl: api.url, operatorToken, temporalAddress: stack.temporalAddress, temporalUiUrl: stack.uiUrl };
    const credentialsFile = path.join(opts.stateDir ?? env.DHM_HOME, 'credentials.json');
    fs.writeFileSync(credentialsFile, `${JSON.stringify(credentials, null, 2)}\n`, { mode: 0o600 });
    fs.chmodSync(credentialsFile, 0o600);
    stops.push(async () => fs.rmSync(credentialsFile, { force: true }));

    return { stack, inventory, agents, hostService, temporal, fleet, credentials, credentialsFile, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/**
 * A secret generated once and kept in DHM_HOME (0600, owner only): the API's sealing key, so stored idempotent answers
 * survive a restart of `dhm up` and are never sealed with the operator token.
 */
function keptSecret(file: string): string {
  try {
    fs.chmodSync(file, 0o600);
    const v = fs.readFileSync(file, 'utf8').trim();
    if (v.length >= 32) return v;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const secret = randomBytes(32).toString('base64url');
  fs.writeFileSync(file, `${secret}\n`, { mode: 0o600 });
  fs.chmodSync(file, 0o600);
  return secret;
}

/**
 * Sim agents keep VMs in memory, so after a restart of `dhm up` they are empty while the inventory still lists the
 * tenants' VMs. Recreate them from the inventory so the embedded fleet matches what tenants were told.
 */
async function restoreSimulatedVms(inventory: Inventory, agentUrls: Map<string, string>, tls: AgentClientTls, logger: Logger): Promise<void> {
  let restored = 0;
  for (const host of await inventory.listHosts()) {
    for (const incarnation of await inventory.listIncarnations({ dedicatedHostId: host.id })) {
      const url = agentUrls.get(incarnation.serverId);
      if (!url) continue;
      const agent = createAgentClient({ baseUrl: url, tls, serverId: incarnation.serverId });
      await agent.prepareIncarnation({ incarnationId: incarnation.id, capacity: incarnation.capacity });
      for (const vm of await inventory.listVms({ dedicatedHostId: host.id })) {
        if (vm.incarnationId !== incarnation.id || vm.state !== 'running') continue;
        const spec = vmSpecOf(vm);
        await agent.createVm({ vmId: vm.id, incarnationId: incarnation.id, spec });
        restored++;
      }
    }
  }
  if (restored) logger.info({ restored }, 'recreated simulated VMs from the inventory');
}

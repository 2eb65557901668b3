import { randomBytes } from 'node:crypto';
import type { WorkflowHandle } from '@temporalio/client';
import type { Fleet, FleetServer } from '../../common/fleet';
import { createLogger } from '../../common/logger';
import type { MigrationPolicyInput, MigrationStatus, VmSpec } from '../../common/migration';
import { createActivities, type AgentDirectory } from '../../activities';
import { loadEnv } from '../../common/config';
import { startControlPlane } from '../../stack/control-plane';
import { createAgentClient, type AgentClient } from '../../compute/agent-client';
import { startFleetAgents, type FleetAgentsOptions } from '../../compute/fleet-agents';
import type { AgentClientTls } from '../../compute/agent-tls';
import { testAgentPki } from './agent-pki';
import { createInventory, type Inventory } from '../../inventory';
import { startMigration } from '../../client/migrations';
import { statusQuery } from '../../workflows/messages';
import type { migrateDedicatedHost } from '../../workflows/migrate-dedicated-host';
import type { RunningScheduler } from '../../workers/scheduler';
import { createTestDatabase, type TestDatabase } from './database';
import { testFleet } from './fleets';
import { connectTestTemporal, type RunningWorker, type TestTemporal } from './temporal';

export interface TestSystem {
  /** The control plane's agent-plane certificate (what the suite's control plane calls the agents with). */
  agentTls: AgentClientTls;
  db: TestDatabase;
  inventory: Inventory;
  temporal: TestTemporal;
  fleet: Fleet;
  agentUrls: Map<string, string>;
  agent(serverId: string): AgentClient;
  agents: AgentDirectory;
  worker: RunningWorker;
  scheduler: RunningScheduler;
  /**
   * A tenant with one dedicated host and `vms` VMs on it (sizes cycle through `memoryMiB`, dirty rates through
   * `dirtyRateMiBps`; or whole specs cycle through `specs` when given).
   */
  createHostWithVms(opts: {
    vms: number;
    memoryMiB?: number[];
    dirtyRateMiBps?: number[];
    specs?: VmSpec[];
    zone?: string;
    resourceClass?: string;
  }): Promise<{ tenantId: string; hostId: string; vmIds: string[] }>;
  startMigration(hostId: string, policy?: MigrationPolicyInput, targetServerId?: string): Promise<WorkflowHandle<typeof migrateDedicatedHost>>;
  status(hostId: string): Promise<MigrationStatus>;
  stop(): Promise<void>;
}

export interface TestSystemOptions {
  fleet?: Fleet;
  timeScale?: number;
  /** Which fleet servers get an agent (default: the `sim` ones); e.g. `(s) => s.backend === 'qemu'` for real VMs. */
  backendFilter?: (server: FleetServer) => boolean;
  /** Options of the `qemu` agents (`stateDir` is a root: one folder per server under it). */
  qemu?: FleetAgentsOptions['qemu'];
  /** Agents already running elsewhere (a testbed's, in their namespaces), by server id: none is started here. */
  externalAgents?: ReadonlyMap<string, string>;
  /** The control-plane certificate of the external agents' CA (a testbed's); default: the suite's own PKI. */
  externalAgentTls?: AgentClientTls;
  /** Another Temporal frontend than the suite's (the cluster tests). */
  temporalAddress?: string;
}

/** The real system in one test process: a database, host agents over HTTP (sim by default), a migration worker and a scheduler. */
export async function startTestSystem(opts: TestSystemOptions = {}): Promise<TestSystem> {
  const logger = createLogger('test', process.env.DHM_TEST_LOG_LEVEL ?? 'warn');
  const fleet = opts.fleet ?? testFleet();
  const db = await createTestDatabase();
  const inventory = createInventory(db.pool);
  const filter = opts.backendFilter ?? ((s: FleetServer) => s.backend === 'sim');
  const pki = await testAgentPki(opts.externalAgents ? [] : fleet.servers.filter(filter).map((s) => s.id));
  const agentTls = opts.externalAgentTls ?? pki.controlPlane;
  const fleetAgents = opts.externalAgents
    ? { agents: new Map<string, { url: string }>(), stop: async () => undefined }
    : await startFleetAgents(fleet, {
        timeScale: opts.timeScale ?? 200,
        logger,
        backendFilter: opts.backendFilter,
        qemu: opts.qemu,
        tls: pki.server,
        faultRoutes: true,
      });
  const agentUrls = new Map<string, string>(opts.externalAgents ?? [...fleetAgents.agents].map(([id, a]) => [id, a.url]));
  await inventory.seedFleet(fleet, agentUrls);
  const temporal = await connectTestTemporal(opts.temporalAddress);
  // The product's composition root builds the agent directory and the scheduler; the worker is the suite's (its
  // bundle, built once, and heartbeat settings the tests wait on).
  const plane = await startControlPlane({
    env: loadEnv({}),
    logger,
    store: { pool: db.pool, inventory, close: async () => undefined },
    agentCredentials: { tls: agentTls },
    temporal: { address: temporal.address, namespace: 'default', taskQueue: temporal.taskQueue },
    scheduler: { databaseUrl: db.url, schedulerId: `sched-${randomBytes(3).toString('hex')}`, sweepIntervalMs: 1000, staleClaimMs: 5000 },
  });
  const { agents } = plane;
  const scheduler = plane.scheduler!;
  const worker = await temporal.startWorker({
    activities: createActivities({ inventory, agents }),
    maxHeartbeatThrottleInterval: '500ms',
    defaultHeartbeatThrottleInterval: '500ms',
  });
  const clients = new Map<string, AgentClient>();
  let counter = 0;
  return {
    db,
    inventory,
    temporal,
    fleet,
    agentUrls,
    agentTls,
    agent(serverId) {
      let c = clients.get(serverId);
      if (!c) {
        c = createAgentClient({ baseUrl: agentUrls.get(serverId)!, tls: agentTls, serverId });
        clients.set(serverId, c);
      }
      return c;
    },
    agents,
    worker,
    scheduler,
    async createHostWithVms(o) {
      const tag = `${++counter}-${randomBytes(2).toString('hex')}`;
      const tenant = await inventory.createTenant(`tenant-${tag}`);
      const host = await inventory.createDedicatedHost({
        tenantId: tenant.id,
        name: `host-${tag}`,
        zone: o.zone ?? 'zone-a',
        resourceClass: o.resourceClass ?? 'std',
        actor: `tenant:${tenant.id}`,
      });
      const incarnation = await inventory.getIncarnation(host.currentIncarnationId);
      const server = await inventory.getServer(incarnation!.serverId);
      await createAgentClient({ baseUrl: server!.agentUrl, tls: agentTls, serverId: server!.id }).prepareIncarnation({
        incarnationId: incarnation!.id,
        capacity: incarnation!.capacity,
      });
      const vmIds: string[] = [];
      const sizes = o.memoryMiB ?? [1024, 2048, 4096, 512];
      const dirty = o.dirtyRateMiBps ?? [0, 50, 10, 100];
      for (let i = 0; i < o.vms; i++) {
        const vmId = `vm-${tag}-${i}`;
        const spec: VmSpec = o.specs?.[i % o.specs.length] ?? {
          vcpus: 1,
          memoryMiB: sizes[i % sizes.length]!,
          diskGiB: 10,
          workload: { dirtyRateMiBps: dirty[i % dirty.length]!, workingSetMiB: Math.min(256, sizes[i % sizes.length]!) },
        };
        await inventory.placeVm({ vmId, tenantId: tenant.id, dedicatedHostId: host.id, name: `vm-${i}`, spec, actor: `tenant:${tenant.id}` });
        await createAgentClient({ baseUrl: server!.agentUrl, tls: agentTls, serverId: server!.id }).createVm({ vmId, incarnationId: incarnation!.id, spec });
        vmIds.push(vmId);
      }
      return { tenantId: tenant.id, hostId: host.id, vmIds };
    },
    startMigration(hostId, policy, targetServerId) {
      return startMigration(temporal.client, temporal.taskQueue, { dedicatedHostId: hostId, policy, targetServerId, requestedBy: 'operator:test' });
    },
    status(hostId) {
      return temporal.client.workflow.getHandle(`migration-${hostId}`).query(statusQuery);
    },
    async stop(this: TestSystem) {
      // A test may have replaced the scheduler (durability: two schedulers racing); stop the one it holds now too.
      await this.scheduler.stop();
      await plane.stop();
      await temporal.close();
      await fleetAgents.stop();
      await db.drop();
    },
  };
}

/** Polls until `probe` returns a truthy value, or fails with `what` after the deadline. */
export async function eventually<T>(what: string, probe: () => Promise<T | undefined | null | false>, timeoutMs = 30_000, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs)); // poll interval, bounded by the deadline above
  }
}

import { testAgentPki } from '../support/agent-pki';
import { randomBytes } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { startMigration } from '../../client/migrations';
import { createLogger } from '../../common/logger';
import { createAgentClient } from '../../compute/agent-client';
import { startFleetAgents, type FleetAgents } from '../../compute/fleet-agents';
import { createInventory, type Inventory } from '../../inventory';
import { statusQuery } from '../../workflows/messages';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { spawnDhm, type DhmRun } from '../support/dhm-process';
import { testFleet } from '../support/fleets';
import { eventually } from '../support/system';

type Service = DhmRun;
const service = (role: string, env: NodeJS.ProcessEnv): Service => spawnDhm([role], env);

/**
 * Horizontal scale and failover with real processes: two `dhm worker` processes and one `dhm scheduler` share a
 * migration; the worker running a move is killed with SIGKILL and the other one finishes the work.
 */
describe('two worker processes and a scheduler process', () => {
  let db: TestDatabase;
  let inventory: Inventory;
  let agents: FleetAgents;
  let connection: Connection;
  let client: Client;
  const services: Service[] = [];
  let pki: Awaited<ReturnType<typeof testAgentPki>>;
  const taskQueue = `failover-${randomBytes(3).toString('hex')}`;

  beforeAll(async () => {
    db = await createTestDatabase();
    inventory = createInventory(db.pool);
    const fleet = testFleet({ servers: 3 });
    agents = await startFleetAgents(fleet, {
      timeScale: 20,
      tls: (pki = await testAgentPki(fleet.servers.map((x) => x.id))).server,
      faultRoutes: true,
      logger: createLogger('test', 'warn'),
    });
    await inventory.seedFleet(fleet, new Map([...agents.agents].map(([id, a]) => [id, a.url])));
    connection = await Connection.connect({ address: process.env.DHM_TEST_TEMPORAL_ADDRESS! });
    client = new Client({ connection });
    const env = {
      DATABASE_URL: db.url,
      TEMPORAL_ADDRESS: process.env.DHM_TEST_TEMPORAL_ADDRESS!,
      TEMPORAL_TASK_QUEUE: taskQueue,
      DHM_AGENT_CLIENT_TLS_DIR: pki.controlPlaneDir,
      LOG_LEVEL: 'info',
    };
    services.push(service('worker', env), service('worker', env), service('scheduler', env));
    for (const s of services) {
      await eventually(
        'service ready',
        async () => {
          if (s.child.exitCode !== null) throw new Error(`service exited: ${s.output().slice(-1500)}`);
          return /"msg":"ready"/.test(s.output());
        },
        90_000,
        100,
      );
    }
  });

  afterAll(async () => {
    for (const s of services) if (s.child.exitCode === null) s.child.kill('SIGTERM');
    await Promise.all(services.map((s) => s.exited));
    await connection?.close();
    await agents?.stop();
    await db?.drop();
  });

  it('a worker killed mid-move: the other worker finishes the migration, the scheduler process de-provisions', async () => {
    const tenant = await inventory.createTenant('failover');
    const host = await inventory.createDedicatedHost({ tenantId: tenant.id, name: 'h', zone: 'zone-a', resourceClass: 'std', actor: 'test' });
    const inc = await inventory.getIncarnation(host.currentIncarnationId);
    const source = createAgentClient({ baseUrl: (await inventory.getServer(inc.serverId)).agentUrl, tls: pki.controlPlane, serverId: inc.serverId });
    await source.prepareIncarnation({ incarnationId: inc.id, capacity: inc.capacity });
    for (let i = 0; i < 4; i++) {
      const spec = { vcpus: 1, memoryMiB: 4096, diskGiB: 10 };
      await inventory.placeVm({ vmId: `vm-fo-${i}`, tenantId: tenant.id, dedicatedHostId: host.id, name: `vm${i}`, spec, actor: 'test' });
      await source.createVm({ vmId: `vm-fo-${i}`, incarnationId: inc.id, spec });
    }
    const handle = await startMigration(client, taskQueue, { dedicatedHostId: host.id, policy: { maxParallel: 1, bandwidthCapBps: 200e6 } });
    // Find the worker process that runs the move in flight, and kill it without warning.
    const victim = await eventually(
      'a move with a known worker',
      async () => {
        const desc = await handle.describe();
        const pa = desc.raw.pendingActivities?.find((a) => a.activityType?.name === 'liveMigrateVm' && a.lastWorkerIdentity);
        if (!pa) return null;
        const pid = Number(/^(\d+)@/.exec(pa.lastWorkerIdentity!)?.[1]);
        return services.find((s) => s.child.pid === pid && s.child.exitCode === null) ?? null;
      },
      60_000,
      100,
    );
    victim.child.kill('SIGKILL');
    await victim.exited;
    const result = await handle.result();
    expect(result.phase).toBe('completed');
    const st = await handle.query(statusQuery);
    expect(st.vms.every((v) => v.state === 'moved')).toBe(true);
    // The survivor ran the rest: no VM was lost or moved twice.
    const live = await inventory.listVms({ dedicatedHostId: host.id });
    expect(live).toHaveLength(4);
    const current = (await inventory.getHost(host.id)).currentIncarnationId;
    expect(live.every((v) => v.incarnationId === current)).toBe(true);
    await eventually('old server de-provisioned by the scheduler process', async () => (await inventory.getServer(inc.serverId)).state === 'available', 30_000);
  }, 180_000);
});

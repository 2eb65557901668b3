import { testAgentPki } from '../support/agent-pki';
import { randomBytes } from 'node:crypto';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { startMigration } from '../../client/migrations';
import { createLogger } from '../../common/logger';
import { createAgentClient } from '../../compute/agent-client';
import { startFleetAgents, type FleetAgents } from '../../compute/fleet-agents';
import { createInventory, type Inventory } from '../../inventory';
import type { migrateDedicatedHost } from '../../workflows/migrate-dedicated-host';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { testFleet } from '../support/fleets';
import { eventually } from '../support/system';
import {
  assertDeprovisionedOnce,
  assertInvariants,
  assertNothingTwice,
  count,
  FAULT_SEED,
  FAULT_TRIALS,
  faultMoment,
  figures,
  printFigures,
  spawnService,
  stopServices,
  suiteRandom,
  untilReady,
  type Service,
} from './support';

/**
 * kill -9 of a migration worker at random moments, with two `dhm worker` and two `dhm scheduler` processes running
 * at once. Two hosts migrate per trial (back and forth between servers over the trials); at a seeded random moment
 * a worker (usually the one running a move) is SIGKILLed and a fresh one started. Every migration must complete,
 * each old server be de-provisioned exactly once, nothing be done twice, and the invariants hold after each trial.
 */
describe(`kill -9 of migration workers (seed ${FAULT_SEED}, ${process.env.FAULT_TRIALS ? FAULT_TRIALS : 1} trials)`, () => {
  const rnd = suiteRandom('worker-kill');
  /** A trial takes ~50 s on two cores (a killed move is noticed by its 15 s heartbeat timeout): one (two kills) in CI, FAULT_TRIALS when set. */
  const TRIALS = process.env.FAULT_TRIALS ? FAULT_TRIALS : 1;
  const fig = figures('worker-kill');
  let pki: Awaited<ReturnType<typeof testAgentPki>>;
  const taskQueue = `faults-kill-${randomBytes(3).toString('hex')}`;
  let db: TestDatabase;
  let inventory: Inventory;
  let agents: FleetAgents;
  let connection: Connection;
  let client: Client;
  let env: NodeJS.ProcessEnv;
  const workers: Service[] = [];
  const schedulers: Service[] = [];
  const all = () => [...workers, ...schedulers];

  beforeAll(async () => {
    process.stdout.write(`worker-kill: FAULT_SEED=${FAULT_SEED} FAULT_TRIALS=${FAULT_TRIALS}\n`);
    db = await createTestDatabase();
    inventory = createInventory(db.pool);
    const fleet = testFleet({ servers: 5 });
    agents = await startFleetAgents(fleet, {
      timeScale: 20,
      tls: (pki = await testAgentPki(fleet.servers.map((x) => x.id))).server,
      faultRoutes: true,
      logger: createLogger('test', 'warn'),
    });
    await inventory.seedFleet(fleet, new Map([...agents.agents].map(([id, a]) => [id, a.url])));
    connection = await Connection.connect({ address: process.env.DHM_TEST_TEMPORAL_ADDRESS! });
    client = new Client({ connection });
    env = {
      DATABASE_URL: db.url,
      TEMPORAL_ADDRESS: process.env.DHM_TEST_TEMPORAL_ADDRESS!,
      TEMPORAL_TASK_QUEUE: taskQueue,
      DHM_AGENT_CLIENT_TLS_DIR: pki.controlPlaneDir,
      LOG_LEVEL: 'info',
    };
    workers.push(spawnService('worker', env), spawnService('worker', env));
    schedulers.push(spawnService('scheduler', env), spawnService('scheduler', env));
    await Promise.all(all().map((s) => untilReady(s)));
  }, 120_000);

  afterAll(async () => {
    await stopServices(all());
    await connection?.close();
    await agents?.stop();
    await db?.drop();
    printFigures(fig);
  }, 60_000);

  async function createHost(tag: string, vms: number): Promise<string> {
    const tenant = await inventory.createTenant(`kill-${tag}`);
    const host = await inventory.createDedicatedHost({ tenantId: tenant.id, name: tag, zone: 'zone-a', resourceClass: 'std', actor: 'test' });
    const inc = await inventory.getIncarnation(host.currentIncarnationId);
    const agent = createAgentClient({ baseUrl: (await inventory.getServer(inc.serverId)).agentUrl, tls: pki.controlPlane, serverId: inc.serverId });
    await agent.prepareIncarnation({ incarnationId: inc.id, capacity: inc.capacity });
    for (let i = 0; i < vms; i++) {
      const spec = { vcpus: 1, memoryMiB: 1024, diskGiB: 10, workload: { dirtyRateMiBps: rnd.pick([0, 5, 20]), workingSetMiB: 128 } };
      await inventory.placeVm({ vmId: `vm-${tag}-${i}`, tenantId: tenant.id, dedicatedHostId: host.id, name: `vm${i}`, spec, actor: 'test' });
      await agent.createVm({ vmId: `vm-${tag}-${i}`, incarnationId: inc.id, spec });
    }
    return host.id;
  }

  it(
    'every migration completes and nothing is lost or done twice',
    async () => {
      const hosts = [await createHost(`a${randomBytes(2).toString('hex')}`, 3), await createHost(`b${randomBytes(2).toString('hex')}`, 3)];
      // A trial counts only if a worker was killed while a migration ran; one whose migrations both ended before the
      // first kill is checked all the same, then run again (bounded).
      let trial = 0;
      for (; fig.trials < TRIALS && trial < 3 * TRIALS; trial++) {
        const handles: WorkflowHandle<typeof migrateDedicatedHost>[] = [];
        for (const hostId of hosts) {
          handles.push(
            await startMigration(client, taskQueue, {
              dedicatedHostId: hostId,
              policy: { maxParallel: rnd.int(1, 2), bandwidthCapBps: 150e6 },
              requestedBy: 'operator:faults',
            }),
          );
        }
        const results = handles.map((h) => h.result());
        let ended = 0;
        void Promise.allSettled(results).then(() => (ended = handles.length));
        // Two seeded random moments per trial, anywhere from validation to the last move; a fresh worker starts at
        // once after each kill (two workers stay configured, as in a deployment that restarts what dies).
        const t0 = Date.now();
        let kills = 0;
        const starting = new Map<Service, Promise<void>>();
        for (let k = 0; k < 2 && ended < handles.length; k++) {
          await faultMoment(k === 0 ? rnd.int(100, 1500) : rnd.int(100, 3000), () => ended === handles.length);
          if (ended === handles.length) break;
          const preferMover = rnd.next() < 0.75;
          let victim: Service | undefined;
          if (preferMover) {
            for (const h of handles) {
              const desc = await h.describe();
              const pa = desc.raw.pendingActivities?.find((a) => a.activityType?.name === 'liveMigrateVm' && a.lastWorkerIdentity);
              const pid = pa ? Number(/^(\d+)@/.exec(pa.lastWorkerIdentity!)?.[1]) : NaN;
              victim = workers.find((w) => w.child.pid === pid && w.alive());
              if (victim) break;
            }
          }
          victim ??= rnd.pick(workers.filter((w) => w.alive()));
          victim.child.kill('SIGKILL');
          await victim.exited;
          kills++;
          count(fig.faults, preferMover ? 'worker SIGKILL (the one running a move)' : 'worker SIGKILL (random worker)');
          workers.splice(workers.indexOf(victim), 1);
          starting.delete(victim); // a worker killed while still starting is not waited for
          const fresh = spawnService('worker', env);
          workers.push(fresh);
          const ready = untilReady(fresh);
          ready.catch(() => undefined); // awaited below unless killed first
          starting.set(fresh, ready);
        }
        await Promise.all(starting.values());

        for (const [i, r] of results.entries()) {
          const result = await r;
          count(fig.migrations, result.phase);
          expect(result.phase).toBe('completed');
          await assertNothingTwice(inventory, hosts[i]!);
        }
        await eventually('old servers de-provisioned', async () => (await inventory.listDeprovisionJobs({ state: 'pending' })).length === 0, 60_000, 100);
        await assertInvariants(fig, { inventory, agentTls: pki.controlPlane, temporal: client }, `after trial ${trial}`);
        if (kills > 0) fig.trials++;
        else count(fig.faults, 'none (both migrations ended before the first kill)');
        process.stdout.write(`worker-kill trial ${trial}: ${kills} kill(s), ${Date.now() - t0} ms\n`);
      }
      expect(fig.trials).toBe(TRIALS);
      // Every migration of every trial run, killed or not, de-provisioned its old server exactly once.
      const jobs = await assertDeprovisionedOnce(inventory);
      expect(jobs).toBe(trial * hosts.length);
    },
    120_000 + 2 * TRIALS * 90_000,
  );
});

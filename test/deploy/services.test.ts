import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { freePort } from '../../stack/ports';
import { createInventory } from '../../inventory';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { spawnDhm, type DhmRun } from '../support/dhm-process';
import { agentFetch, testAgentPki } from '../support/agent-pki';
import { testFleet } from '../support/fleets';
import { eventually } from '../support/system';

/**
 * The roles as the compose file runs them, as real processes: `dhm agents` bound to 0.0.0.0 and registered under an
 * advertised name, `dhm worker` with its ops endpoints and the Temporal SDK's exporter, `dhm scheduler` with its ops
 * endpoints. Each answers /healthz, /readyz and /metrics, and stops with exit code 0 on SIGTERM.
 */
describe('service processes: ops endpoints, SDK metrics, agents bound and advertised', () => {
  let db: TestDatabase;
  let dir: string;
  let pkiControlPlaneDir = '';
  const runs: DhmRun[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-services-'));
  });
  afterAll(async () => {
    for (const r of runs) if (r.child.exitCode === null) r.child.kill('SIGKILL');
    await Promise.all(runs.map((r) => r.exited));
    await db?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A role's process; the control-plane roles get the database, Temporal and the control plane's agent certificate. */
  const start = (args: string[], env: NodeJS.ProcessEnv, controlPlane = true) => {
    const run = spawnDhm(args, {
      DHM_HOME: dir,
      LOG_LEVEL: 'info',
      ...(controlPlane ? { DATABASE_URL: db.url, TEMPORAL_ADDRESS: process.env.DHM_TEST_TEMPORAL_ADDRESS!, DHM_AGENT_CLIENT_TLS_DIR: pkiControlPlaneDir } : {}),
      ...env,
    });
    runs.push(run);
    return run;
  };
  const ready = (run: DhmRun) =>
    eventually(
      'service ready',
      async () => {
        if (run.child.exitCode !== null) throw new Error(`exited: ${run.output().slice(-1500)}`);
        return /"msg":"ready"/.test(run.output());
      },
      90_000,
      100,
    );

  it('agents, worker and scheduler serve /healthz, /readyz, /metrics; the worker exports SDK metrics; SIGTERM exits 0', async () => {
    const fleet = testFleet({ servers: 2 });
    fleet.servers = fleet.servers.filter((s) => s.resourceClass === 'std');
    for (const s of fleet.servers) s.agentPort = await freePort();
    const fleetFile = path.join(dir, 'fleet.json');
    fs.writeFileSync(fleetFile, JSON.stringify(fleet));
    const [agentsOps, workerOps, workerSdk, schedulerOps] = [await freePort(), await freePort(), await freePort(), await freePort()];

    // The agents' certificates (the test PKI's fleet CA); agents get no database: `dhm fleet-seed` registers them.
    const pki = await testAgentPki(fleet.servers.map((s) => s.id));
    pkiControlPlaneDir = pki.controlPlaneDir;
    const agents = start(
      ['agents', '--fleet', fleetFile],
      {
        DHM_AGENT_HOST: '0.0.0.0',
        DHM_AGENT_ADVERTISE_HOST: 'localhost',
        DHM_AGENT_TLS_DIR: path.dirname(pki.serverDir(fleet.servers[0]!.id)),
        DHM_METRICS_PORT: String(agentsOps),
      },
      false,
    );
    await ready(agents);
    const seed = start(['fleet-seed', '--fleet', fleetFile, '--agent-host', 'localhost'], {});
    expect(await seed.exited).toBe(0);
    const inventory = createInventory(db.pool);
    for (const s of fleet.servers) expect((await inventory.getServer(s.id)).agentUrl).toBe(`https://localhost:${s.agentPort}`);

    const worker = start(['worker'], {
      TEMPORAL_TASK_QUEUE: 'services-test',
      DHM_METRICS_PORT: String(workerOps),
      DHM_TEMPORAL_METRICS_PORT: String(workerSdk),
    });
    const scheduler = start(['scheduler'], { DHM_METRICS_PORT: String(schedulerOps) });
    await ready(worker);
    await ready(scheduler);

    for (const [port, role] of [
      [agentsOps, 'agents'],
      [workerOps, 'worker'],
      [schedulerOps, 'scheduler'],
    ] as const) {
      const base = `http://127.0.0.1:${port}`;
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      const readyz = await fetch(`${base}/readyz`);
      const body = (await readyz.json()) as { status: string; checks: Record<string, string> };
      expect({ role, status: readyz.status, body }).toMatchObject({ role, status: 200, body: { status: 'ok' } });
      if (role !== 'agents') expect(body.checks.postgres).toBe('ok');
      const metrics = await (await fetch(`${base}/metrics`)).text();
      expect(metrics).toContain(`role="${role}"`);
      expect(metrics).toContain('dhm_process_resident_memory_bytes');
    }
    // The agents' own ports, reached on the wildcard bind: the control plane's certificate gets an answer, no
    // certificate gets no handshake.
    const port = fleet.servers[0]!.agentPort;
    expect((await agentFetch(`https://127.0.0.1:${port}/v1/info`)).status).toBe(200);
    await expect(agentFetch(`https://127.0.0.1:${port}/v1/info`, {}, null)).rejects.toThrow();
    expect(await (await fetch(`http://127.0.0.1:${agentsOps}/metrics`)).text()).toContain('dhm_http_requests_total{service="agent"');
    // The Temporal SDK's exporter (core's Prometheus endpoint): worker poll and slot metrics.
    const sdk = await eventually(
      'SDK metrics',
      async () => {
        const text = await (await fetch(`http://127.0.0.1:${workerSdk}/metrics`)).text();
        return /temporal_\w+/.test(text) ? text : null;
      },
      30_000,
      250,
    );
    expect(sdk).toMatch(/temporal_(worker_task_slots_available|num_pollers|request)/);

    for (const run of [worker, scheduler, agents]) run.child.kill('SIGTERM');
    expect(await Promise.all([worker.exited, scheduler.exited, agents.exited])).toEqual([0, 0, 0]);
  }, 180_000);
});

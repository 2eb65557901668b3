import { randomBytes } from 'node:crypto';
import type { Worker } from '@temporalio/worker';
import { createAgentDirectory } from '../../compute/agent-directory';
import { startApiServer, type RunningApiServer } from '../../api/server';
import { createHostService } from '../../api/host-service';
import { createLogger } from '../../common/logger';
import { createMetrics, type Metrics } from '../../common/metrics';
import { startOpsServer, type OpsServer } from '../../common/ops-server';
import { createMigrationWorker } from '../../workers/migration-worker';
import { testFleet } from '../support/fleets';
import { eventually, startTestSystem, type TestSystem } from '../support/system';

/** One sample of a Prometheus text page: `name{labels} value`, labels given as a subset to match. */
function sample(page: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  let found = false;
  for (const line of page.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) {
      total += Number(m[3]);
      found = true;
    }
  }
  return found ? total : 0;
}

/**
 * "/metrics shows the migration counters moving": a migration driven through the API's HTTP routes, run by a worker
 * built by the production factory (createMigrationWorker with metrics) behind the worker's ops endpoints. The API's
 * /metrics counts the start, the cancel and the tenant's update latency; the worker's /metrics counts the completed
 * and the rolled-back migration and observes every VM's downtime.
 */
describe('Prometheus metrics during migrations', () => {
  let sys: TestSystem;
  let api: RunningApiServer;
  let ops: OpsServer;
  let worker: Worker;
  let running: Promise<void>;
  let workerMetrics: Metrics;
  const operatorToken = `op_${randomBytes(24).toString('hex')}`;
  const taskQueue = `metrics-${randomBytes(3).toString('hex')}`;

  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${api.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${operatorToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as any };
  };
  const scrape = async (base: string) => {
    const res = await fetch(`${base}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    return res.text();
  };

  beforeAll(async () => {
    sys = await startTestSystem({ fleet: testFleet({ servers: 4 }), timeScale: 200 });
    sys.db.pool.on('error', () => undefined);
    const logger = createLogger('test', 'warn');
    const agents = createAgentDirectory({ lookupAgentUrl: async (id) => (await sys.inventory.getServer(id)).agentUrl, tls: sys.agentTls });
    workerMetrics = createMetrics({ role: 'worker' });
    worker = await createMigrationWorker({
      connection: sys.temporal.nativeConnection,
      taskQueue,
      workflowBundle: { codePath: process.env.DHM_TEST_WORKFLOW_BUNDLE! },
      inventory: sys.inventory,
      agents,
      metrics: workerMetrics,
    });
    running = worker.run();
    ops = await startOpsServer({
      host: '127.0.0.1',
      port: 0,
      metrics: workerMetrics,
      logger,
      readiness: {
        worker: async () => {
          if (worker.getState() !== 'RUNNING') throw new Error(`worker is ${worker.getState()}`);
        },
      },
    });
    const temporal = { client: sys.temporal.client, taskQueue };
    const hostService = createHostService({ inventory: sys.inventory, agents, temporal, logger });
    api = await startApiServer({
      inventory: sys.inventory,
      hostService,
      temporal,
      pool: sys.db.pool,
      operatorToken,
      logger,
      port: 0,
      metrics: createMetrics({ role: 'api' }),
    });
  });

  afterAll(async () => {
    await api?.stop();
    await ops?.stop();
    if (worker?.getState() === 'RUNNING') worker.shutdown();
    await running;
    await sys?.stop();
  });

  it('api and worker /metrics count migrations started, completed and rolled back, VM downtime and update latency', async () => {
    // The ops endpoints answer like the API's.
    expect((await fetch(`${ops.url}/healthz`)).status).toBe(200);
    expect((await fetch(`${ops.url}/readyz`)).status).toBe(200);
    expect((await fetch(`${api.url}/readyz`)).status).toBe(200);

    const before = { api: await scrape(api.url), worker: await scrape(ops.url) };
    expect(sample(before.api, 'dhm_migrations_started_total')).toBe(0);
    expect(sample(before.worker, 'dhm_migrations_completed_total')).toBe(0);
    expect(before.worker).toContain('dhm_process_cpu_user_seconds_total'); // default process metrics too

    // A migration to completion, with a tenant request in the middle (a workflow Update).
    const { hostId } = await sys.createHostWithVms({ vms: 3, memoryMiB: [4096, 2048, 1024], dirtyRateMiBps: [2, 2, 2] });
    const start = await call('POST', `/v1/dedicated-hosts/${hostId}/migrations`, { policy: { maxParallel: 1, bandwidthCapBps: 20e6, maxDowntimeMs: 300 } });
    expect(start.status).toBe(202);
    const during = await scrape(api.url);
    expect(sample(during, 'dhm_migrations_started_total')).toBe(1);
    expect(sample(during, 'dhm_http_requests_total', { route: '/v1/dedicated-hosts/:id/migrations', status: '202' })).toBe(1);

    await eventually('the host migrating', async () => (await call('GET', `/v1/dedicated-hosts/${hostId}`)).body.state === 'migrating', 30_000, 50);
    const created = await call('POST', `/v1/dedicated-hosts/${hostId}/vms`, { name: 'mid-way', vcpus: 1, memoryMiB: 512, diskGiB: 10 });
    expect(created.status).toBe(201);
    const afterUpdate = await scrape(api.url);
    expect(sample(afterUpdate, 'dhm_tenant_request_duration_seconds_count', { operation: 'create_vm', path: 'migration', outcome: 'ok' })).toBe(1);
    expect(sample(afterUpdate, 'dhm_tenant_request_duration_seconds_sum', { operation: 'create_vm', path: 'migration' })).toBeGreaterThan(0);

    const done = await eventually(
      'the migration completed',
      async () => {
        const r = await call('GET', `/v1/migrations/${start.body.id}`);
        return r.body.workflowStatus === 'COMPLETED' ? r.body : null;
      },
      60_000,
      200,
    );
    expect(done.phase).toBe('completed');
    const afterDone = await scrape(ops.url);
    expect(sample(afterDone, 'dhm_migrations_completed_total')).toBe(1);
    expect(sample(afterDone, 'dhm_migrations_rolled_back_total')).toBe(0);
    expect(sample(afterDone, 'dhm_vm_moves_total', { direction: 'out' })).toBe(3);
    expect(sample(afterDone, 'dhm_vm_downtime_seconds_count', { direction: 'out' })).toBe(3);
    expect(sample(afterDone, 'dhm_vm_downtime_seconds_sum', { direction: 'out' })).toBeGreaterThan(0);
    expect(sample(afterDone, 'dhm_vm_downtime_seconds_bucket', { direction: 'out', le: '+Inf' })).toBe(3);

    // A second migration, cancelled through the API: it rolls back.
    const second = await sys.createHostWithVms({ vms: 2, memoryMiB: [8192, 8192], dirtyRateMiBps: [2, 2] });
    const start2 = await call('POST', `/v1/dedicated-hosts/${second.hostId}/migrations`, { policy: { maxParallel: 1, bandwidthCapBps: 10e6 } });
    expect(start2.status).toBe(202);
    await eventually(
      'a VM moving',
      async () => (await call('GET', `/v1/migrations/${start2.body.id}`)).body.vms?.some((v: any) => v.state === 'moving'),
      30_000,
      50,
    );
    expect((await call('POST', `/v1/migrations/${start2.body.id}/cancel`)).status).toBe(202);
    await eventually('the rollback counted', async () => sample(await scrape(ops.url), 'dhm_migrations_rolled_back_total') === 1, 60_000, 200);
    const apiEnd = await scrape(api.url);
    expect(sample(apiEnd, 'dhm_migrations_started_total')).toBe(2);
    expect(sample(apiEnd, 'dhm_migration_cancels_requested_total')).toBe(1);
    const workerEnd = await scrape(ops.url);
    expect(sample(workerEnd, 'dhm_migrations_completed_total')).toBe(1);
  }, 150_000);
});

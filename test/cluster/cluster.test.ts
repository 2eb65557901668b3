import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { resolveTemporalServer } from '../../stack/tools/temporal-cli';
import { TEMPORAL_SERVER_VERSION } from '../../stack/tools/temporal-server';
import { DedicatedHostIdKey } from '../../common/search-attributes';
import { testFleet } from '../support/fleets';
import { eventually, startTestSystem } from '../support/system';
import { killDuringMigration } from './failover';
import { printFigure, startTestCluster, type TestCluster } from './support';

const run = promisify(execFile);

/**
 * dhm on a real Temporal cluster: frontend, two history, matching and worker processes on Postgres (CI runs this
 * file; `npm run test:cluster` adds the matching and frontend faults and the whole suite's claims on the cluster).
 */
describe(`a Temporal ${TEMPORAL_SERVER_VERSION} cluster of separate processes on Postgres`, () => {
  let tc: TestCluster;
  beforeAll(async () => {
    tc = await startTestCluster();
    printFigure('start', { startupMs: tc.cluster.startupMs, shards: tc.cluster.info.historyShardCount, processes: tc.cluster.processes.length });
  }, 120_000);
  afterAll(async () => {
    await tc?.stop();
  }, 60_000);

  it('serves with five server processes, SQL persistence and visibility, membership through the database, and the Web UI', async () => {
    const { cluster } = tc;
    expect(cluster.info).toEqual({
      serverVersion: TEMPORAL_SERVER_VERSION.replace(/^v/, ''),
      historyShardCount: 8,
      persistenceStore: 'postgres12',
      visibilityStore: 'postgres12',
    });
    const servers = cluster.processes.filter((p) => p.service !== 'ui');
    expect(servers.map((p) => p.name)).toEqual(['history-1', 'history-2', 'matching', 'frontend', 'worker']);
    expect(new Set(servers.map((p) => p.pid())).size).toBe(5);
    expect(servers.every((p) => p.alive())).toBe(true);
    expect(await cluster.members()).toEqual({ frontend: 1, history: 2, matching: 1, worker: 1 });
    const ui = await fetch(`${cluster.uiUrl}/namespaces/default/workflows`);
    expect(ui.status).toBe(200);
    expect(await ui.text()).toMatch(/<html/i);
  });

  it('a migration runs through it and the Temporal CLI finds it by DedicatedHostId in the SQL visibility store', async () => {
    const sys = await startTestSystem({ temporalAddress: tc.cluster.address, fleet: testFleet({ servers: 4 }), timeScale: 200 });
    try {
      const { hostId } = await sys.createHostWithVms({ vms: 3 });
      const handle = await sys.startMigration(hostId, { maxParallel: 2 });
      const result = await handle.result();
      expect(result.phase).toBe('completed');
      const desc = await handle.describe();
      expect(desc.typedSearchAttributes.get(DedicatedHostIdKey)).toBe(hostId);
      const cli = await resolveTemporalServer({ build: false });
      if (cli.kind !== 'existing-path') throw new Error('the Temporal CLI is needed (npm run tools)');
      const listed = await eventually(
        'the CLI lists the migration by DedicatedHostId',
        async () => {
          const { stdout } = await run(cli.path, [
            'workflow',
            'list',
            '--address',
            tc.cluster.address,
            '--namespace',
            'default',
            '--query',
            `DedicatedHostId = '${hostId}'`,
            '-o',
            'json',
          ]);
          const rows = JSON.parse(stdout || '[]') as Array<{ execution: { workflowId: string }; status: string }>;
          return rows.length === 1 && rows[0]!.status === 'WORKFLOW_EXECUTION_STATUS_COMPLETED' ? rows : null;
        },
        20_000,
        500,
      );
      expect(listed[0]!.execution.workflowId).toBe(`migration-${hostId}`);
    } finally {
      await sys.stop();
    }
  }, 120_000);

  it('SIGKILL of one history process mid-migration: the other takes its shards, the migration completes, every tenant request is answered', async () => {
    const out = await killDuringMigration(tc, 'shard owner');
    expect(out.phase).toBe('completed');
    // The shard moved to the surviving history process.
    expect(out.shard!.ownerAfter).not.toBe(out.victim);
    expect(tc.cluster.process(out.shard!.ownerAfter).alive()).toBe(true);
    expect(out.guestFailures).toEqual([]);
    expect(out.guestOps).toBeGreaterThan(20);
    expect(out.violations).toEqual([]);
    expect(out.replayError).toBeNull();
    // Started again, it joins back (a new membership session).
    const p = tc.cluster.process(out.victim);
    await p.start();
    await eventually('history-1 back in the membership', async () => (await tc.cluster.members()).history === 2 && p.alive(), 60_000, 500);
  }, 240_000);
});

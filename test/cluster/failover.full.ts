import { TEMPORAL_SERVER_VERSION } from '../../stack/tools/temporal-server';
import { eventually } from '../support/system';
import { killDuringMigration } from './failover';
import { printFigure, startTestCluster, type TestCluster } from './support';

/**
 * The heavier faults (`npm run test:cluster`; CI runs the history one in cluster.test.ts): SIGKILL of the matching
 * process and of the frontend mid-migration, each started again after 3 s as a deployment would; and a history
 * process killed, then started again under load so shards move back.
 */
describe(`faults of a Temporal ${TEMPORAL_SERVER_VERSION} cluster mid-migration`, () => {
  let tc: TestCluster;
  beforeAll(async () => {
    tc = await startTestCluster({ shards: 16 });
    printFigure('start (16 shards)', { startupMs: tc.cluster.startupMs });
  }, 120_000);
  afterAll(async () => {
    await tc?.stop();
  }, 60_000);

  const clean = (out: Awaited<ReturnType<typeof killDuringMigration>>) => {
    expect(out.phase).toBe('completed');
    expect(out.guestFailures).toEqual([]);
    expect(out.guestOps).toBeGreaterThan(20);
    expect(out.violations).toEqual([]);
    expect(out.replayError).toBeNull();
  };

  it('SIGKILL of matching, restarted after 3 s: the migration completes, the worker reconnects, every tenant request is answered', async () => {
    const out = await killDuringMigration(tc, 'matching', { restartAfterMs: 3000 });
    clean(out);
    expect(tc.cluster.process('matching').alive()).toBe(true);
  }, 300_000);

  it('SIGKILL of the frontend, restarted after 3 s: the worker and the client reconnect, the migration completes', async () => {
    const out = await killDuringMigration(tc, 'frontend', { restartAfterMs: 3000 });
    clean(out);
    expect(tc.cluster.process('frontend').alive()).toBe(true);
  }, 300_000);

  it('SIGKILL of the shard owner, restarted after 3 s (its shards move back under load)', async () => {
    const out = await killDuringMigration(tc, 'shard owner', { restartAfterMs: 3000 });
    clean(out);
    await eventually('both history processes in the membership', async () => (await tc.cluster.members()).history === 2, 60_000, 500);
  }, 300_000);
});

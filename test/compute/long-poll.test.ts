import { paths } from '../../compute/agent-api';
import { Agents, spec, startPair, waitFor } from './helpers';
import { agentFetch } from '../support/agent-pki';

/** `GET migration?waitMs=`: the agent holds the request until the job leaves `running`, or until waitMs has passed. */
describe('following a migration by long-poll', () => {
  const agents = new Agents();
  afterEach(() => agents.stopAll());

  async function setup(timeScale: number) {
    const pair = await startPair(agents, { timeScale });
    await pair.source.client.createVm({ vmId: 'vm', incarnationId: 'src', spec: spec(8192, { dirtyRateMiBps: 100, workingSetMiB: 1024 }) });
    const start = (jobId: string) =>
      pair.source.client.startMigration({
        jobId,
        vmId: 'vm',
        target: { agentUrl: pair.target.url, incarnationId: 'dst' },
        maxDowntimeMs: 300,
        autoConverge: false,
      });
    return { ...pair, start };
  }

  test('answers the moment the job completes, not at the end of waitMs', async () => {
    const { source, start } = await setup(1000);
    await start('lp-1');
    const asked = performance.now();
    const job = await source.client.getMigration('lp-1', { waitMs: 20_000 });
    expect(performance.now() - asked).toBeLessThan(5_000);
    expect(job).toMatchObject({ state: 'completed' });
    expect(await source.client.getMigration('lp-1')).toEqual(job);
    // A finished job is answered at once.
    const again = performance.now();
    expect(await source.client.getMigration('lp-1', { waitMs: 20_000 })).toEqual(job);
    expect(performance.now() - again).toBeLessThan(1_000);
  });

  test('answers the job still running, with its progress, once waitMs has passed', async () => {
    const { source, start } = await setup(1);
    await start('lp-2');
    await source.client.setFaults({ linkSlowdown: 1000 }); // the job cannot finish during the test (hours)
    const asked = performance.now();
    const job = await source.client.getMigration('lp-2', { waitMs: 300 });
    const waited = performance.now() - asked;
    expect(job).toMatchObject({ jobId: 'lp-2', state: 'running' });
    expect(waited).toBeGreaterThanOrEqual(250);
    expect(waited).toBeLessThan(3_000);
    await source.client.cancelMigration('lp-2');
  });

  test('a cancel ends a long-poll in progress', async () => {
    const { source, start } = await setup(1);
    await start('lp-3');
    await source.client.setFaults({ linkSlowdown: 1000 });
    const asked = performance.now();
    const following = source.client.getMigration('lp-3', { waitMs: 20_000 });
    // The cancel must meet a poll the agent is holding, not one that has not arrived yet.
    await waitFor('the agent to hold the long-poll', () => source.agent.pollsWaiting() === 1);
    await source.client.cancelMigration('lp-3');
    expect(await following).toMatchObject({ state: 'cancelled', error: { code: 'Cancelled' } });
    expect(source.agent.pollsWaiting()).toBe(0);
    expect(performance.now() - asked).toBeLessThan(5_000);
  });

  test('an unknown job is a 404 (null) at once; a bad waitMs or an unknown parameter is a 400', async () => {
    const { source } = await setup(1000);
    const asked = performance.now();
    expect(await source.client.getMigration('ghost', { waitMs: 20_000 })).toBeNull();
    expect(performance.now() - asked).toBeLessThan(1_000);
    for (const [query, field] of [
      ['waitMs=-1', 'waitMs'],
      ['waitMs=soon', 'waitMs'],
      ['waitMs=600000', 'waitMs'],
      ['waitMs=10&while=completed', 'while'],
      ['waitMs=10&until=done', 'until'],
    ]) {
      const res = await agentFetch(`${source.url}${paths.migration('ghost')}?${query}`);
      expect(res.status).toBe(400);
      expect(await res.json()).toMatchObject({ error: { code: 'INVALID_INPUT', field } });
    }
  });

  test('PUT migration?waitMs= starts the job and answers it finished, in one request; repeated, the same job', async () => {
    const { source, target } = await setup(1000);
    const body = { vmId: 'vm', target: { agentUrl: target.url, incarnationId: 'dst' }, maxDowntimeMs: 300, autoConverge: false };
    const job = await source.client.startMigration({ jobId: 'lp-5', ...body }, { waitMs: 20_000 });
    expect(job).toMatchObject({ jobId: 'lp-5', state: 'completed' });
    expect(await target.client.getVm('vm')).toMatchObject({ incarnationId: 'dst' });
    // Idempotent by job id: the repeat is the same finished job, not a second move.
    expect(await source.client.startMigration({ jobId: 'lp-5', ...body }, { waitMs: 20_000 })).toEqual(job);
    // A bad waitMs changes nothing: no job is started.
    const res = await agentFetch(`${source.url}${paths.migration('lp-6')}?waitMs=soon`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: { code: 'INVALID_INPUT', field: 'waitMs' } });
    expect(await source.client.getMigration('lp-6')).toBeNull();
  });

  test('PUT migration?waitMs= answers a job still running once waitMs has passed', async () => {
    const { source, target } = await setup(1);
    await source.client.setFaults({ linkSlowdown: 1000 });
    const asked = performance.now();
    const job = await source.client.startMigration(
      { jobId: 'lp-7', vmId: 'vm', target: { agentUrl: target.url, incarnationId: 'dst' }, maxDowntimeMs: 300, autoConverge: false },
      { waitMs: 300 },
    );
    expect(job).toMatchObject({ jobId: 'lp-7', state: 'running' });
    expect(performance.now() - asked).toBeGreaterThanOrEqual(250);
    await source.client.cancelMigration('lp-7');
  });
});

import { SWITCHOVER_COST_MS } from '../../compute/sim/precopy';
import { Agents, finished, GIB, relErr, spec, startPair } from './helpers';

/** The sim charges a move's set-up off the link (compute/sim/calibration.ts MOVE_SETUP_MS) and reports it. */
describe('a sim move’s set-up', () => {
  const agents = new Agents();
  afterAll(() => agents.stopAll());

  test('passes before the first byte, is not in totalTimeMs, and is reported as setupMs', async () => {
    const B = 1e9;
    const setupMs = 4000;
    const timeScale = 20; // 4 s of set-up: 200 ms of wall time
    const { source, target } = await startPair(agents, { nicBandwidthBps: 8 * B, streamCapFraction: 1, timeScale, moveSetupMs: setupMs });
    await source.client.createVm({ vmId: 'v', incarnationId: 'src', spec: spec(1024) });
    const wallStart = performance.now();
    await source.client.startMigration({
      jobId: 'job-v',
      vmId: 'v',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 300,
      autoConverge: false,
    });
    // Still in its set-up: nothing on the link yet.
    const early = await source.client.getMigration('job-v');
    expect(early!.state).toBe('running');
    expect(early!.bytesSent).toBe(0);
    const done = await finished(source.client, 'job-v');
    expect(done.state).toBe('completed');
    expect(done.setupMs).toBe(setupMs);
    // An idle 1 GiB guest: one round at B, then the switchover; the set-up is not link time.
    expect(relErr(done.totalTimeMs!, (GIB / B) * 1000 + SWITCHOVER_COST_MS)).toBeLessThan(1e-6);
    expect((performance.now() - wallStart) * timeScale).toBeGreaterThanOrEqual(setupMs);
  });

  test('is 0 by default (the functional tests’ timings)', async () => {
    const a = new Agents();
    try {
      const { source, target } = await startPair(a, { nicBandwidthBps: 8e9, streamCapFraction: 1, timeScale: 20 });
      await source.client.createVm({ vmId: 'w', incarnationId: 'src', spec: spec(512) });
      await source.client.startMigration({
        jobId: 'job-w',
        vmId: 'w',
        target: { agentUrl: target.url, incarnationId: 'dst' },
        maxDowntimeMs: 300,
        autoConverge: false,
      });
      const done = await finished(source.client, 'job-w');
      expect(done.setupMs).toBe(0);
    } finally {
      await a.stopAll();
    }
  });
});

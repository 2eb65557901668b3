import { SWITCHOVER_COST_MS } from '../../compute/sim/precopy';
import { SimVm } from '../../compute/sim/sim-vm';
import { Agents, finished, MIB, spec, startPair, waitFor } from './helpers';

/** A 1 Gbit/s NIC one stream may fill, and a guest dirtying faster than that: pre-copy alone never converges. */
const NIC_BITS = 1e9;
const D_MIBPS = Math.ceil(NIC_BITS / 8 / MIB) + 1;

describe('post-copy and the cost of throttling (sim agents)', () => {
  const agents = new Agents();
  afterEach(() => agents.stopAll());

  test('postCopy: a move that would not converge switches to post-copy and completes; its downtime is the switchover alone', async () => {
    const { source, target } = await startPair(agents, { nicBandwidthBps: NIC_BITS, streamCapFraction: 1, timeScale: 1000 });
    await source.client.createVm({ vmId: 'hot', incarnationId: 'src', spec: spec(1024, { dirtyRateMiBps: D_MIBPS, workingSetMiB: 1024 }) });
    await source.client.guestOp('hot', { kind: 'increment' });
    const start = { vmId: 'hot', target: { agentUrl: target.url, incarnationId: 'dst' }, maxDowntimeMs: 300, autoConverge: false };
    await source.client.startMigration({ jobId: 'pc-1', ...start, postCopy: true });
    const job = await finished(source.client, 'pc-1');
    expect(job.state).toBe('completed');
    expect(job.downtimeMs).toBe(SWITCHOVER_COST_MS);
    expect(job.throttlePct).toBe(0);
    expect(await target.client.getVm('hot')).toMatchObject({ serverId: 'server-b', counter: 1 });
  });

  test('a throttled guest: its view reports the throttle, and an operation takes 1/(1 − throttle) of its CPU time', async () => {
    const vm = new SimVm('v', 'inc', spec(1024));
    expect(vm.throttleDelayMs(1)).toBe(0);
    vm.throttledBy = () => 60;
    expect(vm.throttlePct).toBe(60);
    expect(vm.throttleDelayMs(1)).toBeCloseTo(1 / 0.4 - 1, 12);
    expect(vm.view('s').throttlePct).toBe(60);
    vm.throttledBy = () => 100;
    expect(vm.throttleDelayMs(1)).toBe(Infinity);

    // Over HTTP: an auto-converge move of a hot guest shows the throttle on the VM while it runs, and none after.
    const { source, target } = await startPair(agents, { nicBandwidthBps: NIC_BITS, streamCapFraction: 1, timeScale: 200 });
    await source.client.createVm({ vmId: 'hot', incarnationId: 'src', spec: spec(1024, { dirtyRateMiBps: D_MIBPS, workingSetMiB: 1024 }) });
    await source.client.startMigration({
      jobId: 'ac-1',
      vmId: 'hot',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 300,
      autoConverge: true,
    });
    const throttled = await waitFor('the guest to be throttled', async () => {
      const v = await source.client.getVm('hot');
      return v && (v.throttlePct ?? 0) > 0 ? v : undefined;
    });
    expect(throttled.throttlePct).toBeGreaterThanOrEqual(20);
    // Guest operations keep being served while throttled (slower, not refused).
    expect((await source.client.guestOp('hot', { kind: 'increment' })).counter).toBeGreaterThanOrEqual(1);
    const job = await finished(source.client, 'ac-1', 60_000);
    expect(job.state).toBe('completed');
    expect((await target.client.getVm('hot'))?.throttlePct).toBeUndefined();
  });
});

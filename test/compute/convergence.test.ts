import { Agents, finished, HOST_CAPACITY, MIB, spec, startPair, waitFor } from './helpers';

/** A 1 Gbit/s NIC (125 MB/s) that one stream may fill, and a guest dirtying faster than that. */
const NIC_BITS = 1e9;
const B = NIC_BITS / 8;
const D_MIBPS = Math.ceil(B / MIB) + 1; // 121 MiB/s ≥ B

describe('convergence', () => {
  const agents = new Agents();
  afterEach(() => agents.stopAll());

  async function migrateHotVm(autoConverge: boolean, timeScale = 1000) {
    const pair = await startPair(agents, { nicBandwidthBps: NIC_BITS, streamCapFraction: 1, timeScale });
    const { source, target } = pair;
    await source.client.createVm({ vmId: 'hot', incarnationId: 'src', spec: spec(1024, { dirtyRateMiBps: D_MIBPS, workingSetMiB: 1024 }) });
    for (let i = 0; i < 3; i++) await source.client.guestOp('hot', { kind: 'increment' });
    await source.client.startMigration({
      jobId: 'hot-1',
      vmId: 'hot',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 300,
      autoConverge,
    });
    return pair;
  }

  test('D ≥ B without auto-converge: NotConverging, and the VM keeps running on the source', async () => {
    const { source, target } = await migrateHotVm(false);
    const job = await finished(source.client, 'hot-1');
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('NotConverging');
    expect(job.dirtyRateBps).toBeGreaterThanOrEqual(B);
    expect(job.throttlePct).toBe(0);

    const vm = await source.client.getVm('hot');
    expect(vm).toMatchObject({ state: 'running', serverId: 'server-a', counter: 3 });
    expect(await source.client.guestOp('hot', { kind: 'increment' })).toEqual({ vmId: 'hot', counter: 4, servedBy: 'server-a' });
    expect(await target.client.getVm('hot')).toBeNull();
    // The target's reservation is handed back (asynchronously: the source tells it after the job has ended).
    await waitFor('target capacity to be free again', async () => {
      const inc = await target.client.getIncarnation('dst');
      return inc?.free.memoryMiB === HOST_CAPACITY.memoryMiB;
    });
    // A later attempt for the same VM is possible at once.
    const retry = await source.client.startMigration({
      jobId: 'hot-2',
      vmId: 'hot',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 300,
      autoConverge: true,
    });
    expect(retry.state).toBe('running');
  });

  test('D ≥ B with auto-converge: the guest is throttled and the migration completes', async () => {
    const { source, target } = await migrateHotVm(true);
    const job = await finished(source.client, 'hot-1');
    expect(job.state).toBe('completed');
    // Progress in two parts: the memory part carries the stream's figures.
    expect(job.memory).toEqual({ bytesTotal: job.memoryBytes, bytesTransferred: job.bytesSent, bytesRemaining: 0 });
    expect(job.memory.bytesTransferred).toBeGreaterThan(job.memoryBytes);
    expect(job.throttlePct).toBeGreaterThanOrEqual(20);
    expect(job.dirtyRateBps).toBeLessThan(B);
    expect(job.downtimeMs).toBeLessThanOrEqual(300 + 5);
    expect(await source.client.getVm('hot')).toBeNull();
    expect(await target.client.getVm('hot')).toMatchObject({ state: 'running', serverId: 'server-b', incarnationId: 'dst', counter: 3 });
    expect(await target.client.guestOp('hot', { kind: 'read' })).toEqual({ vmId: 'hot', counter: 3, servedBy: 'server-b' });
  });

  test('progress is visible while the migration runs', async () => {
    // 40x: the migration (~36 s simulated) takes ~0.9 s of wall time, long enough to watch several rounds go by.
    const { source } = await migrateHotVm(true, 40);
    const samples = [];
    for (;;) {
      const job = (await source.client.getMigration('hot-1'))!;
      samples.push(job);
      if (job.state !== 'running') break;
      await new Promise((r) => setTimeout(r, 10)); // sampling interval, not a wait for a condition
    }
    const running = samples.filter((s) => s.state === 'running');
    expect(running.length).toBeGreaterThanOrEqual(5);
    for (let i = 1; i < running.length; i++) {
      expect(running[i]!.bytesSent).toBeGreaterThanOrEqual(running[i - 1]!.bytesSent);
      expect(running[i]!.round).toBeGreaterThanOrEqual(running[i - 1]!.round);
      expect(running[i]!.throttlePct).toBeGreaterThanOrEqual(running[i - 1]!.throttlePct);
    }
    expect(running.some((s) => s.round >= 1 && s.throttlePct >= 20)).toBe(true);
    for (const s of running) {
      expect(s.memoryBytes).toBe(1024 * MIB);
      // Alone on the link with streamCapFraction 1: the whole NIC while copying; once everything is copied and the
      // VM is being handed over to the target, nothing is left to send and nothing flows.
      if (s.bytesRemaining > 0) expect(Math.round(s.throughputBps)).toBe(B);
      else expect(s.throughputBps).toBe(0);
      expect(s.downtimeMs).toBeUndefined();
    }
    const last = samples[samples.length - 1]!;
    expect(last.state).toBe('completed');
    expect(last.totalTimeMs).toBeGreaterThan(0);
    expect(last.finishedAt).toBeDefined();
  });

  test('an injected failure at round 2 fails that migration only; the VM stays on the source', async () => {
    const { source, target } = await startPair(agents, { timeScale: 1000 });
    await source.client.createVm({ vmId: 'v', incarnationId: 'src', spec: spec(4096, { dirtyRateMiBps: 200, workingSetMiB: 2048 }) });
    await source.client.setFaults({ failMigrationAtRound: 2 });
    const start = (jobId: string) =>
      source.client.startMigration({ jobId, vmId: 'v', target: { agentUrl: target.url, incarnationId: 'dst' }, maxDowntimeMs: 50, autoConverge: false });

    await start('f-1');
    const failed = await finished(source.client, 'f-1');
    expect(failed).toMatchObject({ state: 'failed', round: 2, error: { code: 'InjectedFault' } });
    expect(await source.client.getVm('v')).toMatchObject({ state: 'running', serverId: 'server-a' });
    expect(await target.client.getVm('v')).toBeNull();

    await start('f-2'); // the fault was consumed by the first migration
    expect(await finished(source.client, 'f-2')).toMatchObject({ state: 'completed' });
    expect(await target.client.getVm('v')).toMatchObject({ serverId: 'server-b' });
  });
});

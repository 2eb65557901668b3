import { DOWNTIME_AIM, MIN_AIMED_DOWNTIME_MS } from '../../workflows/scheduler';
import { historyActivities, saveHistory } from '../support/histories';
import { testFleet } from '../support/fleets';
import { startTestSystem, type TestSystem } from '../support/system';

/**
 * Issue 18: QEMU switches over as soon as what is left fits the limit it was given, so every move's downtime sat near
 * the policy's limit however well it converged. A first try now asks for a third of it (patch aim-downtime); a retry
 * after a move that did not converge, with auto-converge forced, gets the whole limit. Read from the workflow's own
 * history (what each liveMigrateVm was asked) and from the moves' figures (what the sim's QEMU model did with it).
 */
describe('a first try aims below the downtime limit, a retry gets all of it', () => {
  let sys: TestSystem;
  beforeAll(async () => {
    sys = await startTestSystem({ fleet: testFleet({ servers: 4 }), timeScale: 50 });
  });
  afterAll(async () => {
    await sys?.stop();
  });

  it('every first try asks for max(100 ms, limit/3) and comes in under it; the retry of the guest that did not converge asks for the limit', async () => {
    const limitMs = 450;
    const aimedMs = Math.max(MIN_AIMED_DOWNTIME_MS, Math.round(limitMs * DOWNTIME_AIM));
    expect(aimedMs).toBe(150);
    // The first guest dirties 300 MiB/s against a 100 MB/s cap, under the measured auto-converge threshold (0.3 of the
    // 10 Gbit/s NIC a lone move gets): its first try runs without auto-converge and cannot converge.
    const { hostId, vmIds } = await sys.createHostWithVms({ vms: 3, memoryMiB: [1024, 512, 512], dirtyRateMiBps: [300, 2, 2] });
    const handle = await sys.startMigration(hostId, {
      measureInputs: true,
      maxDowntimeMs: limitMs,
      bandwidthCapBps: 100e6,
      autoConverge: false,
      maxParallel: 1,
      onVmFailure: 'retry-with-auto-converge',
    });
    expect((await handle.result()).phase).toBe('completed');
    await saveHistory(sys, hostId, 'measured-inputs.aimed');

    const moves = historyActivities<{ vmId: string; maxDowntimeMs: number; autoConverge: boolean }>(await handle.fetchHistory())
      .filter((a) => a.name === 'liveMigrateVm')
      .map((a) => a.input);
    const [hot, ...calm] = vmIds;
    // The hot guest: a first try at the aim without auto-converge, then the retry with it and the whole limit.
    expect(moves.filter((m) => m.vmId === hot).map((m) => [m.maxDowntimeMs, m.autoConverge])).toEqual([
      [aimedMs, false],
      [limitMs, true],
    ]);
    // The calm ones: one try each, at the aim.
    expect(moves.filter((m) => m.vmId !== hot).map((m) => [m.vmId, m.maxDowntimeMs])).toEqual(calm.map((id) => [id, aimedMs]));

    // And the moves kept to what they asked for: the calm guests under the aim, the retried one under the limit.
    const st = await sys.status(hostId);
    const downtime = new Map(st.vms.map((v) => [v.vmId, v.figures!.downtimeMs]));
    for (const id of calm) expect(downtime.get(id)).toBeLessThanOrEqual(aimedMs);
    expect(downtime.get(hot)).toBeLessThanOrEqual(limitMs);
    expect(st.vms.map((v) => [v.vmId, v.attempts])).toEqual(vmIds.map((id) => [id, id === hot ? 2 : 1]));
  }, 180_000);
});

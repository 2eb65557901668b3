import { startTestSystem, type TestSystem } from '../support/system';
import { testFleet } from '../support/fleets';
import { historyActivities, saveHistory } from '../support/histories';

/**
 * Issue 18: with measured inputs each move first samples its VM's dirty rate (1 s on the source). Taken in the move's
 * slot, that second kept the link idle before every VM; the workflow now samples the next VM while the moves before
 * it run, so a slot that frees starts sending at once. Read from the workflow's own history: when each activity was
 * scheduled and when it closed.
 */
describe('the next VM is sampled while the move before it runs', () => {
  let sys: TestSystem;
  beforeAll(async () => {
    sys = await startTestSystem({ fleet: testFleet({ servers: 4 }), timeScale: 10 });
  });
  afterAll(async () => {
    await sys?.stop();
  });

  it('one move at a time: every VM after the first was sampled before the previous move ended, and not again at its move', async () => {
    const { hostId, vmIds } = await sys.createHostWithVms({ vms: 3, memoryMiB: [2048, 1024, 512], dirtyRateMiBps: [5, 5, 5] });
    const handle = await sys.startMigration(hostId, { maxParallel: 1, measureInputs: true });
    const result = await handle.result();
    expect(result.phase).toBe('completed');
    // Recorded last with the measured set-up rule (patch setup-overlap-measured) (measured-inputs.ahead.json is the run before it).
    await saveHistory(sys, hostId, 'measured-inputs.setup-measured');

    // Event ids order the history: an activity scheduled before another closed has the smaller id.
    const activities = historyActivities<{ vmId?: string }>(await handle.fetchHistory()).map((a) => ({ ...a, vmId: a.input.vmId }));
    const moves = activities.filter((a) => a.name === 'liveMigrateVm');
    expect(moves.map((m) => m.vmId)).toEqual(vmIds); // largest first: the order they were made in
    const samples = activities.filter((a) => a.name === 'measureDirtyRate');
    // One sample per VM: none was taken again at its move.
    expect(samples.map((a) => a.vmId).sort()).toEqual([...vmIds].sort());
    for (let i = 1; i < moves.length; i++) {
      const previous = moves[i - 1]!;
      // One move at a time …
      expect(moves[i]!.scheduledId).toBeGreaterThan(previous.closedId!);
      // … and this VM's sample was taken while the previous one moved.
      const sample = samples.find((a) => a.vmId === moves[i]!.vmId)!;
      expect(sample.scheduledId).toBeLessThan(previous.closedId!);
      expect(sample.closedId).toBeLessThan(moves[i]!.scheduledId);
    }
  }, 120_000);
});

import { migrationPolicySchema, type VmMigrationState, type VmMigrationStatus } from '../../common/migration';
import { channelsFor, launchOrder, moveSettingsFor, streamsFor } from '../../workflows/scheduler';
import { autoSchedulePolicy, orderVms } from '../../workflows/vm-order';

/** The pure scheduler the workflow (moves.ts) and benchmark 1 both run. */
describe('workflows/scheduler.ts', () => {
  const vm = (vmId: string, gib: number, state: VmMigrationState = 'pending', dirtyRateMiBps?: number): VmMigrationStatus => ({
    vmId,
    name: vmId,
    spec: { vcpus: 1, memoryMiB: gib * 1024, diskGiB: 10 },
    state,
    attempts: 0,
    ...(dirtyRateMiBps !== undefined ? { dirtyRateMiBps } : {}),
  });
  const auto = migrationPolicySchema.parse(autoSchedulePolicy({ nicBandwidthBps: 10e9, streamCapFraction: 0.4 }));
  const measured = { nicBytesPerSec: 1.25e9, streamBytesPerSec: 0.25e9 }; // the agent measured S = B/5

  it('launchOrder picks the same VMs, in the same order, as choosing one at a time and marking it moving (the old loop)', () => {
    const vms = [vm('a', 4), vm('b', 16), vm('c', 8, 'moving'), vm('d', 2), vm('e', 16), vm('f', 1)];
    const forced = new Set(['b']);
    const deleting = new Set(['d']);
    const oneByOne: string[] = [];
    const copy = vms.map((v) => ({ ...v }));
    for (let i = 0; i < 4; i++) {
      const waiting = copy.filter((v) => v.state === 'pending' && !deleting.has(v.vmId));
      const fresh = waiting.filter((v) => !forced.has(v.vmId));
      const next = orderVms(fresh.length ? fresh : waiting, 'largest-first')[0];
      if (!next) break;
      next.state = 'moving';
      oneByOne.push(next.vmId);
    }
    expect(launchOrder(vms, 'largest-first', forced, deleting, 4).map((v) => v.vmId)).toEqual(oneByOne);
    expect(oneByOne).toEqual(['e', 'a', 'f', 'b']); // the forced VM last, the deleted one never
    expect(launchOrder(vms, 'largest-first', forced, deleting, 0)).toEqual([]);
  });

  it('without measureInputs it is the policy as given: maxParallel streams, one channel', () => {
    const p = { ...auto, measureInputs: false, maxParallel: 2 };
    expect(streamsFor(p, measured)).toBe(2);
    expect(channelsFor(p, measured)).toBe(1);
    expect(moveSettingsFor(p, vm('a', 4, 'pending', 10_000), [vm('a', 4)], { forced: false }).autoConverge).toBe(true); // declared rate over the policy's threshold
  });

  it('with measureInputs the measured link decides: channels ⌈B/S⌉ so one move fills the link, then one stream', () => {
    expect(channelsFor(auto, measured)).toBe(5);
    expect(streamsFor(auto, measured)).toBe(1);
    // An explicit channel count is kept; streams then fill the rest of the link.
    expect(streamsFor({ ...auto, channels: 1 }, measured)).toBe(5);
    expect(streamsFor({ ...auto, channels: 1, maxParallel: 3 }, measured)).toBe(3);
    // An agent that cannot measure: the policy's figures are the fallback (S = 0.4·B: 3 streams of one channel).
    expect(channelsFor(auto, null)).toBe(1);
    expect(streamsFor(auto, null)).toBe(3);
  });

  it('decides auto-converge from the measured dirty rate, not the declared one, against 80 % of what the move gets', () => {
    const declaredHot = vm('a', 4, 'pending', 100_000);
    const host = [declaredHot];
    const threshold = 0.8 * 1.25e9; // 5 channels at S = B/5: the whole link
    const at = (rate: number) => moveSettingsFor(auto, declaredHot, host, { forced: false, measuredLink: measured, measuredDirtyRateBps: rate });
    expect(at(threshold * 0.99).autoConverge).toBe(false); // declared 100 GiB/s, measured under the threshold: no throttle
    expect(at(threshold).autoConverge).toBe(true);
    expect(at(threshold).channels).toBe(5);
    expect(moveSettingsFor(auto, declaredHot, host, { forced: true, measuredLink: measured, measuredDirtyRateBps: 0 }).autoConverge).toBe(true); // a retry
    // Not measurable: the declared workload is the hint.
    expect(moveSettingsFor(auto, declaredHot, host, { forced: false, measuredLink: measured, measuredDirtyRateBps: null }).autoConverge).toBe(true);
  });

  it('passes post-copy only when the policy asks for it', () => {
    expect(moveSettingsFor(auto, vm('a', 4), [vm('a', 4)], { forced: false, measuredLink: measured }).postCopy).toBeUndefined();
    expect(moveSettingsFor({ ...auto, postCopy: 'when-not-converging' }, vm('a', 4), [vm('a', 4)], { forced: false, measuredLink: measured }).postCopy).toBe(
      true,
    );
  });
});

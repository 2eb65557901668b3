import { migrationPolicySchema, type VmMigrationState, type VmMigrationStatus } from '../../common/migration';
import {
  channelsFor,
  concurrencyFor,
  DEFAULT_MOVE_SETUP_MS,
  MEASURED_MOVE_SETUP_MS,
  SETUP_RULE,
  DOWNTIME_AIM,
  MIN_AIMED_DOWNTIME_MS,
  launchOrder,
  MEASURED_AUTO_CONVERGE_SHARE,
  moveSettingsFor,
  PRE_SETUP_TUNING,
  setupEstimateMs,
  streamsFor,
} from '../../workflows/scheduler';
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

  it('decides auto-converge from the measured dirty rate, not the declared one, against the tuned share of what the move gets', () => {
    const declaredHot = vm('a', 4, 'pending', 100_000);
    const host = [declaredHot];
    const threshold = MEASURED_AUTO_CONVERGE_SHARE * 1.25e9; // 5 channels at S = B/5: the whole link
    // Runs from before the set-up patch keep 80 %.
    const old = (rate: number) =>
      moveSettingsFor(auto, declaredHot, host, { forced: false, measuredLink: measured, measuredDirtyRateBps: rate }, PRE_SETUP_TUNING);
    expect(old(0.79 * 1.25e9).autoConverge).toBe(false);
    expect(old(0.8 * 1.25e9).autoConverge).toBe(true);
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

describe('workflows/scheduler.ts: the moves’ set-up in the concurrency', () => {
  const auto = migrationPolicySchema.parse(autoSchedulePolicy({ nicBandwidthBps: 10e9, streamCapFraction: 0.4 }));
  const link = { nicBytesPerSec: 1.25e9, streamBytesPerSec: 0.5e9 }; // one multifd move (3 channels) fills the link
  const GIB_MIB = 1024;
  const vm = (vmId: string, memoryGiB: number, state: VmMigrationState, setupMs?: number, bytesSent?: number): VmMigrationStatus => ({
    vmId,
    name: vmId,
    spec: { vcpus: 1, memoryMiB: memoryGiB * GIB_MIB, diskGiB: 10 },
    state,
    attempts: 0,
    ...(setupMs !== undefined || bytesSent !== undefined
      ? {
          figures: {
            rounds: 3,
            bytesSent: bytesSent ?? memoryGiB * 2 ** 30,
            memoryBytes: memoryGiB * 2 ** 30,
            downtimeMs: 300,
            totalTimeMs: 1000,
            ...(setupMs !== undefined ? { setupMs } : {}),
          },
        }
      : {}),
  });

  it('estimates the set-up from the completed moves’ reports (median), the stated default before any', () => {
    expect(setupEstimateMs([vm('a', 4, 'pending')])).toBe(DEFAULT_MOVE_SETUP_MS);
    expect(setupEstimateMs([vm('a', 4, 'moved', 3000), vm('b', 4, 'moved', 9000), vm('c', 4, 'moved', 4000)])).toBe(4000);
    expect(setupEstimateMs([vm('a', 4, 'moved', 3000), vm('b', 4, 'moved', 5000)])).toBe(4000);
    // A move still in flight, or one whose agent did not report it, does not count.
    expect(setupEstimateMs([vm('a', 4, 'moving', 1), vm('b', 4, 'moved', undefined, 1)])).toBe(DEFAULT_MOVE_SETUP_MS);
  });

  it('runs ⌈streams·(F+T)/T⌉ moves: one more for big VMs, many for small ones, one when moves report no set-up', () => {
    expect(streamsFor(auto, link)).toBe(1);
    // 32 GiB at 1.25 GB/s ≈ 27.5 s on the link, F = 7 s: 2 slots keep it busy.
    expect(concurrencyFor(auto, link, [vm('a', 32, 'pending'), vm('b', 32, 'pending')])).toBe(2);
    // 1 GiB ≈ 0.86 s against F = 7 s: ⌈(7 + 0.86)/0.86⌉ = 10, capped at maxParallel 8.
    expect(concurrencyFor(auto, link, [vm('a', 1, 'pending'), vm('b', 1, 'pending')])).toBe(auto.maxParallel);
    expect(concurrencyFor({ ...auto, maxParallel: 3 }, link, [vm('a', 1, 'pending')])).toBe(3);
    // Measured: the finished moves took no set-up (the sim backend's default): the link-filling count alone.
    expect(concurrencyFor(auto, link, [vm('a', 1, 'moved', 0), vm('b', 1, 'pending')])).toBe(1);
    // What the moves really sent per byte of size scales T: half the bytes, twice the overlap needed.
    const f = 2000;
    const t = ((16 * 2 ** 30) / 1.25e9) * 1000; // 13.7 s
    expect(concurrencyFor(auto, link, [vm('a', 16, 'moved', f), vm('b', 16, 'pending')])).toBe(Math.ceil((f + t) / t));
    expect(concurrencyFor(auto, link, [vm('a', 16, 'moved', 7000, 8 * 2 ** 30), vm('b', 16, 'pending')])).toBe(Math.ceil((7000 + t / 2) / (t / 2)));
    // Nothing waiting, or no measurements: as before.
    expect(concurrencyFor(auto, link, [vm('a', 1, 'moved', 7000)])).toBe(1);
    expect(concurrencyFor({ ...auto, measureInputs: false, maxParallel: 4 }, link, [vm('a', 1, 'pending')])).toBe(4);
  });

  it('new runs assume the measured set-up before their first move reports one, and leave a small set-up idle (patch setup-overlap-measured)', () => {
    // 4 GiB ≈ 3.4 s on the link: F = 7 s asks for ⌈10.4/3.4⌉ = 4 moves at once, F = 1.1 s for ⌈1 + 0.32 − θ⌉ = 2.
    const waiting = [vm('a', 4, 'pending'), vm('b', 4, 'pending')];
    expect(SETUP_RULE.priorMs).toBe(MEASURED_MOVE_SETUP_MS);
    expect(concurrencyFor(auto, link, waiting)).toBe(4);
    expect(concurrencyFor(auto, link, waiting, undefined, SETUP_RULE)).toBe(2);
    // 64 GiB ≈ 55 s on the link: a 1.1 s set-up is 2 % of it; one more move would split the link for that.
    const big = [vm('a', 64, 'pending'), vm('b', 64, 'pending')];
    expect(concurrencyFor(auto, link, big, undefined, { ...SETUP_RULE, overlapThreshold: 0 })).toBe(2);
    expect(concurrencyFor(auto, link, big, undefined, { ...SETUP_RULE, overlapThreshold: 0.05 })).toBe(1);
    // Once a move reported its set-up, that counts, whichever the prior.
    const reported = [vm('a', 4, 'moved', 7000), vm('b', 4, 'pending')];
    expect(concurrencyFor(auto, link, reported, undefined, { ...SETUP_RULE, overlapThreshold: 0 })).toBe(concurrencyFor(auto, link, reported));
  });

  it('judges auto-converge on the share a move may get among the moves allowed at once, and aims a first try at a third of the limit', () => {
    const v = vm('a', 8, 'pending');
    const at = (rate: number, concurrency?: number, forced = false) =>
      moveSettingsFor(auto, v, [v], {
        forced,
        measuredLink: link,
        measuredDirtyRateBps: rate,
        ...(concurrency ? { concurrency, aimDowntime: true } : {}),
      });
    const rate = 0.2 * 1.25e9; // under 0.3·B alone, over 0.3·B/2 with two moves sharing
    expect(at(rate).autoConverge).toBe(false);
    expect(at(rate, 2).autoConverge).toBe(true);
    // A first try gets a third of the limit, throttled or not; a retry after a move that did not converge, all of it.
    expect(DOWNTIME_AIM).toBeCloseTo(1 / 3);
    expect(at(rate, 2).maxDowntimeMs).toBe(Math.max(MIN_AIMED_DOWNTIME_MS, Math.round(auto.maxDowntimeMs / 3)));
    expect(at(0.05 * 1.25e9, 2).maxDowntimeMs).toBe(Math.max(MIN_AIMED_DOWNTIME_MS, Math.round(auto.maxDowntimeMs / 3)));
    expect([at(rate, 2, true).autoConverge, at(rate, 2, true).maxDowntimeMs]).toEqual([true, undefined]);
    expect(at(0.05 * 1.25e9).maxDowntimeMs).toBeUndefined(); // not asked for (runs before the patch): the policy's limit
    // Never above the policy's limit, never below QEMU's granularity.
    const low = { ...auto, maxDowntimeMs: 120 };
    expect(moveSettingsFor(low, v, [v], { forced: false, measuredLink: link, measuredDirtyRateBps: 0, concurrency: 2, aimDowntime: true }).maxDowntimeMs).toBe(
      MIN_AIMED_DOWNTIME_MS,
    );
    const tiny = { ...auto, maxDowntimeMs: 80 };
    expect(
      moveSettingsFor(tiny, v, [v], { forced: false, measuredLink: link, measuredDirtyRateBps: 0, concurrency: 2, aimDowntime: true }).maxDowntimeMs,
    ).toBeUndefined();
  });
});

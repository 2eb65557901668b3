import { migrationPolicySchema } from '../../common/migration';
import { makespanChart } from '../../bench/report/chart';
import { DEFAULT_LINK, runEvacuationBench } from '../../bench/sim/benchmark';
import { simulateEvacuation, percentile } from '../../bench/sim/evacuation';
import { generateHost } from '../../bench/sim/host-mix';
import { SCHEDULE_NAMES, schedulesFor } from '../../bench/sim/schedules';
import { autoConvergeFor, autoSchedulePolicy } from '../../workflows/vm-order';

/**
 * Benchmark 1's figures are computed, and computed sensibly, at a tiny size: no timing is asserted anywhere (the
 * simulated clock is virtual; wall time is not measured).
 */
describe('benchmark 1 (host evacuation on the sim model) computes its figures', () => {
  const result = runEvacuationBench({ sizes: [4, 6], seed: 7, link: DEFAULT_LINK, robustnessSeeds: 2 });

  it('gives every schedule finite figures that respect the lower bounds', () => {
    expect(result.hosts.map((h) => h.vms)).toEqual([4, 6]);
    for (const h of result.hosts) {
      expect(h.lowerBoundS).toBeGreaterThan(0);
      expect(h.streamBoundS).toBeGreaterThanOrEqual(h.lowerBoundS);
      for (const name of SCHEDULE_NAMES) {
        const f = h.schedules[name];
        for (const v of [f.makespanS, f.ratio, f.ratioToStreamBound, f.maxDowntimeMs, f.p95DowntimeMs, f.bytesSent, f.bytesRatio, f.linkUtilisation])
          expect(Number.isFinite(v)).toBe(true);
        // Every byte crosses the link once, and no VM moves faster than one stream.
        expect(f.makespanS).toBeGreaterThanOrEqual(h.lowerBoundS * (1 - 1e-9));
        expect(f.makespanS).toBeGreaterThanOrEqual(h.streamBoundS * (1 - 1e-9));
        expect(f.bytesRatio).toBeGreaterThanOrEqual(1 - 1e-9);
        expect(f.p95DowntimeMs).toBeLessThanOrEqual(f.maxDowntimeMs);
        expect(f.linkUtilisation).toBeLessThanOrEqual(1 + 1e-9);
        expect(f.stayed).toBe(0); // every schedule retries a VM that did not converge: the host ends empty
      }
      expect(SCHEDULE_NAMES).toContain(h.bestBaseline);
      expect(h.bestBaseline).not.toBe('dhm');
    }
    expect(result.ablations).toHaveLength(2);
    expect(result.robustness.map((r) => r.hosts)).toEqual([2, 2]);
  });

  it('runs one VM at a time in the sequential schedule, so its makespan is the sum of the moves', () => {
    const vms = generateHost(5, 11, 1.25e9);
    const r = simulateEvacuation(vms, schedulesFor(DEFAULT_LINK, vms).sequential, { bytesPerSec: 1.25e9, streamCapFraction: 0.4 });
    const byStart = [...r.perVm].sort((a, b) => a.startMs - b.startMs);
    for (let i = 1; i < byStart.length; i++) expect(byStart[i]!.startMs).toBeGreaterThanOrEqual(byStart[i - 1]!.endMs - 1e-6);
    expect(r.linkUtilisation).toBeLessThanOrEqual(0.4 + 1e-9); // one stream is capped at S = 0.4·B
  });

  it('is deterministic for a seed', () => {
    const again = runEvacuationBench({ sizes: [4, 6], seed: 7, link: DEFAULT_LINK, robustnessSeeds: 0 });
    expect(again.hosts.map((h) => h.schedules.dhm.makespanS)).toEqual(result.hosts.map((h) => h.schedules.dhm.makespanS));
  });

  it('draws the chart with one bar per schedule and host size', () => {
    const svg = makespanChart(
      result.hosts.map((h) => ({ label: `${h.vms} VMs`, bars: SCHEDULE_NAMES.map((n) => ({ name: n, value: h.schedules[n].ratio })) })),
      { title: 'test', target: 1.15 },
    );
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.match(/<rect x=/g)?.length).toBe(result.hosts.length * SCHEDULE_NAMES.length + SCHEDULE_NAMES.length); // bars + legend
  });

  it('uses the nearest-rank percentile', () => {
    expect(percentile([5, 1, 3, 2, 4], 0.95)).toBe(5);
    expect(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 0.95)).toBe(19);
    expect(percentile([], 0.5)).toBeNaN();
  });
});

describe("dhm's schedule policy", () => {
  it('runs the fewest streams that fill the link and is a valid policy', () => {
    const p = autoSchedulePolicy({ nicBandwidthBps: 10e9, streamCapFraction: 0.4 });
    expect(p.maxParallel).toBe(3);
    expect(autoSchedulePolicy({ nicBandwidthBps: 10e9, streamCapFraction: 0.5 }).maxParallel).toBe(2);
    expect(autoSchedulePolicy({ nicBandwidthBps: 10e9, streamCapFraction: 1 }).maxParallel).toBe(1);
    // 80 % of a third of 10 Gbit/s, in MiB/s; a third of the 300 ms limit.
    expect(p.autoConvergeAboveDirtyRateMiBps).toBe(Math.round((0.8 * 1.25e9) / 3 / 2 ** 20));
    expect(p.maxDowntimeMs).toBe(100);
    expect(migrationPolicySchema.parse(p)).toMatchObject({ maxParallel: 3, order: 'largest-first', onVmFailure: 'retry-with-auto-converge' });
  });

  it('keeps ⌈B/S⌉ streams on a host whose largest VM is the critical path and passes the link figures instead', () => {
    const link = { nicBandwidthBps: 10e9, streamCapFraction: 0.4 };
    const skewed = autoSchedulePolicy(link, { vmMemoryMiB: [65536, 4096, 2048, 1024] });
    expect(skewed.maxParallel).toBe(3); // the critical VM gets its whole stream from bandwidthCapFor's caps
    expect(skewed.linkBytesPerSec).toBe(1.25e9);
    expect(skewed.streamCapBytesPerSec).toBe(0.5e9);
    expect(migrationPolicySchema.parse(skewed)).toMatchObject({ linkBytesPerSec: 1.25e9, streamCapBytesPerSec: 0.5e9 });
  });

  it('accepts the link figures as optional positive numbers in the policy', () => {
    expect(migrationPolicySchema.parse({}).linkBytesPerSec).toBeUndefined();
    expect(migrationPolicySchema.safeParse({ linkBytesPerSec: 0 }).success).toBe(false);
    expect(migrationPolicySchema.safeParse({ streamCapBytesPerSec: -1 }).success).toBe(false);
  });

  it('turns auto-converge on only for the VMs that need it', () => {
    const policy = { autoConverge: false, autoConvergeAboveDirtyRateMiBps: 300 };
    expect(autoConvergeFor(policy, { dirtyRateMiBps: 299 }, false)).toBe(false);
    expect(autoConvergeFor(policy, { dirtyRateMiBps: 300 }, false)).toBe(true);
    expect(autoConvergeFor(policy, { dirtyRateMiBps: undefined }, false)).toBe(false);
    expect(autoConvergeFor(policy, { dirtyRateMiBps: 0 }, true)).toBe(true); // a retry after NotConverging
    expect(autoConvergeFor({ autoConverge: false, autoConvergeAboveDirtyRateMiBps: undefined }, { dirtyRateMiBps: 5000 }, false)).toBe(false); // the default
    expect(autoConvergeFor({ autoConverge: true, autoConvergeAboveDirtyRateMiBps: undefined }, { dirtyRateMiBps: 0 }, false)).toBe(true);
  });
});

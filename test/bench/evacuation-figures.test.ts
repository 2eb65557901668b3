import { makespanChart } from '../../bench/report/chart';
import { DEFAULT_LINK, linkSpec, runEvacuationBench } from '../../bench/sim/benchmark';
import { percentile, simulateEvacuation, type HostView } from '../../bench/sim/evacuation';
import { generateHost, GIB, type BenchVm } from '../../bench/sim/host-mix';
import { SCHEDULE_NAMES, schedulesFor } from '../../bench/sim/schedules';
import { statusOf } from '../../bench/sim/status';
import { migrationPolicySchema } from '../../common/migration';
import { autoSchedulePolicy } from '../../workflows/vm-order';

/**
 * Benchmark 1's figures are computed, and computed sensibly, at a tiny size: no timing is asserted anywhere (the
 * simulated clock is virtual; wall time is not measured).
 */
describe('benchmark 1 (host evacuation on the sim model) computes its figures', () => {
  const result = runEvacuationBench({ sizes: [4, 6], seed: 10001, link: DEFAULT_LINK, heldOutSeeds: [10001, 10002], tuningSeeds: [1, 2] });

  it('gives every schedule finite figures that respect the bounds', () => {
    expect(result.hosts.map((h) => h.vms)).toEqual([4, 6]);
    for (const h of result.hosts) {
      expect(h.boundS).toBeGreaterThanOrEqual(h.lowerBoundS);
      for (const name of SCHEDULE_NAMES) {
        const f = h.schedules[name];
        for (const v of [f.makespanS, f.ratio, f.bytesSent, f.bytesRatio, f.linkUtilisation]) expect(Number.isFinite(v)).toBe(true);
        // Every byte crosses the link once.
        expect(f.makespanS).toBeGreaterThanOrEqual(h.lowerBoundS * (1 - 1e-9));
        expect(f.bytesRatio).toBeGreaterThanOrEqual(1 - 1e-9);
        expect(f.linkUtilisation).toBeLessThanOrEqual(1 + 1e-9);
      }
      if (h.bestBaseline) expect(h.schedules[h.bestBaseline].stayed).toBe(0); // the best baseline is one that emptied the host
      expect(h.bestBaseline).not.toBe('dhm');
    }
    expect(result.ablations).toHaveLength(2);
    expect(result.heldOut.map((r) => r.hosts)).toEqual([2, 2]);
    expect(result.tuningSet.map((r) => r.hosts)).toEqual([2, 2]);
  });

  it('is deterministic: the same seeds give the same figures (the measurement noise is seeded too)', () => {
    const again = runEvacuationBench({ sizes: [4], seed: 10001, link: DEFAULT_LINK, heldOutSeeds: [10001], tuningSeeds: [1] });
    expect(again.hosts[0]!.schedules).toEqual(result.hosts[0]!.schedules);
  });

  it('uses the nearest-rank percentile', () => {
    expect(percentile([5, 1, 3, 2, 4], 0.95)).toBe(5);
    expect(percentile([], 0.5)).toBeNaN();
  });

  it('draws the chart', () => {
    const svg = makespanChart([{ label: 'x', bars: [{ name: 'dhm', value: 1.05 }] }], { title: 't', target: 1.1 });
    expect(svg).toContain('<svg');
  });
});

describe('the baselines follow their documented defaults', () => {
  const spec = linkSpec(DEFAULT_LINK);
  const vm = (i: number, gib: number, disk = 0): BenchVm => ({
    vmId: `vm-${i}`,
    memoryBytes: gib * GIB,
    nonZeroBytes: gib * GIB,
    dirtyRateBps: 0,
    workingSetBytes: 0,
    coldDirtyRateBps: 0,
    diskBytes: disk * GIB,
    diskWriteBps: 0,
    kind: 'idle',
  });
  const vms = Array.from({ length: 10 }, (_, i) => vm(i, 2, i % 2 ? 4 : 0));
  const s = schedulesFor(DEFAULT_LINK, spec, vms, 1);
  const host = (): HostView => ({ vms: vms.map((v) => statusOf(v)), forced: new Set() });

  it('KubeVirt: 2 outbound per node, multifd 8, no auto-converge; progressTimeout 150 s aborts, completionTimeoutPerGiB switches to post-copy', () => {
    expect(s.kubevirt.streams).toBe(2);
    const o = s.kubevirt.settings('vm-0', host());
    expect(o).toMatchObject({ channels: 8, autoConverge: false, maxDowntimeMs: 300, agentGivesUp: false });
    const c = o.controller!;
    expect(c.onRound({ elapsedMs: 0, round: 0, dirtyBytes: 100, bytesSent: 0, downtimeLimitMs: 300 }).action).toBe('continue');
    // The remaining data has not shrunk for 150 s.
    expect(c.onRound({ elapsedMs: 150_000, round: 5, dirtyBytes: 100, bytesSent: 0, downtimeLimitMs: 300 }).action).toBe('abort');
    const c2 = s.kubevirt.settings('vm-0', host()).controller!;
    // 800 s per GiB of a 2 GiB VM.
    expect(c2.onRound({ elapsedMs: 1_600_000, round: 9, dirtyBytes: 1, bytesSent: 0, downtimeLimitMs: 300 }).action).toBe('postcopy');
  });

  it('Nova: one at a time, downtime ramped in 10 steps of 75 s per GiB up to the common limit, then abort or force-complete at 800 s per GiB', () => {
    expect(s['nova (abort)'].streams).toBe(1);
    const o = s['nova (abort)'].settings('vm-0', host()); // 2 GiB: a step every 150 s
    expect(o.maxDowntimeMs).toBe(30);
    const at = (ms: number) => o.controller!.onRound({ elapsedMs: ms, round: 1, dirtyBytes: 1, bytesSent: 0, downtimeLimitMs: 30 });
    expect(at(149_000)).toEqual({ action: 'continue', downtimeLimitMs: 30 });
    expect(at(150_000)).toEqual({ action: 'continue', downtimeLimitMs: 30 + 27 });
    expect(at(1_500_000)).toEqual({ action: 'continue', downtimeLimitMs: 300 });
    expect(at(1_600_000)).toMatchObject({ action: 'abort' });
    expect(
      s['nova (force-complete)']
        .settings('vm-0', host())
        .controller!.onRound({ elapsedMs: 1_600_000, round: 1, dirtyBytes: 1, bytesSent: 0, downtimeLimitMs: 300 }),
    ).toEqual({
      action: 'pause',
    });
  });

  it('Proxmox: one at a time, auto-converge and xbzrle always, 100 ms doubled after more than 5 rounds without shrinking, at most the limit', () => {
    expect(s.proxmox.streams).toBe(1);
    const o = s.proxmox.settings('vm-0', host());
    expect(o).toMatchObject({ autoConverge: true, maxDowntimeMs: 100 });
    expect(o.resendFactor).toBeLessThan(1);
    const limits = Array.from(
      { length: 13 },
      (_, i) =>
        (o.controller!.onRound({ elapsedMs: i, round: i, dirtyBytes: 100, bytesSent: 0, downtimeLimitMs: 0 }) as { downtimeLimitMs: number }).downtimeLimitMs,
    );
    // The first round sets the baseline; 6 rounds that did not shrink double it, 6 more double it again (capped at 300).
    expect(limits.slice(0, 6)).toEqual([100, 100, 100, 100, 100, 100]);
    expect(limits[6]).toBe(200);
    expect(limits[12]).toBe(300);
  });

  it('vSphere: a move starts while the costs in flight fit the host budget of 8 (1 per vMotion, 4 with local disks)', () => {
    // vm-0 (cost 1), vm-1 (4), vm-2 (1), vm-3 (4: 10 > 8, stops there).
    expect(s.vsphere.launch(host(), 8, [])).toEqual(['vm-0', 'vm-1', 'vm-2']);
    const h = host();
    h.vms.forEach((v) => (v.state = ['vm-0', 'vm-1', 'vm-2'].includes(v.vmId) ? 'moving' : v.state));
    expect(s.vsphere.launch(h, 5, ['vm-0', 'vm-1', 'vm-2'])).toEqual([]); // 6 in flight, vm-3 needs 4
    expect(s.vsphere.settings('vm-0', host()).autoConverge).toBe(true);
  });

  it('the simple schedule: ⌈B/S⌉ streams from the measured S, auto-converge on every VM', () => {
    expect(s['simple ⌈B/S⌉ + AC'].streams).toBe(3);
    expect(s['simple ⌈B/S⌉ + AC'].settings('vm-3', host()).autoConverge).toBe(true);
  });

  it("dhm gets no input the baselines lack: the workflow's view of a VM carries no dirty rate", () => {
    const hot = { ...vm(0, 8), dirtyRateBps: 900 * 2 ** 20, workingSetBytes: GIB };
    expect(statusOf(hot).dirtyRateMiBps).toBeUndefined();
  });

  it("dhm's policy is valid, measures its inputs and aims at the same limit as the baselines", () => {
    const p = autoSchedulePolicy({ nicBandwidthBps: 10e9, streamCapFraction: 0.4 });
    expect(p).toMatchObject({ measureInputs: true, maxDowntimeMs: 300, order: 'largest-first' });
    expect(migrationPolicySchema.parse(p)).toMatchObject({ measureInputs: true, postCopy: 'off' });
  });

  it('a schedule that gives up leaves the VM on the source, and the host counts it as not emptied', () => {
    const hot = [{ ...vm(0, 4), dirtyRateBps: 2e9, workingSetBytes: 2 * GIB }];
    const r = simulateEvacuation(hot, schedulesFor(DEFAULT_LINK, spec, hot, 1)['nova (abort)'], spec);
    expect(r.stayed).toBe(1);
    const f = simulateEvacuation(hot, schedulesFor(DEFAULT_LINK, spec, hot, 1)['nova (force-complete)'], spec);
    expect(f.stayed).toBe(0);
    expect(f.maxDowntimeMs).toBeGreaterThan(1000); // force-complete pauses the guest to send the rest
  });
});

describe('the host mix', () => {
  it('is the same for the same seed', () => {
    expect(generateHost(8, 5, 1.25e9)).toEqual(generateHost(8, 5, 1.25e9));
  });
});

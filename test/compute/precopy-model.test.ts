import { SWITCHOVER_COST_MS } from '../../compute/sim/precopy';
import { Agents, finished, MIB, relErr, spec, startPair } from './helpers';

/**
 * The sim's reported totals against an independent calculation of the pre-copy model (DESIGN.md), one migration at
 * a time so the stream's bandwidth is constant: bw = min(B, 0.4·B, cap) / slowdown.
 */

interface Case {
  name: string;
  memoryMiB: number;
  dirtyMiBps: number;
  workingSetMiB: number;
  nicBitsPerSec: number;
  maxDowntimeMs: number;
  bandwidthCapBps?: number;
  linkSlowdown?: number;
  maxRounds?: number;
  autoConverge?: boolean;
}

interface Expected {
  state: 'completed' | 'failed';
  round: number;
  bytesSent: number;
  totalTimeMs: number;
  downtimeMs?: number;
  throttlePct: number;
}

/** Iterates the model round by round, in seconds and bytes. */
function expectedOf(c: Case): Expected {
  const M = c.memoryMiB * MIB;
  const W = c.workingSetMiB * MIB;
  const bw = Math.min(c.nicBitsPerSec / 8, 0.4 * (c.nicBitsPerSec / 8), c.bandwidthCapBps ?? Infinity) / (c.linkSlowdown ?? 1);
  const maxRounds = c.maxRounds ?? 30;
  let throttle = 0;
  let t = 0;
  let sent = 0;
  let toSend = M;
  for (let round = 0; ; round++) {
    const duration = toSend / bw;
    t += duration;
    sent += toSend;
    const dirty = Math.min(W, c.dirtyMiBps * MIB * (1 - throttle / 100) * duration);
    if ((dirty / bw) * 1000 <= c.maxDowntimeMs) {
      const downtimeMs = (dirty / bw) * 1000 + SWITCHOVER_COST_MS;
      return { state: 'completed', round, bytesSent: sent + dirty, downtimeMs, totalTimeMs: t * 1000 + downtimeMs, throttlePct: throttle };
    }
    if (c.autoConverge) {
      if (dirty > 0.5 * toSend) throttle = throttle === 0 ? 20 : Math.min(99, throttle + 10);
    } else if (round + 1 >= maxRounds || sent > 3 * M) {
      return { state: 'failed', round, bytesSent: sent, totalTimeMs: t * 1000, throttlePct: 0 };
    }
    toSend = dirty;
  }
}

const cases: Case[] = [
  { name: 'idle VM: one round, downtime is the switchover cost', memoryMiB: 4096, dirtyMiBps: 0, workingSetMiB: 0, nicBitsPerSec: 10e9, maxDowntimeMs: 300 },
  { name: 'busy VM, working set caps round 1', memoryMiB: 8192, dirtyMiBps: 200, workingSetMiB: 1024, nicBitsPerSec: 10e9, maxDowntimeMs: 300 },
  { name: '1 Gbit/s NIC', memoryMiB: 2048, dirtyMiBps: 20, workingSetMiB: 512, nicBitsPerSec: 1e9, maxDowntimeMs: 300 },
  {
    name: 'per-migration bandwidth cap below the stream cap',
    memoryMiB: 16384,
    dirtyMiBps: 500,
    workingSetMiB: 4096,
    nicBitsPerSec: 25e9,
    maxDowntimeMs: 500,
    bandwidthCapBps: 1e9,
  },
  { name: 'link slowed 2x by a fault', memoryMiB: 1024, dirtyMiBps: 30, workingSetMiB: 256, nicBitsPerSec: 10e9, maxDowntimeMs: 100, linkSlowdown: 2 },
  { name: 'tight downtime: many shrinking rounds', memoryMiB: 4096, dirtyMiBps: 100, workingSetMiB: 4096, nicBitsPerSec: 10e9, maxDowntimeMs: 5 },
  { name: 'round limit: rest stuck at W', memoryMiB: 4096, dirtyMiBps: 600, workingSetMiB: 1024, nicBitsPerSec: 10e9, maxDowntimeMs: 300, maxRounds: 5 },
  { name: '3·M limit: D above the stream bandwidth', memoryMiB: 1024, dirtyMiBps: 480, workingSetMiB: 1024, nicBitsPerSec: 10e9, maxDowntimeMs: 50 },
  {
    name: 'auto-converge throttles D until it fits',
    memoryMiB: 2048,
    dirtyMiBps: 600,
    workingSetMiB: 2048,
    nicBitsPerSec: 10e9,
    maxDowntimeMs: 300,
    autoConverge: true,
  },
];

describe('sim pre-copy model: reported totals match an independent calculation within 5 %', () => {
  const agents = new Agents();
  afterEach(() => agents.stopAll());

  test.each(cases)('$name', async (c) => {
    const exp = expectedOf(c);
    // Fast: the model advances in exact simulated time, so the time scale does not change the figures.
    const { source, target } = await startPair(agents, { nicBandwidthBps: c.nicBitsPerSec, timeScale: 2000 });
    if (c.linkSlowdown) await source.client.setFaults({ linkSlowdown: c.linkSlowdown });
    await source.client.createVm({
      vmId: 'vm-1',
      incarnationId: 'src',
      spec: spec(c.memoryMiB, { dirtyRateMiBps: c.dirtyMiBps, workingSetMiB: c.workingSetMiB }),
    });
    await source.client.startMigration({
      jobId: 'job-1',
      vmId: 'vm-1',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: c.maxDowntimeMs,
      autoConverge: c.autoConverge ?? false,
      ...(c.bandwidthCapBps ? { bandwidthCapBps: c.bandwidthCapBps } : {}),
      ...(c.maxRounds ? { maxRounds: c.maxRounds } : {}),
    });
    const job = await finished(source.client, 'job-1');

    expect(job.state).toBe(exp.state);
    expect(job.round).toBe(exp.round);
    expect(relErr(job.bytesSent, exp.bytesSent)).toBeLessThan(0.05);
    expect(relErr(job.totalTimeMs!, exp.totalTimeMs)).toBeLessThan(0.05);
    expect(job.throttlePct).toBe(exp.throttlePct);
    expect(job.memoryBytes).toBe(c.memoryMiB * MIB);
    if (exp.state === 'completed') {
      expect(relErr(job.downtimeMs!, exp.downtimeMs!)).toBeLessThan(0.05);
      expect(job.bytesRemaining).toBe(0);
      expect((await target.client.getVm('vm-1'))?.serverId).toBe('server-b');
      expect(await source.client.getVm('vm-1')).toBeNull();
    } else {
      expect(job.error?.code).toBe('NotConverging');
      expect(job.downtimeMs).toBeUndefined();
      expect((await source.client.getVm('vm-1'))?.state).toBe('running');
      expect(await target.client.getVm('vm-1')).toBeNull();
    }
  });

  test('the independent calculation covers both outcomes and every limit', () => {
    const outcomes = cases.map(expectedOf);
    expect(outcomes.filter((o) => o.state === 'failed')).toHaveLength(2);
    expect(outcomes.some((o) => o.state === 'completed' && o.round >= 5)).toBe(true);
    expect(outcomes.some((o) => o.throttlePct > 0)).toBe(true);
    expect(SWITCHOVER_COST_MS).toBe(5);
  });
});

import type { SimClock } from '../../compute/sim/clock';
import { SimLink, type Flow } from '../../compute/sim/link';
import { SWITCHOVER_COST_MS } from '../../compute/sim/precopy';
import { Agents, finished, GIB, relErr, spec, startPair, waitFor } from './helpers';

describe('two concurrent migrations from one server share its NIC', () => {
  const agents = new Agents();
  afterAll(() => agents.stopAll());

  test('each gets B/2 while both run, and the pair takes twice as long as one alone', async () => {
    // 8 Gbit/s = 1e9 B/s; streamCapFraction 1 so one stream alone may fill the NIC (with the default 0.4 two
    // streams would not contend at all: 0.8·B ≤ B). Idle guests, so each migration is exactly one 8 GiB round.
    const B = 1e9;
    const M = 8 * GIB;
    // Slow enough that starting the two jobs (each an announcement to the target and a start, over fresh mTLS
    // connections: ~100–300 ms of wall time) stays well inside half a solo move in simulated time.
    const timeScale = 8;
    const { source, target } = await startPair(agents, { nicBandwidthBps: 8 * B, streamCapFraction: 1, timeScale });
    for (const vmId of ['solo', 'a', 'b']) await source.client.createVm({ vmId, incarnationId: 'src', spec: spec(8192) });
    const start = (vmId: string) =>
      source.client.startMigration({
        jobId: `job-${vmId}`,
        vmId,
        target: { agentUrl: target.url, incarnationId: 'dst' },
        maxDowntimeMs: 300,
        autoConverge: false,
      });

    await start('solo');
    const solo = await finished(source.client, 'job-solo');
    const aloneMs = (M / B) * 1000 + SWITCHOVER_COST_MS;
    expect(relErr(solo.totalTimeMs!, aloneMs)).toBeLessThan(1e-6);

    const before = performance.now();
    await Promise.all([start('a'), start('b')]);
    // A job is accepted before its stream joins the link (the target agent is asked first): wait until both stream.
    await waitFor('both streams sending', async () => {
      const [a, b] = await Promise.all([source.client.getMigration('job-a'), source.client.getMigration('job-b')]);
      return a!.bytesSent > 0 && b!.bytesSent > 0 ? true : undefined;
    });
    // δ: how much later (simulated) the second stream joined. It cannot exceed the wall time until both were streaming.
    const deltaBoundMs = (performance.now() - before) * timeScale;

    // Mid-run, far from either end, both report half the NIC.
    for (const fraction of [0.25, 0.5]) {
      await waitFor(`job-a to pass ${fraction * 100} %`, async () =>
        (await source.client.getMigration('job-a'))!.bytesSent >= fraction * M ? true : undefined,
      );
      const [a, b] = await Promise.all([source.client.getMigration('job-a'), source.client.getMigration('job-b')]);
      expect(a!.state).toBe('running');
      expect(b!.state).toBe('running');
      expect(relErr(a!.throughputBps, B / 2)).toBeLessThan(1e-9);
      expect(relErr(b!.throughputBps, B / 2)).toBeLessThan(1e-9);
    }

    const [a, b] = await Promise.all([finished(source.client, 'job-a'), finished(source.client, 'job-b')]);
    // Fluid sharing keeps the NIC full, so the pair moves 2M in 2M/B = twice one alone. The first job runs alone for δ
    // (until the second joins) and ends at 2M/B − δ; the second started δ later and ends at 2M/B: both take 2M/B − δ
    // (+ the switchover cost). So: the two totals are equal, neither exceeds twice one alone, and they fall short of it
    // by at most δ — the tolerance, measured above (the wall time to start both × the time scale, a few % of the total on a quiet box).
    expect(a.state).toBe('completed');
    expect(b.state).toBe('completed');
    expect(relErr(a.totalTimeMs!, b.totalTimeMs!)).toBeLessThan(1e-9);
    const twiceAloneMs = 2 * (M / B) * 1000 + SWITCHOVER_COST_MS;
    expect(relErr(twiceAloneMs, 2 * aloneMs - SWITCHOVER_COST_MS)).toBeLessThan(1e-9);
    for (const job of [a, b]) {
      expect(job.totalTimeMs!).toBeLessThanOrEqual(twiceAloneMs + 1e-6);
      expect(job.totalTimeMs!).toBeGreaterThanOrEqual(twiceAloneMs - deltaBoundMs - 1e-6);
    }
    expect(deltaBoundMs).toBeLessThan(aloneMs / 2); // so the bounds do say "about twice", not just "more than once"
  });
});

describe('SimLink: max-min fair shares, recomputed when flows come and go', () => {
  /** A clock frozen at 0, so the link never advances on its own; shares are read right after each change. */
  const frozen = { now: () => 0, wallDelayUntil: () => 1e9, timeScale: 1 } as unknown as SimClock;
  const flow = (capBps: number): Flow => ({ capBps, pending: 1e18, rateBps: 0, onSent: () => {}, onChunkDone: () => true });

  test('equal caps split evenly; a capped flow keeps its cap and the others share the rest', () => {
    const link = new SimLink(1000, frozen, (err) => {
      throw err;
    });
    const [x, y, z] = [flow(1000), flow(1000), flow(100)];
    link.add(x);
    expect(x.rateBps).toBe(1000);
    link.add(y);
    expect([x.rateBps, y.rateBps]).toEqual([500, 500]);
    link.add(z);
    expect([x.rateBps, y.rateBps, z.rateBps]).toEqual([450, 450, 100]);
    link.remove(x);
    expect([y.rateBps, z.rateBps]).toEqual([900, 100]);
    link.setSlowdown(4);
    expect([y.rateBps, z.rateBps]).toEqual([225, 25]);
    link.close();
  });

  test('with the default per-stream cap (0.4·B) two streams do not contend, three do', () => {
    const link = new SimLink(1000, frozen, (err) => {
      throw err;
    });
    const flows = [flow(400), flow(400), flow(400)];
    link.add(flows[0]!);
    link.add(flows[1]!);
    expect(flows.slice(0, 2).map((f) => f.rateBps)).toEqual([400, 400]);
    link.add(flows[2]!);
    for (const f of flows) expect(f.rateBps).toBeCloseTo(1000 / 3, 9);
    link.close();
  });
});

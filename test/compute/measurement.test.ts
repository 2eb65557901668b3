import { dirtiedBytes } from '../../compute/sim/dirty-model';
import { MEASUREMENT_NOISE, measuredDirtyRateBps, measuredStreamBps } from '../../compute/sim/measure';
import { seededRandom } from '../../compute/sim/rng';
import { AgentError } from '../../compute/agent-client';
import { measureQuerySchema } from '../../compute/agent-api';
import { Agents, MIB, spec, startPair } from './helpers';

describe('the sim measurements (what dhm decides from)', () => {
  const model = { hotBytes: 512 * MIB, hotRateBps: 200 * MIB, coldBytes: 3584 * MIB, coldRateBps: 8 * MIB };

  it('a dirty-rate measurement stays within the noise bound of the distinct bytes dirtied over the sample', () => {
    const rand = seededRandom(7);
    for (const sampleMs of [100, 1000, 5000]) {
      const truth = (dirtiedBytes(model, sampleMs) / sampleMs) * 1000;
      const samples = Array.from({ length: 500 }, () => measuredDirtyRateBps(model, sampleMs, 0, rand));
      for (const m of samples) expect(Math.abs(m / truth - 1)).toBeLessThanOrEqual(MEASUREMENT_NOISE + 1e-12);
      // Noise, not a constant offset: both sides of the truth are seen.
      expect(samples.some((m) => m < truth) && samples.some((m) => m > truth)).toBe(true);
    }
  });

  it('is seeded: the same seed gives the same measurements, another seed others', () => {
    const a = seededRandom(42);
    const b = seededRandom(42);
    const c = seededRandom(43);
    const run = (r: () => number) => [1, 2, 3].map(() => measuredDirtyRateBps(model, 1000, 0, r));
    const ra = run(a);
    expect(run(b)).toEqual(ra);
    expect(run(c)).not.toEqual(ra);
  });

  it('measures distinct pages: a saturated hot set reads below the guest write rate over a long sample, and a throttle lowers it', () => {
    const rand = () => 0.5; // ε = 0
    const short = measuredDirtyRateBps(model, 100, 0, rand);
    const long = measuredDirtyRateBps(model, 10_000, 0, rand);
    expect(Math.abs(short / (208 * MIB) - 1)).toBeLessThan(1e-3); // 0.1 s: the hot set is not yet full, the cold writes barely repeat
    expect(long).toBeLessThan(0.3 * short); // 10 s: 512 MiB of hot set + the cold writes, over 10 s
    expect(Math.abs(measuredDirtyRateBps(model, 100, 50, rand) / (short / 2) - 1)).toBeLessThan(1e-3);
  });

  it('a sample length out of range is refused by the route schema, naming sampleMs', () => {
    const r = measureQuerySchema.safeParse({ sampleMs: '5' });
    expect(r.success).toBe(false);
    expect(r.error!.issues[0]!.path).toEqual(['sampleMs']);
    expect(measureQuerySchema.parse({})).toEqual({ sampleMs: 1000 });
  });

  it('a link measurement never exceeds the NIC and stays within the noise of the stream cap', () => {
    const rand = seededRandom(1);
    for (let i = 0; i < 200; i++) {
      const s = measuredStreamBps(400, 1000, rand);
      expect(s).toBeLessThanOrEqual(1000);
      expect(Math.abs(s / 400 - 1)).toBeLessThanOrEqual(MEASUREMENT_NOISE + 1e-12);
      expect(measuredStreamBps(1000, 1000, rand)).toBeLessThanOrEqual(1000);
    }
  });
});

describe('the agent measurement routes (sim agents over HTTPS)', () => {
  const agents = new Agents();
  afterAll(() => agents.stopAll());

  it('GET dirty-rate samples the VM for sampleMs of simulated time; GET link is measured once and then repeated; a VM not here is a 404', async () => {
    const { source } = await startPair(agents, { nicBandwidthBps: 8e9, timeScale: 1000, measurementSeed: 3 });
    await source.client.createVm({ vmId: 'vm-m', incarnationId: 'src', spec: spec(4096, { dirtyRateMiBps: 100, workingSetMiB: 1024 }) });
    const m = await source.client.measureDirtyRate('vm-m', 1000);
    expect(m).not.toBeNull();
    expect(m!.method).toBe('sim');
    expect(m!.sampleMs).toBe(1000);
    // 1 s at 100 MiB/s into a 1 GiB hot set: 100 MiB/s, within the noise.
    expect(Math.abs(m!.dirtyRateBps / (100 * MIB) - 1)).toBeLessThanOrEqual(MEASUREMENT_NOISE);
    const l1 = await source.client.measureLink(200);
    const l2 = await source.client.measureLink(200);
    expect(l2).toEqual(l1);
    expect(l1!.nicBytesPerSec).toBe(1e9);
    expect(Math.abs(l1!.streamBytesPerSec / 0.4e9 - 1)).toBeLessThanOrEqual(MEASUREMENT_NOISE);
    const bad = await fetchError(() => source.client.measureDirtyRate('no-such-vm'));
    expect(bad.status).toBe(404);
  });
});

async function fetchError(f: () => Promise<unknown>): Promise<AgentError> {
  try {
    await f();
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected an AgentError');
}

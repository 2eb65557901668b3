import type { AgentClient, GuestOpResult } from '../../compute/agent-client';
import { Agents, finished, spec, startPair, waitFor } from './helpers';

interface Observed extends GuestOpResult {
  /** Wall ms the operation took, request to reply. */
  latencyMs: number;
}

/** Increments the counter back to back until told to stop; any failure rejects `done`. */
function incrementer(client: AgentClient, vmId: string) {
  const seen: Observed[] = [];
  let stopped = false;
  const done = (async () => {
    while (!stopped) {
      const t0 = performance.now();
      const r = await client.guestOp(vmId, { kind: 'increment' });
      seen.push({ ...r, latencyMs: performance.now() - t0 });
    }
  })();
  return {
    seen,
    stop: async () => {
      stopped = true;
      await done;
    },
  };
}

describe('guest operations through a live migration', () => {
  const agents = new Agents();
  afterEach(() => agents.stopAll());

  const TIME_SCALE = 5;
  /**
   * Wall-clock allowance on top of the downtime. After the pause the VM becomes reachable only after three more
   * request/reply exchanges — the source commits to the target, answers the parked op VM_MOVED, the client repeats
   * it at the target — plus timer lateness. So: a fixed 40 ms, plus three ordinary round trips as this run measured
   * them (the 90th percentile of the ops that did not meet the pause: ~1–2 ms on a quiet box, more when the
   * machine is busy).
   */
  const marginMs = (ordinaryLatencies: number[]) => {
    const sorted = [...ordinaryLatencies].sort((x, y) => x - y);
    return 40 + 3 * sorted[Math.floor(0.9 * (sorted.length - 1))]!;
  };

  test('a client incrementing continuously sees every op succeed, consecutive, and stalls no longer than the downtime', async () => {
    // 1 GiB at 5e8 B/s, dirtying 300 MiB/s: two pre-copy rounds, then ~850 ms (simulated) of stop-and-copy, which is
    // ~170 ms of wall time at 5x: long enough that a stall within it is unmistakable, against a 50 ms margin.
    const { source, target } = await startPair(agents, { timeScale: TIME_SCALE });
    await source.client.createVm({ vmId: 'vm', incarnationId: 'src', spec: spec(1024, { dirtyRateMiBps: 300, workingSetMiB: 1024 }) });

    // Warm-up on another VM along the same path (pause, commit, VM_MOVED hop), so one-time costs of a fresh process
    // (JIT, first connections between the agents) are not counted as stall below.
    await source.client.createVm({ vmId: 'warm', incarnationId: 'src', spec: spec(64, { dirtyRateMiBps: 10, workingSetMiB: 64 }) });
    const warm = incrementer(source.client, 'warm');
    await source.client.startMigration({
      jobId: 'warm',
      vmId: 'warm',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 50,
      autoConverge: false,
    });
    expect((await finished(source.client, 'warm')).state).toBe('completed');
    await waitFor('the warm-up VM served by the target', () => warm.seen.some((r) => r.servedBy === 'server-b'));
    await warm.stop();

    const client = incrementer(source.client, 'vm'); // holds the source's URL throughout
    await waitFor('a few ops before the migration', () => client.seen.length >= 5);
    await source.client.startMigration({
      jobId: 'live',
      vmId: 'vm',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 1000,
      autoConverge: false,
    });
    const job = await finished(source.client, 'live', 20_000, 20); // polls gently: the client's ops are what is measured
    await waitFor('ops served by the target', () => client.seen.filter((r) => r.servedBy === 'server-b').length >= 20);
    await client.stop();

    expect(job.state).toBe('completed');
    expect(job.round).toBe(1);
    const counters = client.seen.map((r) => r.counter);
    expect(counters).toEqual(counters.map((_, i) => i + 1)); // none lost, none repeated, in order

    // Served by the source, then (once, for good) by the target, where the counter simply carries on.
    const firstOnTarget = client.seen.findIndex((r) => r.servedBy === 'server-b');
    expect(firstOnTarget).toBeGreaterThan(5);
    expect(client.seen.slice(0, firstOnTarget).every((r) => r.servedBy === 'server-a')).toBe(true);
    expect(client.seen.slice(firstOnTarget).every((r) => r.servedBy === 'server-b')).toBe(true);
    expect((await target.client.getVm('vm'))!.counter).toBe(counters.length);

    const downtimeWallMs = job.downtimeMs! / TIME_SCALE;
    const stall = Math.max(...client.seen.map((r) => r.latencyMs));
    const margin = marginMs(client.seen.filter((_, i) => i !== firstOnTarget).map((r) => r.latencyMs));
    expect(margin).toBeLessThan(downtimeWallMs); // "small": else the check below would say little
    expect(stall).toBeLessThanOrEqual(downtimeWallMs + margin);
    // And the client really did wait through the pause (the op that hit it is the longest one).
    expect(stall).toBeGreaterThanOrEqual(0.5 * downtimeWallMs);
    expect(client.seen[firstOnTarget]!.latencyMs).toBe(stall);
  });

  test('several clients at once: every op succeeds, each client sees increasing counters, together all of 1..N once', async () => {
    const { source, target } = await startPair(agents, { timeScale: 20 });
    await source.client.createVm({ vmId: 'vm', incarnationId: 'src', spec: spec(1024, { dirtyRateMiBps: 300, workingSetMiB: 1024 }) });
    const clients = [incrementer(source.client, 'vm'), incrementer(source.client, 'vm'), incrementer(source.client, 'vm')];

    await source.client.startMigration({
      jobId: 'live',
      vmId: 'vm',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 1000,
      autoConverge: false,
    });
    expect((await finished(source.client, 'live')).state).toBe('completed');
    await waitFor('every client served by the target', () => clients.every((c) => c.seen.some((r) => r.servedBy === 'server-b')));
    await Promise.all(clients.map((c) => c.stop()));

    for (const c of clients) {
      const counters = c.seen.map((r) => r.counter);
      for (let i = 1; i < counters.length; i++) expect(counters[i]!).toBeGreaterThan(counters[i - 1]!);
    }
    const all = clients.flatMap((c) => c.seen.map((r) => r.counter)).sort((x, y) => x - y);
    expect(all).toEqual(all.map((_, i) => i + 1));
  });

  test('reads and increments on a VM that is not migrating answer at once, wherever the client points', async () => {
    const { source, target } = await startPair(agents, { timeScale: 1000 });
    await source.client.createVm({ vmId: 'vm', incarnationId: 'src', spec: spec(512) });
    expect(await source.client.guestOp('vm', { kind: 'read' })).toEqual({ vmId: 'vm', counter: 0, servedBy: 'server-a' });
    expect(await source.client.guestOp('vm', { kind: 'increment' })).toEqual({ vmId: 'vm', counter: 1, servedBy: 'server-a' });
    await source.client.startMigration({
      jobId: 'j',
      vmId: 'vm',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 100,
      autoConverge: false,
    });
    await finished(source.client, 'j');
    // Through the source (redirected) or the target directly: same VM, same counter.
    expect(await source.client.guestOp('vm', { kind: 'read' })).toEqual({ vmId: 'vm', counter: 1, servedBy: 'server-b' });
    expect(await target.client.guestOp('vm', { kind: 'increment' })).toEqual({ vmId: 'vm', counter: 2, servedBy: 'server-b' });
  });
});

import { testAgentPki } from '../support/agent-pki';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Resources } from '../../common/resources';
import { AgentError, createAgentClient, type AgentClient, type MigrationJob, type VmSpec } from '../../compute/agent-client';
import { startAgent, type RunningAgent, type StartAgentOptions } from '../../compute/agent-service';
import { startFleetAgents } from '../../compute/fleet-agents';
import { fleetSchema } from '../../common/fleet';
import { runQemuSetup } from '../../compute/qemu/tools';
import { finished, logger, MIB, waitFor } from '../compute/helpers';
import { countersIn, qemuUnder, serialLogs, sleep } from './helpers';

/**
 * Two host agents with the `qemu` backend, in this process on loopback, moving one real VM (TCG, 128 MiB, a guest
 * that rewrites 16 MiB of its memory non-stop) back and forth. At most two QEMU processes run at once (a source and
 * its destination): the machine has 2 cores and others use it too.
 */

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-qemu-test-'));
const dirs = { a: path.join(root, 'a'), b: path.join(root, 'b'), c: path.join(root, 'c'), migrate: path.join(root, 'migrate') };
const SERVER: Resources = { vcpus: 8, memoryMiB: 4096, diskGiB: 100 };
const HOST: Resources = { vcpus: 4, memoryMiB: 1024, diskGiB: 50 };
const VM_SPEC: VmSpec = { vcpus: 1, memoryMiB: 128, diskGiB: 1, workload: { dirtyRateMiBps: 1000, workingSetMiB: 16 } };

/** Figures for the report (printed at the end): what QEMU measured. */
const figures: Record<string, Partial<MigrationJob> & { note?: string }> = {};

interface Agent {
  agent: RunningAgent;
  client: AgentClient;
  url: string;
}
const agents: RunningAgent[] = [];

async function start(serverId: string, stateDir: string, qemu: StartAgentOptions['qemu'] = {}): Promise<Agent> {
  const pki = await testAgentPki([serverId]);
  const agent = await startAgent({
    serverId,
    tls: pki.server(serverId),
    faultRoutes: true,
    capacity: SERVER,
    nicBandwidthBps: 10e9,
    backend: 'qemu',
    // Auto-converge steps bigger than QEMU's 20 %/+10 % so the throttled run finishes in seconds, not a minute.
    qemu: { stateDir, migrationDir: dirs.migrate, maxVmMemoryMiB: 512, maxVmVcpus: 2, throttleInitialPct: 60, throttleStepPct: 20, ...qemu },
    logger,
  });
  agents.push(agent);
  return { agent, client: createAgentClient({ baseUrl: agent.url, tls: pki.controlPlane, serverId, timeoutMs: 20_000 }), url: agent.url };
}

let a: Agent;
let b: Agent;

beforeAll(async () => {
  // Cached: a no-op in milliseconds once done; the first run on a machine fetches and builds (~15 s).
  const out = await runQemuSetup();
  process.stderr.write(out);
  a = await start('qa', dirs.a);
  b = await start('qb', dirs.b);
  await a.client.prepareIncarnation({ incarnationId: 'ia', capacity: HOST });
  await b.client.prepareIncarnation({ incarnationId: 'ib', capacity: HOST });
}, 600_000);

afterAll(async () => {
  await Promise.all(agents.map((x) => x.stop()));
  const left = qemuUnder(root);
  fs.rmSync(root, { recursive: true, force: true });
  process.stderr.write(`\n[qemu migration figures] ${JSON.stringify(figures, null, 1)}\n`);
  expect(left).toEqual([]); // no QEMU process outlives the agents that started it
});

const rejection = async (p: Promise<unknown>): Promise<AgentError> => {
  try {
    await p;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected the call to fail');
};

const migrate = (
  from: Agent,
  to: Agent,
  incarnationId: string,
  jobId: string,
  policy: Partial<{ maxDowntimeMs: number; bandwidthCapBps: number; autoConverge: boolean; maxRounds: number }>,
) =>
  from.client.startMigration({
    jobId,
    vmId: 'vm-1',
    target: { agentUrl: to.url, incarnationId },
    maxDowntimeMs: policy.maxDowntimeMs ?? 300,
    autoConverge: policy.autoConverge ?? false,
    ...(policy.bandwidthCapBps ? { bandwidthCapBps: policy.bandwidthCapBps } : {}),
    ...(policy.maxRounds ? { maxRounds: policy.maxRounds } : {}),
  });

/** The source's last counter and the destination's first: a live move continues (+1), a reboot would restart at 1. */
function continuity(sourceLog: string, targetLog: string) {
  const src = countersIn(sourceLog);
  const dst = countersIn(targetLog);
  return { sourceLast: src.at(-1), targetFirst: dst[0] };
}

async function counterAdvances(agent: Agent): Promise<void> {
  const c1 = await agent.client.guestOp('vm-1', { kind: 'read' });
  await sleep(1_200);
  const c2 = await agent.client.guestOp('vm-1', { kind: 'read' });
  expect(c2.counter).toBeGreaterThan(c1.counter);
  expect(c2.servedBy).toBe(c1.servedBy);
}

test('refuses a spec QEMU cannot honour here before any process starts, naming the field', async () => {
  const cases: Array<[VmSpec, string]> = [
    [{ ...VM_SPEC, memoryMiB: 1024 }, 'spec.memoryMiB'], // above the agent's per-VM limit (512)
    [{ ...VM_SPEC, memoryMiB: 32, workload: undefined }, 'spec.memoryMiB'], // too small for the guest
    [{ ...VM_SPEC, vcpus: 0 }, 'spec.vcpus'],
    [{ ...VM_SPEC, vcpus: 3 }, 'spec.vcpus'], // above the agent's per-VM limit (2)
    [{ ...VM_SPEC, workload: { dirtyRateMiBps: 100, workingSetMiB: 32 } }, 'spec.workload.workingSetMiB'], // > 1/8 of RAM
  ];
  for (const [spec, field] of cases) {
    const err = await rejection(a.client.createVm({ vmId: 'bad', incarnationId: 'ia', spec }));
    expect({ status: err.status, field: err.field }).toEqual({ status: 400, field });
  }
  expect(await a.client.getVm('bad')).toBeNull();
  expect(qemuUnder(dirs.a)).toEqual([]);
  expect((await a.client.getIncarnation('ia'))!.used.memoryMiB).toBe(0);
});

test('live-migrates a running VM: the guest counts on from the source, QEMU measures the downtime, the source is gone', async () => {
  const created = await a.client.createVm({ vmId: 'vm-1', incarnationId: 'ia', spec: VM_SPEC });
  expect(created).toMatchObject({ serverId: 'qa', state: 'running' });
  expect(qemuUnder(dirs.a)).toHaveLength(1);
  // Booting under TCG takes a few seconds; then the guest prints every 0.5 s.
  await waitFor('the guest to count', async () => (await a.client.guestOp('vm-1', { kind: 'read' })).counter >= 3, 90_000, 100);
  const before = await a.client.guestOp('vm-1', { kind: 'read' });
  const inc = await a.client.guestOp('vm-1', { kind: 'increment' });
  expect(inc.counter).toBeGreaterThan(before.counter);

  const started = await migrate(a, b, 'ib', 'job-1', { maxDowntimeMs: 300 });
  expect(started.state).toBe('running');
  // Guest operations during the move: served by the source, then (following VM_MOVED) by the target; never backwards.
  const seen: Array<{ counter: number; servedBy: string }> = [];
  let job: MigrationJob;
  for (;;) {
    const r = await a.client.guestOp('vm-1', { kind: 'read' });
    seen.push({ counter: r.counter, servedBy: r.servedBy });
    job = (await a.client.getMigration('job-1'))!;
    if (job.state !== 'running') break;
    await sleep(20);
  }
  expect(job).toMatchObject({ state: 'completed', bytesRemaining: 0 });
  expect(job.downtimeMs).toBeGreaterThan(0);
  expect(job.downtimeMs).toBeLessThan(job.totalTimeMs!);
  expect(job.bytesSent).toBeGreaterThan(10 * MIB);
  expect(job.memoryBytes).toBeGreaterThanOrEqual(128 * MIB);
  figures.liveMigration = pick(job);
  // A retried start with the same job id (an activity retry) finds the finished job instead of moving anything.
  expect(await migrate(a, b, 'ib', 'job-1', { maxDowntimeMs: 300 })).toMatchObject({ jobId: 'job-1', state: 'completed' });

  // The source process was quit before the job said completed; the VM is the target's now.
  expect(qemuUnder(dirs.a)).toEqual([]);
  expect(qemuUnder(dirs.b)).toHaveLength(1);
  expect(await a.client.getVm('vm-1')).toBeNull();
  expect(await b.client.getVm('vm-1')).toMatchObject({ serverId: 'qb', state: 'running', incarnationId: 'ib' });
  expect((await a.client.getIncarnation('ia'))!.used.memoryMiB).toBe(0);
  expect((await b.client.getIncarnation('ib'))!.used.memoryMiB).toBe(128);

  const [srcLog] = serialLogs(dirs.a, 'vm-');
  const dstLog = serialLogs(dirs.b, 'in-').at(-1)!;
  const c = await waitFor(
    'the moved guest to print',
    () => {
      const x = continuity(srcLog!, dstLog);
      return x.targetFirst !== undefined && x;
    },
    10_000,
    50,
  );
  expect(c.targetFirst).toBe(c.sourceLast! + 1);
  figures.liveMigration.note = `source's last counter ${c.sourceLast}, target's first ${c.targetFirst}`;

  for (let i = 1; i < seen.length; i++) expect(seen[i]!.counter).toBeGreaterThanOrEqual(seen[i - 1]!.counter);
  const after = await a.client.guestOp('vm-1', { kind: 'read' }); // follows VM_MOVED
  expect(after.servedBy).toBe('qb');
  expect(after.counter).toBeGreaterThanOrEqual(c.sourceLast!);
  const next = await b.client.guestOp('vm-1', { kind: 'increment' });
  expect(next.counter).toBeGreaterThan(after.counter);
});

test('cancel mid-move (low bandwidth cap): the VM runs on at the source and no destination process is left', async () => {
  await migrate(b, a, 'ia', 'job-2', { bandwidthCapBps: 4 * MIB });
  const moving = await waitFor(
    'the move to be under way',
    async () => {
      const j = (await b.client.getMigration('job-2'))!;
      return j.state === 'running' && j.bytesSent > 2 * MIB && j;
    },
    30_000,
    50,
  );
  expect(qemuUnder(dirs.a)).toHaveLength(1); // the destination
  expect(moving.bytesRemaining).toBeGreaterThan(0);

  const cancelled = await b.client.cancelMigration('job-2');
  expect(cancelled).toMatchObject({ state: 'cancelled', error: { code: 'Cancelled' } });
  figures.cancelled = pick(cancelled);
  await waitFor('the destination to be reaped', () => qemuUnder(dirs.a).length === 0, 10_000, 50);
  expect((await a.client.getIncarnation('ia'))!.used.memoryMiB).toBe(0);

  expect(await b.client.getVm('vm-1')).toMatchObject({ serverId: 'qb', state: 'running' });
  await counterAdvances(b);
  expect(qemuUnder(dirs.b)).toHaveLength(1);
});

test('a guest that dirties faster than its bandwidth cap fails NotConverging and stays on the source', async () => {
  // 8 MiB/s against a guest rewriting 16 MiB as fast as it can: every round leaves ~16 MiB, ~2 s of downtime.
  await migrate(b, a, 'ia', 'job-3', { bandwidthCapBps: 8 * MIB, maxDowntimeMs: 100, maxRounds: 3 });
  const job = await finished(b.client, 'job-3', 90_000, 100);
  expect(job).toMatchObject({ state: 'failed', error: { code: 'NotConverging' } });
  expect(job.round).toBeGreaterThanOrEqual(3);
  figures.notConverging = pick(job);
  await waitFor('the destination to be reaped', () => qemuUnder(dirs.a).length === 0, 10_000, 50);
  expect(await b.client.getVm('vm-1')).toMatchObject({ serverId: 'qb', state: 'running' });
  await counterAdvances(b);
});

test('the same guest and cap with auto-converge: QEMU throttles the guest and the move completes', async () => {
  await migrate(b, a, 'ia', 'job-4', { bandwidthCapBps: 8 * MIB, maxDowntimeMs: 100, autoConverge: true });
  let maxThrottle = 0;
  const job = await waitFor(
    'job-4 to finish',
    async () => {
      const j = (await b.client.getMigration('job-4'))!;
      maxThrottle = Math.max(maxThrottle, j.throttlePct);
      return j.state !== 'running' && j;
    },
    90_000,
    100,
  );
  expect(job).toMatchObject({ state: 'completed' });
  expect(maxThrottle).toBeGreaterThan(0);
  figures.autoConverge = { ...pick(job), throttlePct: maxThrottle };
  expect(qemuUnder(dirs.b)).toEqual([]);
  expect(await a.client.getVm('vm-1')).toMatchObject({ serverId: 'qa' });
  const c = await waitFor(
    'the moved guest to print',
    () => {
      const x = continuity(serialLogs(dirs.b, 'in-').at(-1)!, serialLogs(dirs.a, 'in-').at(-1)!);
      return x.targetFirst !== undefined && x;
    },
    10_000,
    50,
  );
  // Throttled to 99 %, the guest can be stopped after bumping its counter but before the UART has put the whole line
  // into the source's log: one number may be missing there. A reboot would start again at 1, far from this.
  expect(c.targetFirst! - c.sourceLast!).toBeGreaterThanOrEqual(1);
  expect(c.targetFirst! - c.sourceLast!).toBeLessThanOrEqual(2);
  await counterAdvances(a);
});

test('a QEMU process that dies is reported as the VM failing, never a hang', async () => {
  const [pid] = qemuUnder(dirs.a);
  expect(pid).toBeDefined();
  process.kill(pid!, 'SIGKILL');
  const failed = await waitFor(
    'the VM to be reported failed',
    async () => {
      const err = await rejection(a.client.getVm('vm-1')).catch(() => null);
      return err ?? undefined;
    },
    10_000,
    50,
  );
  expect(failed).toMatchObject({ status: 409, code: 'VM_FAILED' });
  expect(failed.message).toMatch(/SIGKILL/);
  const t = Date.now();
  expect(await rejection(a.client.guestOp('vm-1', { kind: 'increment' }))).toMatchObject({ code: 'VM_FAILED' });
  expect(await rejection(migrate(a, b, 'ib', 'job-5', {}))).toMatchObject({ code: 'VM_FAILED' });
  expect(Date.now() - t).toBeLessThan(2_000);
  await a.client.deleteVm('vm-1');
  expect(await a.client.getVm('vm-1')).toBeNull();
  expect((await a.client.getIncarnation('ia'))!.used.memoryMiB).toBe(0);
});

test('stopping an agent kills every QEMU process it started', async () => {
  const c = await start('qc', dirs.c);
  await c.client.prepareIncarnation({ incarnationId: 'ic', capacity: HOST });
  await c.client.createVm({ vmId: 'vm-c', incarnationId: 'ic', spec: { vcpus: 1, memoryMiB: 128, diskGiB: 1 } });
  expect(qemuUnder(dirs.c)).toHaveLength(1);
  await c.agent.stop();
  expect(qemuUnder(dirs.c)).toEqual([]);
  expect(fs.existsSync(dirs.c)).toBe(false);
  await expect(c.client.info()).rejects.toMatchObject({ retryable: true });
});

function pick(j: MigrationJob) {
  const { state, round, bytesSent, memoryBytes, downtimeMs, totalTimeMs, throttlePct, throughputBps, error } = j;
  return { state, round, bytesSent, memoryBytes, downtimeMs, totalTimeMs, throttlePct, throughputBps: Math.round(throughputBps), error };
}

test('a fleet file selects the backend per server; qemu agents start when asked for', async () => {
  const fleet = fleetSchema.parse({
    zones: ['z1'],
    resourceClasses: { small: HOST },
    servers: [
      { id: 'fs-1', zone: 'z1', resourceClass: 'small', capacity: SERVER, nicBandwidthBps: 10e9 },
      { id: 'fq-1', zone: 'z1', resourceClass: 'small', capacity: SERVER, nicBandwidthBps: 10e9, backend: 'qemu' },
    ],
  });
  const pki = await testAgentPki(fleet.servers.map((x) => x.id));
  const fleetAgents = await startFleetAgents(fleet, {
    timeScale: 1,
    tls: pki.server,
    logger,
    backendFilter: () => true,
    qemu: { stateDir: path.join(root, 'fleet'), migrationDir: dirs.migrate },
  });
  try {
    const kinds = await Promise.all(
      [...fleetAgents.agents.values()].map(async (x) => (await createAgentClient({ baseUrl: x.url, tls: pki.controlPlane }).info()).backend),
    );
    expect(kinds).toEqual(['sim', 'qemu']);
  } finally {
    await fleetAgents.stop();
  }
  expect(qemuUnder(root)).toEqual([]);
});

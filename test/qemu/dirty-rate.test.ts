import { testAgentPki } from '../support/agent-pki';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Resources } from '../../common/resources';
import { createAgentClient, type AgentClient, type MigrationJob, type VmSpec } from '../../compute/agent-client';
import { startAgent, type RunningAgent } from '../../compute/agent-service';
import { measureDirtyRate } from '../../compute/qemu/dirty-rate';
import { QmpClient } from '../../compute/qemu/qmp';
import { runQemuSetup } from '../../compute/qemu/tools';
import { logger, MIB, waitFor } from '../compute/helpers';
import { countersIn, qemuUnder, serialLogs } from './helpers';

/**
 * QEMU's dirty-rate measurement against a guest whose writer's rate is known: the test guest changes the content of
 * `workingSetMiB` of its memory at `dirtyRateMiBps`, paced per MiB (scripts/qemu/guest-init.sh). Before a move the
 * agent measures with `calc-dirty-rate` (page sampling, the one mode that works under TCG); during it, the job's
 * `dirtyRateBps` is QEMU's `dirty-pages-rate`. Both must track the writer: within a factor of 2 before, 2.5 during (the
 * bounds were set from runs on this 2-core, shared machine: the figures are printed). One VM at a time, plus its destination for the move.
 */

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-qemu-dirty-'));
const dirs = { a: path.join(root, 'a'), b: path.join(root, 'b'), migrate: path.join(root, 'migrate') };
const SERVER: Resources = { vcpus: 8, memoryMiB: 4096, diskGiB: 100 };
const HOST: Resources = { vcpus: 4, memoryMiB: 1024, diskGiB: 50 };
const WORKING_SET_MIB = 24;
const spec = (dirtyRateMiBps: number): VmSpec => ({
  vcpus: 1,
  memoryMiB: 256,
  diskGiB: 1,
  ...(dirtyRateMiBps > 0 ? { workload: { dirtyRateMiBps, workingSetMiB: WORKING_SET_MIB } } : {}),
});
/** The tolerance before a move: measured / writer's rate within [1/2, 2] (seen: 4 → 5.0, 12 → 13.0, idle 0.5 MiB/s). */
const FACTOR = 2;
/**
 * During a move, the upper bound is 2.5: QEMU's dirty-pages-rate sums each bitmap sync's new pages over ≥ 1 s, and the
 * late, short rounds read high (seen for an 8 MiB/s writer: 5.6, 10.5, 4.5, 22.1, 15.2, 20.5; median 15.2).
 */
const MOVE_FACTOR = 2.5;

const figures: Record<string, unknown> = {};
const agents: RunningAgent[] = [];
let a: { client: AgentClient; url: string };
let b: { client: AgentClient; url: string };

async function start(serverId: string, stateDir: string) {
  const pki = await testAgentPki([serverId]);
  const agent = await startAgent({
    serverId,
    tls: pki.server(serverId),
    capacity: SERVER,
    nicBandwidthBps: 10e9,
    backend: 'qemu',
    qemu: { stateDir, migrationDir: dirs.migrate, maxVmMemoryMiB: 512, maxVmVcpus: 2 },
    logger,
  });
  agents.push(agent);
  return { client: createAgentClient({ baseUrl: agent.url, tls: pki.controlPlane, serverId, timeoutMs: 20_000 }), url: agent.url };
}

/** The newest VM's second QMP monitor (the agent holds the first). */
async function inspect(stateDir: string): Promise<QmpClient> {
  const serial = serialLogs(stateDir, 'vm-').at(-1)!;
  return QmpClient.connect({ socketPath: path.join(path.dirname(serial), 'inspect.sock') });
}

/** The guest has booted and its writer runs (it starts before the counter). */
async function booted(stateDir: string): Promise<void> {
  await waitFor('the guest to boot', () => (countersIn(serialLogs(stateDir, 'vm-').at(-1)!).at(-1) ?? 0) >= 3, 120_000, 200);
}

beforeAll(async () => {
  process.stderr.write(await runQemuSetup());
  a = await start('da', dirs.a);
  b = await start('db', dirs.b);
  await a.client.prepareIncarnation({ incarnationId: 'ia', capacity: HOST });
  await b.client.prepareIncarnation({ incarnationId: 'ib', capacity: HOST });
}, 600_000);

afterAll(async () => {
  await Promise.all(agents.map((x) => x.stop()));
  const left = qemuUnder(root);
  fs.rmSync(root, { recursive: true, force: true });
  process.stderr.write(`\n[dirty-rate figures] ${JSON.stringify(figures, null, 1)}\n`);
  expect(left).toEqual([]);
});

test('calc-dirty-rate before a move tracks the guest writer within a factor of 2, and an idle guest reads far lower', async () => {
  const measured: Record<number, number> = {};
  for (const rate of [0, 4, 12]) {
    const vmId = `vm-w${rate}`;
    await a.client.createVm({ vmId, incarnationId: 'ia', spec: spec(rate) });
    await booted(dirs.a);
    const qmp = await inspect(dirs.a);
    try {
      const m = await measureDirtyRate(qmp, 4_000);
      measured[rate] = m.dirtyRateBps / MIB;
      figures[`writer ${rate} MiB/s`] = {
        measuredMiBps: Number((m.dirtyRateBps / MIB).toFixed(2)),
        windowsMiBps: m.windowsBps.map((x) => x / MIB),
        windowMs: m.windowMs,
      };
      expect(m.method).toBe('calc-dirty-rate');
      expect(m.sampleMs).toBe(4_000);
    } finally {
      qmp.close();
    }
    if (rate === 12) {
      // The same measurement through the agent's route (GET /v1/vms/:vmId/dirty-rate), as the workflow asks for it.
      const viaAgent = await a.client.measureDirtyRate(vmId, 3_000);
      figures['writer 12 MiB/s via the agent'] = viaAgent;
      expect(viaAgent).toMatchObject({ vmId, method: 'calc-dirty-rate', sampleMs: 3_000 });
      expect(viaAgent!.dirtyRateBps / MIB).toBeGreaterThanOrEqual(rate / FACTOR);
      expect(viaAgent!.dirtyRateBps / MIB).toBeLessThanOrEqual(rate * FACTOR);
    }
    await a.client.deleteVm(vmId);
  }
  for (const rate of [4, 12]) {
    expect(measured[rate]!).toBeGreaterThanOrEqual(rate / FACTOR);
    expect(measured[rate]!).toBeLessThanOrEqual(rate * FACTOR);
  }
  expect(measured[12]!).toBeGreaterThan(measured[4]!);
  // The guest's own background (kernel, the counter loop) is well below the slowest writer.
  expect(measured[0]!).toBeLessThan(4 / FACTOR);
}, 400_000);

test("during a move the job's dirtyRateBps (QEMU's dirty-pages-rate) tracks the writer within a factor of 2.5", async () => {
  const rate = 8;
  await a.client.createVm({ vmId: 'vm-move', incarnationId: 'ia', spec: spec(rate) });
  await booted(dirs.a);
  // A stream slower than the whole RAM but faster than the writer: several rounds, each long enough to be measured.
  await a.client.startMigration({
    jobId: 'job-move',
    vmId: 'vm-move',
    target: { agentUrl: b.url, incarnationId: 'ib' },
    maxDowntimeMs: 100,
    autoConverge: false,
    maxRounds: 1000,
    bandwidthCapBps: 16 * MIB,
  });
  const seen: number[] = [];
  let job: MigrationJob = (await a.client.getMigration('job-move'))!;
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    job = (await a.client.getMigration('job-move'))!;
    if (job.state !== 'running') break;
    // Round 0 is the bulk pass (QEMU reports 0 until its second bitmap sync).
    if (job.round >= 1 && job.dirtyRateBps > 0 && seen.at(-1) !== job.dirtyRateBps) seen.push(job.dirtyRateBps);
    if (seen.length >= 6) break;
    await new Promise((r) => setTimeout(r, 250)); // the figure changes once per round; poll within the deadline
  }
  if (job.state === 'running') await a.client.cancelMigration('job-move');
  const sorted = [...seen].sort((x, y) => x - y);
  const median = sorted[Math.floor(sorted.length / 2)]! / MIB;
  figures['during a move, writer 8 MiB/s'] = {
    distinctFiguresMiBps: seen.map((x) => Number((x / MIB).toFixed(2))),
    medianMiBps: Number(median.toFixed(2)),
    endedAs: job.state,
  };
  expect(seen.length).toBeGreaterThanOrEqual(2);
  // After a completed single-channel uncapped move the link measurement is QEMU's own; this one was capped: still the NIC's.
  expect(await a.client.measureLink()).toMatchObject({ serverId: 'da', method: 'nic', nicBytesPerSec: 10e9 / 8 });
  expect(median).toBeGreaterThanOrEqual(rate / MOVE_FACTOR);
  expect(median).toBeLessThanOrEqual(rate * MOVE_FACTOR);
}, 300_000);

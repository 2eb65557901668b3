import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import type { Fleet } from '../../common/fleet';
import { FailureTypes, type MigrationStatus, type VmSpec } from '../../common/migration';
import type { Resources } from '../../common/resources';
import { runQemuSetup } from '../../compute/qemu/tools';
import { eventually, startTestSystem, type TestSystem } from '../support/system';
import { countersIn, processesMatching, qemuUnder } from './helpers';

/**
 * The real `migrateDedicatedHost` workflow (real Temporal dev server, real Postgres, the scheduler) moving a dedicated
 * host whose VMs are real QEMU guests (TCG) between `qemu` host agents in this process. At most two guests migrate at
 * once (maxParallel 2): the machine has 2 cores and others use it too.
 */

const started = Date.now();
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-qemu-wf-'));
const agentsDir = path.join(root, 'agents');
const CLASS = 'qemu-small';
const CAPACITY: Resources = { vcpus: 4, memoryMiB: 1024, diskGiB: 20 };
const MIB = 2 ** 20;

function qemuFleet(servers: number): Fleet {
  return {
    zones: ['zone-a'],
    resourceClasses: { [CLASS]: CAPACITY },
    servers: Array.from({ length: servers }, (_, i) => ({
      id: `zone-a-q-${i + 1}`,
      zone: 'zone-a',
      resourceClass: CLASS,
      capacity: CAPACITY,
      nicBandwidthBps: 10e9,
      agentPort: 0,
      backend: 'qemu' as const,
    })),
  };
}

/** What the report needs: QEMU's figures and the counters either side of each move. */
const figures: Record<string, unknown> = {};
let sys: TestSystem;

beforeAll(async () => {
  await runQemuSetup(); // cached: milliseconds once done
  sys = await startTestSystem({
    fleet: qemuFleet(3),
    backendFilter: (s) => s.backend === 'qemu',
    qemu: { stateDir: agentsDir, migrationDir: path.join(root, 'migrate') },
  });
}, 600_000);

afterAll(async () => {
  await sys?.stop();
  const left = qemuUnder(root);
  fs.rmSync(root, { recursive: true, force: true });
  figures.fileSeconds = Number(((Date.now() - started) / 1000).toFixed(1));
  process.stderr.write(`\n[qemu workflow figures] ${JSON.stringify(figures, null, 1)}\n`);
  expect(left).toEqual([]); // no QEMU process outlives the agents that started it
  expect(figures.fileSeconds).toBeLessThan(120); // the whole file, set-up included, fits CI's 2 minutes
});

const serverDir = (serverId: string) => path.join(agentsDir, serverId);

/** The QEMU processes an agent runs now, by VM id (`-name`), with their serial logs. */
function guestsOn(serverId: string): Map<string, string> {
  const found = new Map<string, string>();
  for (const p of processesMatching(serverDir(serverId))) {
    if (!p.cmd.includes('qemu-system-x86_64')) continue;
    const name = / -name (\S+)/.exec(p.cmd)?.[1];
    const serial = / -serial file:(\S+)/.exec(p.cmd)?.[1];
    if (name && serial) found.set(name, serial);
  }
  return found;
}

async function sourceOf(hostId: string) {
  const host = (await sys.inventory.getHost(hostId))!;
  const incarnation = (await sys.inventory.getIncarnation(host.currentIncarnationId))!;
  return { host, incarnation, serverId: incarnation.serverId };
}

/** Guests boot in a few seconds under TCG (longer while other tests load the CPUs); then they print every 0.5 s. */
async function allCounting(serverId: string, vmIds: string[]): Promise<void> {
  await eventually(
    'every guest to count',
    async () => {
      for (const vmId of vmIds) if ((await sys.agent(serverId).guestOp(vmId, { kind: 'read' })).counter < 2) return false;
      return true;
    },
    90_000,
    200,
  );
}

/**
 * Tenant traffic: `increment` on every VM through the agent it started on (following VM_MOVED). A real guest counts
 * by itself, so each answer must be larger than the last one, never smaller, and none may fail.
 */
function guestLoad(serverId: string, vmIds: string[]) {
  let stop = false;
  const stats = { ops: 0, failures: [] as string[], backwards: [] as string[], servedBy: new Set<string>() };
  const loops = vmIds.map(async (vmId) => {
    let last = -1;
    while (!stop) {
      try {
        const r = await sys.agent(serverId).guestOp(vmId, { kind: 'increment' });
        if (r.counter <= last) stats.backwards.push(`${vmId}: ${last} -> ${r.counter}`);
        last = r.counter;
        stats.ops++;
        stats.servedBy.add(r.servedBy);
      } catch (err) {
        stats.failures.push(`${vmId}: ${String(err)}`);
        return;
      }
    }
  });
  return {
    stats,
    async stop() {
      stop = true;
      await Promise.all(loops);
    },
  };
}

const SPECS: VmSpec[] = [
  // The busy one: rewrites 16 MiB of its memory at up to 24 MiB/s while it moves.
  { vcpus: 1, memoryMiB: 256, diskGiB: 2, workload: { dirtyRateMiBps: 24, workingSetMiB: 16 } },
  { vcpus: 1, memoryMiB: 192, diskGiB: 2 },
  { vcpus: 1, memoryMiB: 128, diskGiB: 2 },
];

test('a dedicated host with 3 real VMs moves through the workflow: guests count on, QEMU downtime recorded, source gone, old server de-provisioned', async () => {
  const t0 = Date.now();
  const { hostId, vmIds } = await sys.createHostWithVms({ vms: 3, specs: SPECS, resourceClass: CLASS });
  const source = await sourceOf(hostId);
  expect(qemuUnder(serverDir(source.serverId))).toHaveLength(3);
  await allCounting(source.serverId, vmIds);
  const tBooted = Date.now();
  const sourceLogs = guestsOn(source.serverId);
  expect([...sourceLogs.keys()].sort()).toEqual([...vmIds].sort());

  const load = guestLoad(source.serverId, vmIds);
  const handle = await sys.startMigration(hostId, { maxParallel: 2, maxDowntimeMs: 300 });
  const result = await handle.result();
  const tMigrated = Date.now();
  await load.stop();
  expect(result.phase).toBe('completed');
  const st: MigrationStatus = await sys.status(hostId);
  expect(st.phase).toBe('completed');
  const targetServerId = st.target!.serverId;
  expect(targetServerId).not.toBe(source.serverId);

  // The tenant's operations went on throughout, first on the source, then on the target; never backwards.
  expect(load.stats.failures).toEqual([]);
  expect(load.stats.backwards).toEqual([]);
  expect(load.stats.ops).toBeGreaterThan(vmIds.length * 2);
  expect([...load.stats.servedBy].sort()).toEqual([source.serverId, targetServerId].sort());

  // QEMU's own downtime, per VM, in the migration object: the same figure the source agent's job reported.
  const perVm: Record<string, unknown> = {};
  for (const vm of st.vms) {
    expect(vm.state).toBe('moved');
    const f = vm.figures!;
    expect(f.downtimeMs).toBeGreaterThan(0);
    expect(f.downtimeMs).toBeLessThan(5_000); // a switchover, not a reboot: ms, at worst a few s on a loaded machine
    expect(f.downtimeMs).toBeLessThan(f.totalTimeMs);
    expect(f.bytesSent).toBeGreaterThan(8 * MIB);
    expect(f.memoryBytes).toBeGreaterThanOrEqual(vm.spec.memoryMiB * MIB);
    const job = await sys.agent(source.serverId).getMigration(vm.jobId!);
    expect(job).toMatchObject({ state: 'completed', downtimeMs: f.downtimeMs, totalTimeMs: f.totalTimeMs });
    perVm[vm.vmId] = {
      memoryMiB: vm.spec.memoryMiB,
      downtimeMs: f.downtimeMs,
      totalTimeMs: f.totalTimeMs,
      rounds: f.rounds,
      sentMiB: Math.round(f.bytesSent / MIB),
    };
  }

  // The source QEMU processes are gone (quit after the switchover); the target runs all three.
  expect(qemuUnder(serverDir(source.serverId))).toEqual([]);
  const targetLogs = guestsOn(targetServerId);
  expect([...targetLogs.keys()].sort()).toEqual([...vmIds].sort());

  // No reboot: each guest's first line on the target is the source's last + 1.
  for (const vmId of vmIds) {
    const sourceLast = countersIn(sourceLogs.get(vmId)!).at(-1)!;
    const targetFirst = await eventually(`${vmId} to print on the target`, async () => countersIn(targetLogs.get(vmId)!)[0], 10_000, 50);
    expect(targetFirst).toBe(sourceLast + 1);
    Object.assign(perVm[vmId] as object, { sourceLast, targetFirst });
    expect(await sys.agent(targetServerId).getVm(vmId)).toMatchObject({ serverId: targetServerId, state: 'running', incarnationId: st.target!.incarnationId });
    expect(await sys.agent(source.serverId).getVm(vmId)).toBeNull();
  }

  // The clone is the host now; the scheduler de-provisions the old server and returns it to the pool.
  expect((await sys.inventory.getHost(hostId))!.currentIncarnationId).toBe(st.target!.incarnationId);
  expect((await sys.inventory.getIncarnation(source.incarnation.id))!.state).toBe('deleted');
  await eventually('the old server back in the pool', async () => (await sys.inventory.getServer(source.serverId))!.state === 'available', 20_000, 100);
  expect((await sys.agent(source.serverId).info()).incarnations).not.toContain(source.incarnation.id);
  expect((await sys.inventory.getServer(targetServerId))!.state).toBe('allocated');

  figures.move = {
    vms: perVm,
    guestOps: load.stats.ops,
    bootSeconds: (tBooted - t0) / 1000,
    migrationSeconds: (tMigrated - tBooted) / 1000,
    testSeconds: (Date.now() - t0) / 1000,
  };
}, 120_000);

test('a guest dirtying faster than the bandwidth cap, auto-converge off: NotConverging, rolled back per policy, still running on the source', async () => {
  const t0 = Date.now();
  // 16 MiB rewritten as fast as the vCPU can (well above 16 MiB/s), against a 16 MiB/s cap and a 1 ms downtime limit.
  const spec: VmSpec = { vcpus: 1, memoryMiB: 128, diskGiB: 2, workload: { dirtyRateMiBps: 1000, workingSetMiB: 16 } };
  const { hostId, vmIds } = await sys.createHostWithVms({ vms: 1, specs: [spec], resourceClass: CLASS });
  const [vmId] = vmIds as [string];
  const source = await sourceOf(hostId);
  await allCounting(source.serverId, vmIds);

  const handle = await sys.startMigration(hostId, { bandwidthCapBps: 16 * MIB, maxDowntimeMs: 1, autoConverge: false, onVmFailure: 'rollback' });
  const err = await handle.result().catch((e: unknown) => e);
  expect(err).toBeInstanceOf(WorkflowFailedError);
  const st = await sys.status(hostId);
  expect(st.phase).toBe('rolled-back');
  expect(st.lastError).toContain(FailureTypes.NotConverging);
  expect(st.vms).toEqual([expect.objectContaining({ vmId, state: 'failed', error: expect.stringContaining(FailureTypes.NotConverging) })]);

  // Still the source's: the host, the inventory and the agent agree, and the guest keeps counting there.
  expect((await sys.inventory.getHost(hostId))!).toMatchObject({ state: 'active', currentIncarnationId: source.incarnation.id });
  expect((await sys.inventory.getVm(vmId)).incarnationId).toBe(source.incarnation.id);
  const before = await sys.agent(source.serverId).guestOp(vmId, { kind: 'read' });
  const after = await sys.agent(source.serverId).guestOp(vmId, { kind: 'increment' });
  expect(after).toMatchObject({ servedBy: source.serverId });
  expect(after.counter).toBeGreaterThan(before.counter);
  expect(qemuUnder(serverDir(source.serverId))).toHaveLength(1);

  // The target's destination is reaped, the clone is gone, the target server is free again.
  const target = st.target!;
  await eventually('the destination to be reaped', async () => qemuUnder(serverDir(target.serverId)).length === 0, 10_000, 50);
  expect((await sys.inventory.getIncarnation(target.incarnationId))!.state).toBe('deleted');
  expect((await sys.inventory.getServer(target.serverId))!.state).toBe('available');

  const job = await sys.agent(source.serverId).getMigration(st.vms[0]!.jobId!);
  figures.notConverging = { error: job?.error, rounds: job?.round, sentMiB: Math.round((job?.bytesSent ?? 0) / MIB), testSeconds: (Date.now() - t0) / 1000 };
}, 120_000);

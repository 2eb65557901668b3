import { loadControlPlaneTls } from '../../compute/agent-tls';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { checkInvariants } from '../../client/invariants';
import { createLogger } from '../../common/logger';
import type { MigrationStatus, VmSpec } from '../../common/migration';
import { guestMarker, guestNic } from '../../compute/qemu/guest-nic';
import { runQemuSetup } from '../../compute/qemu/tools';
import { startTenantClient, type TenantClient, type VmTraffic } from '../../compute/testbed/tenant-client';
import { downTestbed, upTestbed, type TestbedServer, type TestbedState } from '../../compute/testbed/testbed';
import { eventually, startTestSystem, type TestSystem } from '../support/system';
import { leftoversOf, learntMacs, occurrences, partition, qemuOn, startCapture } from './support';

/**
 * The real workflow (Temporal, Postgres, the scheduler, in this process, in the root namespace) moving dedicated hosts
 * between servers of a testbed: each server its own network namespace with a 300 Mbit/s NIC (tc htb) and its qemu
 * agent inside, migrations over TCP with TLS (the testbed's fleet CA), every VM with a NIC on the tenant network
 * (VXLAN), and a tenant client in the `tenant` namespace holding one TCP connection per VM, a request every 10 ms.
 */

const started = Date.now();
const logger = createLogger('testbed-test', process.env.DHM_TEST_LOG_LEVEL ?? 'warn');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-tb-wf-'));
const name = `w${randomBytes(3).toString('hex')}`;
const MIB = 2 ** 20;
const NIC_BPS = 300e6;
const figures: Record<string, unknown> = {};
let st: TestbedState;
let sys: TestSystem;
let tenant: TenantClient;

beforeAll(async () => {
  await runQemuSetup(); // cached: milliseconds once done
  st = await upTestbed({ name, root, servers: 3, nicBandwidthBps: NIC_BPS, transport: 'tls' }, logger);
  sys = await startTestSystem({
    fleet: st.fleet,
    externalAgents: new Map(st.servers.map((s) => [s.id, s.agentUrl])),
    externalAgentTls: loadControlPlaneTls(st.controlPlaneDir, 'controlPlaneDir'),
  });
  tenant = startTenantClient(st);
}, 300_000);

afterAll(async () => {
  await tenant?.stop().catch(() => undefined);
  await sys?.stop();
  if (st) await downTestbed(st.dir, logger);
  const left = st ? await leftoversOf(st) : [];
  fs.rmSync(root, { recursive: true, force: true });
  figures.fileSeconds = Number(((Date.now() - started) / 1000).toFixed(1));
  process.stderr.write(`\n[testbed workflow figures] ${JSON.stringify(figures, null, 1)}\n`);
  expect(left).toEqual([]); // no namespace, veth, process or file outlives the testbed
});

const server = (id: string): TestbedServer => st.servers.find((s) => s.id === id)!;

async function sourceOf(hostId: string) {
  const host = (await sys.inventory.getHost(hostId))!;
  const incarnation = (await sys.inventory.getIncarnation(host.currentIncarnationId))!;
  return { host, incarnation, server: server(incarnation.serverId) };
}

/** Each VM's connection is up and answered for a while (the guests boot in a few seconds under TCG). */
async function allAnswering(vmIds: string[]): Promise<Map<string, VmTraffic>> {
  return eventually(
    'every VM to answer the tenant',
    async () => {
      const s = await tenant.stats();
      const mine = s.filter((t) => vmIds.includes(t.vmId));
      if (mine.length !== vmIds.length || !mine.every((t) => t.connected && t.requestsDone > 50)) return null;
      return new Map(mine.map((t) => [t.vmId, t]));
    },
    120_000,
    200,
  );
}

const SPECS: VmSpec[] = [
  // The busy one: rewrites 16 MiB of its memory at up to 8 MiB/s while it moves.
  { vcpus: 1, memoryMiB: 256, diskGiB: 2, workload: { dirtyRateMiBps: 8, workingSetMiB: 16 } },
  { vcpus: 1, memoryMiB: 192, diskGiB: 2 },
  { vcpus: 1, memoryMiB: 128, diskGiB: 2 },
];

test('a host of 3 VMs with NICs moves A → B over TCP with TLS: no request fails, no reconnect, stalls next to QEMU downtime, counters go on, source QEMUs gone, B learnt every MAC, no marker on the wire', async () => {
  const t0 = Date.now();
  const { hostId, vmIds } = await sys.createHostWithVms({ vms: 3, specs: SPECS, resourceClass: 'tb-small', zone: 'tb-zone' });
  const source = await sourceOf(hostId);
  const target = st.servers.find((s) => s.id !== source.server.id)!;
  for (const vmId of vmIds) await tenant.add(vmId, guestNic(vmId).ip);
  expect(qemuOn(source.server)).toHaveLength(3);
  const before = await allAnswering(vmIds);
  const tBooted = Date.now();

  // Everything the source sends to the target during the move (the migration streams and the agents' HTTP).
  const capture = await startCapture(source.server, path.join(root, 'tls.pcap'), `tcp and dst host ${target.fabricIp}`);
  const handle = await sys.startMigration(hostId, { maxParallel: 2, maxDowntimeMs: 300 }, target.id);
  const result = await handle.result();
  const wire = await capture.stop();
  const tMigrated = Date.now();
  expect(result.phase).toBe('completed');
  const stMig: MigrationStatus = await sys.status(hostId);
  expect(stMig.target!.serverId).toBe(target.id);

  // The connections keep being answered from B for another second.
  const doneAtMove = new Map((await tenant.stats()).map((t) => [t.vmId, t.requestsDone]));
  await eventually(
    'answers after the move',
    async () => (await tenant.stats()).filter((t) => vmIds.includes(t.vmId)).every((t) => t.requestsDone > doneAtMove.get(t.vmId)! + 50),
    20_000,
    100,
  );
  const after = new Map((await tenant.stats()).map((t) => [t.vmId, t]));

  const perVm: Record<string, unknown> = {};
  let sent = 0;
  for (const vm of stMig.vms) {
    expect(vm.state).toBe('moved');
    const f = vm.figures!;
    const t = after.get(vm.vmId)!;
    expect(t).toMatchObject({ requestsFailed: 0, reconnects: 0, counterContinued: true, outOfOrder: 0, connected: true });
    expect(t.lastCounter!).toBeGreaterThan(before.get(vm.vmId)!.lastCounter!); // the same guest, counting on
    // The tenant waited at least while QEMU had the guest stopped, and not much longer (no reconnect, no reboot).
    expect(t.clientMaxStallMs).toBeGreaterThanOrEqual(f.downtimeMs! - 20);
    expect(t.clientMaxStallMs).toBeLessThan(f.downtimeMs! + 5_000);
    sent += f.bytesSent;
    perVm[vm.vmId] = {
      memoryMiB: vm.spec.memoryMiB,
      downtimeMs: f.downtimeMs,
      totalTimeMs: f.totalTimeMs,
      clientMaxStallMs: t.clientMaxStallMs,
      requestsDone: t.requestsDone,
      sentMiB: Math.round(f.bytesSent / MIB),
    };
  }

  // Source QEMUs quit; B runs all three, and its tenant bridge has learnt their MACs (on its taps).
  expect(qemuOn(source.server)).toEqual([]);
  expect(qemuOn(target)).toHaveLength(3);
  const macs = await learntMacs(target);
  for (const vmId of vmIds) expect(macs).toContain(guestNic(vmId).mac);

  // The capture saw the migration streams (most of what QEMU reports it sent: tcpdump may drop a few packets on a
  // loaded machine), and no guest's marker in them.
  expect(wire.length).toBeGreaterThan(0.8 * sent);
  for (const vmId of vmIds) expect(occurrences(wire, guestMarker(vmId))).toBe(0);

  figures.move = {
    vms: perVm,
    captureMiB: Math.round(wire.length / MIB),
    sentMiB: Math.round(sent / MIB),
    bootSeconds: (tBooted - t0) / 1000,
    migrationSeconds: (tMigrated - tBooted) / 1000,
  };
  for (const vmId of vmIds) await tenant.remove(vmId);
}, 240_000);

test('a partition between A and B mid-move: the move fails, the VM keeps running on A with its connection alive; after the heal the host is rolled back and the invariants are clean', async () => {
  const spec: VmSpec = { vcpus: 1, memoryMiB: 192, diskGiB: 2, workload: { dirtyRateMiBps: 4, workingSetMiB: 16 } };
  const { hostId, vmIds } = await sys.createHostWithVms({ vms: 1, specs: [spec], resourceClass: 'tb-small', zone: 'tb-zone' });
  const [vmId] = vmIds as [string];
  const source = await sourceOf(hostId);
  await tenant.add(vmId, guestNic(vmId).ip);
  await allAnswering(vmIds);

  // 4 MiB/s: the move takes long enough for the partition to land in the middle of it.
  const handle = await sys.startMigration(hostId, { maxParallel: 1, bandwidthCapBps: 4 * MIB, maxDowntimeMs: 300, onVmFailure: 'rollback' });
  const jobId = await eventually('the VM migration to start', async () => (await sys.status(hostId)).vms[0]?.jobId, 30_000, 50);
  const targetId = (await sys.status(hostId)).target!.serverId;
  await eventually('bytes on the wire', async () => ((await sys.agent(source.server.id).getMigration(jobId))?.bytesSent ?? 0) > 2 * MIB, 30_000, 50);
  const heal = await partition(source.server, server(targetId).fabricIp);
  const tPartition = Date.now();
  let healed = false;
  try {
    const job = await eventually(
      'the move to fail',
      async () => {
        const j = await sys.agent(source.server.id).getMigration(jobId);
        return j && j.state !== 'running' ? j : null;
      },
      60_000,
      100,
    );
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('MigrationStalled');
    // Still on A, still answering the same connection.
    expect(await sys.agent(source.server.id).getVm(vmId)).toMatchObject({ serverId: source.server.id, state: 'running' });
    const t = (await tenant.stats()).find((x) => x.vmId === vmId)!;
    expect(t).toMatchObject({ requestsFailed: 0, reconnects: 0, connected: true });
    figures.partition = { failedAfterMs: Date.now() - tPartition, error: job.error, sentMiB: Math.round(job.bytesSent / MIB) };
  } finally {
    await heal();
    healed = true;
  }
  expect(healed).toBe(true);

  // Per its policy (onVmFailure: rollback) the host stays on A; the clone on B is gone.
  const err = await handle.result().catch((e: unknown) => e);
  expect(err).toBeInstanceOf(Error);
  const stMig = await sys.status(hostId);
  expect(stMig.phase).toBe('rolled-back');
  expect((await sys.inventory.getHost(hostId))!).toMatchObject({ state: 'active', currentIncarnationId: source.incarnation.id });
  await eventually('the destination on B reaped', async () => qemuOn(server(targetId)).length === 0, 20_000, 100);
  expect(qemuOn(source.server)).toHaveLength(1);
  const t = (await tenant.stats()).find((x) => x.vmId === vmId)!;
  expect(t).toMatchObject({ requestsFailed: 0, reconnects: 0, connected: true, counterContinued: true });
  (figures.partition as Record<string, unknown>).clientMaxStallMs = t.clientMaxStallMs;

  const report = await checkInvariants({ inventory: sys.inventory, agents: sys.agentUrls, agentTls: sys.agentTls, temporal: sys.temporal.client });
  expect(report.violations).toEqual([]);
  await tenant.remove(vmId);
}, 240_000);

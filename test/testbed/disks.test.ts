import { loadControlPlaneTls } from '../../compute/agent-tls';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createLogger } from '../../common/logger';
import type { VmSpec } from '../../common/migration';
import type { MigrationJob } from '../../compute/agent-api';
import { lastDiskBlock, verifyDiskBlocks } from '../../compute/qemu/disk-blocks';
import { guestNic } from '../../compute/qemu/guest-nic';
import { runQemuSetup } from '../../compute/qemu/tools';
import { createVolume, deleteVolume, storageExports, volumeFile } from '../../compute/testbed/storage';
import { startTenantClient, type TenantClient } from '../../compute/testbed/tenant-client';
import { downTestbed, upTestbed, type TestbedServer, type TestbedState } from '../../compute/testbed/testbed';
import { eventually, startTestSystem, type TestSystem } from '../support/system';
import { blockLeftovers, inAgentMounts, leftoversOf, qemuOfVm, qemuOn, rangeHash, type QemuOfVm } from './support';

/**
 * VM disks on the testbed, through the real workflow: local disks (raw files in each server's storage folder) are
 * mirrored live to the clone over NBD with TLS, network disks (volumes of the testbed's storage service) are attached
 * on both ends and only memory moves. Every guest writes numbered, checksummed blocks to each of its disks the whole
 * time; every local disk also carries 24 MiB of random data at its end (the host's fill) that the mirror must copy.
 */

const logger = createLogger('testbed-disks-test', process.env.DHM_TEST_LOG_LEVEL ?? 'warn');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-tb-disks-'));
const name = `d${randomBytes(3).toString('hex')}`;
const MIB = 2 ** 20;
const GIB = 2 ** 30;
const FILL_MIB = 24;
const figures: Record<string, unknown> = {};
let st: TestbedState;
let sys: TestSystem;
let tenant: TenantClient;

beforeAll(async () => {
  await runQemuSetup();
  // 4 servers: a dedicated host holds a whole server, and each test leaves its host where it ended.
  st = await upTestbed({ name, root, servers: 4, nicBandwidthBps: 300e6, transport: 'tls', diskFillMiB: FILL_MIB }, logger);
  sys = await startTestSystem({
    fleet: st.fleet,
    externalAgents: new Map(st.servers.map((s) => [s.id, s.agentUrl])),
    externalAgentTls: loadControlPlaneTls(st.controlPlaneDir, 'controlPlaneDir'),
  });
  tenant = startTenantClient(st);
}, 300_000);

afterAll(async () => {
  await tenant?.stop().catch(() => undefined);
  const keep = process.env.DHM_TEST_KEEP_LOGS;
  if (keep && st)
    for (const s of st.servers) {
      fs.copyFileSync(path.join(s.dir, 'agent.log'), path.join(keep, `${name}-${s.id}.log`));
      const agentDir = path.join(s.dir, 'agent');
      for (const d of fs.existsSync(agentDir) ? fs.readdirSync(agentDir) : [])
        if (fs.existsSync(path.join(agentDir, d, 'serial.log')))
          fs.copyFileSync(path.join(agentDir, d, 'serial.log'), path.join(keep, `${name}-${s.id}-${d}.serial`));
    }
  await sys?.stop();
  if (st) await downTestbed(st.dir, logger);
  const left = st ? await leftoversOf(st) : [];
  fs.rmSync(root, { recursive: true, force: true });
  process.stderr.write(`\n[testbed disks figures] ${JSON.stringify(figures, null, 1)}\n`);
  expect(left).toEqual([]);
});

const server = (id: string): TestbedServer => st.servers.find((s) => s.id === id)!;
const created: string[] = [];
afterEach(async () => {
  await deleteVms(created.splice(0));
}, 60_000);

async function sourceOf(hostId: string) {
  const host = (await sys.inventory.getHost(hostId))!;
  const incarnation = (await sys.inventory.getIncarnation(host.currentIncarnationId))!;
  return { host, incarnation, server: server(incarnation.serverId) };
}

/**
 * A tenant's dedicated host with its VMs, as `createHostWithVms` makes one, and first the tenant's network volumes
 * (in the inventory, and in the storage service) that its VMs' specs name.
 */
async function hostWithVms(o: { vms: number; specs: VmSpec[]; resourceClass: string; zone: string; volumes?: string[] }) {
  const tag = randomBytes(3).toString('hex');
  const t = await sys.inventory.createTenant(`tenant-${tag}`);
  const actor = `tenant:${t.id}`;
  for (const volumeId of o.volumes ?? []) {
    await sys.inventory.createVolume({ tenantId: t.id, name: volumeId, zone: o.zone, sizeGiB: 1, volumeId, actor });
    await createVolume(st.storage, logger, volumeId, 1024);
  }
  const host = await sys.inventory.createDedicatedHost({ tenantId: t.id, name: `host-${tag}`, zone: o.zone, resourceClass: o.resourceClass, actor });
  const incarnation = (await sys.inventory.getIncarnation(host.currentIncarnationId))!;
  const agent = sys.agent(incarnation.serverId);
  await agent.prepareIncarnation({ incarnationId: incarnation.id, capacity: incarnation.capacity });
  const vmIds: string[] = [];
  for (let i = 0; i < o.vms; i++) {
    const vmId = `vm-${tag}-${i}`;
    const spec = o.specs[i % o.specs.length]!;
    await sys.inventory.placeVm({ vmId, tenantId: t.id, dedicatedHostId: host.id, name: `vm-${i}`, spec, actor });
    await agent.createVm({ vmId, incarnationId: incarnation.id, spec });
    vmIds.push(vmId);
    created.push(vmId);
  }
  return { hostId: host.id, vmIds };
}

/** A server no host holds (a move's target). */
async function freeServer(not: string): Promise<TestbedServer> {
  return eventually(
    'a free server',
    async () => {
      for (const s of st.servers) if (s.id !== not && (await sys.inventory.getServer(s.id))?.state === 'available') return s;
      return null;
    },
    60_000,
    200,
  );
}

/** Deletes a test's VMs wherever they are (a failed test must not leave guests loading the machine for the next). */
async function deleteVms(vmIds: string[]): Promise<void> {
  for (const vmId of vmIds) {
    await tenant.remove(vmId).catch(() => undefined);
    for (const s of st.servers)
      await sys
        .agent(s.id)
        .deleteVm(vmId)
        .catch(() => undefined);
  }
}

/** The VM's QEMU on that server, once its guest has reported at least `blocks` blocks written to its disks. */
async function guestWriting(s: TestbedServer, vmId: string, blocks: number): Promise<QemuOfVm> {
  return eventually(
    `VM ${vmId} to write ${blocks} blocks on ${s.id}`,
    async () => {
      const q = qemuOfVm(s, vmId);
      return q && (lastDiskBlock(q.serialPath) ?? -1) >= blocks ? q : null;
    },
    120_000,
    250,
  );
}

async function answering(vmIds: string[]): Promise<void> {
  await eventually(
    'every VM to answer the tenant',
    async () => {
      const mine = (await tenant.stats()).filter((t) => vmIds.includes(t.vmId));
      return mine.length === vmIds.length && mine.every((t) => t.connected && t.requestsDone > 20);
    },
    120_000,
    200,
  );
}

const fillRange = (sizeBytes: number): [number, number] => [sizeBytes - FILL_MIB * MIB, sizeBytes];

async function jobOf(hostId: string, vmId: string): Promise<{ jobId: string; sourceId: string }> {
  return eventually(
    `the move of ${vmId} to start`,
    async () => {
      const status = await sys.status(hostId);
      if (['completed', 'rolled-back', 'failed'].includes(status.phase)) throw new Error(`the migration ended (${status.phase}: ${status.lastError ?? ''})`);
      const vm = status.vms.find((v) => v.vmId === vmId);
      return vm?.jobId ? { jobId: vm.jobId, sourceId: (await sourceOf(hostId)).server.id } : null;
    },
    60_000,
    50,
  );
}

test("as root, the storage service's qemu-storage-daemon runs as QEMU's unprivileged user, with its own key copy; the volumes are that user's", async () => {
  const pid = st.pids.find((p) => p.role === 'storage service')!.pid;
  const uids = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$/m
    .exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))!
    .slice(1)
    .map(Number);
  const groups = /^Groups:[ \t]*(.*)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!.trim();
  expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')).toContain('qemu-storage-daemon');
  if (process.geteuid?.() !== 0) {
    expect(uids).toEqual(Array(4).fill(process.geteuid!()));
    return;
  }
  const user = st.storage.user!;
  expect(user.uid).not.toBe(0);
  expect(uids).toEqual(Array(4).fill(user.uid));
  expect(groups).toBe(''); // no supplementary groups (root's would let it read more)
  const key = path.join(st.storage.dir, 'tls', 'server-key.pem');
  expect([fs.statSync(key).uid, fs.statSync(key).mode & 0o777]).toEqual([user.uid, 0o600]);
  expect(fs.statSync(path.join(st.storage.credsDir, 'server-key.pem')).uid).toBe(0); // the issued folder stays root's
  const volumeId = `uid-${randomBytes(3).toString('hex')}`;
  await createVolume(st.storage, logger, volumeId, 16);
  try {
    expect(fs.statSync(volumeFile(st.storage, volumeId)).uid).toBe(user.uid);
    expect(await storageExports(st.storage, logger)).toContain(volumeId);
  } finally {
    // The next test asserts the storage service exports only its own volumes at the end.
    await deleteVolume(st.storage, logger, volumeId);
  }
});

test('a host of 3 VMs (a local disk, a network disk, both) moves through the workflow: every block on the target in order with correct checksums, the fill copied, 0 failed requests, source disks gone after de-provisioning, no export or block job left', async () => {
  const vol1 = `vol-${randomBytes(3).toString('hex')}`;
  const vol2 = `vol-${randomBytes(3).toString('hex')}`;
  const specs: VmSpec[] = [
    { vcpus: 1, memoryMiB: 128, diskGiB: 1, disks: [{ name: 'data', kind: 'local', sizeGiB: 1 }] },
    { vcpus: 1, memoryMiB: 128, diskGiB: 1, disks: [{ name: 'vol', kind: 'network', volumeId: vol1 }] },
    {
      vcpus: 1,
      memoryMiB: 128,
      diskGiB: 1,
      disks: [
        { name: 'root', kind: 'local', sizeGiB: 1 },
        { name: 'vol', kind: 'network', volumeId: vol2 },
      ],
    },
  ];
  const { hostId, vmIds } = await hostWithVms({ vms: 3, specs, resourceClass: 'tb-small', zone: 'tb-zone', volumes: [vol1, vol2] });
  const source = await sourceOf(hostId);
  for (const vmId of vmIds) await tenant.add(vmId, guestNic(vmId).ip);
  await answering(vmIds);
  const before = new Map<string, { q: QemuOfVm; blocks: number; fill: Map<string, string> }>();
  for (const vmId of vmIds) {
    const q = await guestWriting(source.server, vmId, 8);
    const fill = new Map([...q.files].map(([node, f]) => [node, rangeHash(f, ...fillRange(GIB))]));
    before.set(vmId, { q, blocks: lastDiskBlock(q.serialPath)!, fill });
  }
  expect(fs.readdirSync(source.server.storageDir)).toHaveLength(2); // the two local disks, nothing for the network ones

  const target = await freeServer(source.server.id);
  for (const b of before.values()) b.blocks = lastDiskBlock(b.q.serialPath)!;
  const handle = await sys.startMigration(hostId, { maxParallel: 1, maxDowntimeMs: 300 }, target.id);
  // The agent's job reports the local disk's copy apart from memory while it runs.
  const { jobId } = await jobOf(hostId, vmIds[0]!);
  const seen: MigrationJob[] = [];
  await eventually(
    "the first VM's job to end",
    async () => {
      const j = await sys.agent(source.server.id).getMigration(jobId);
      if (j) seen.push(j);
      return j && j.state !== 'running';
    },
    120_000,
    100,
  );
  const result = await handle.result();
  expect(result.phase).toBe('completed');
  const last = seen[seen.length - 1]!;
  expect(last.state).toBe('completed');
  expect(last.disk).toMatchObject({ bytesRemaining: 0 });
  expect(last.disk!.bytesCopied).toBe(last.disk!.bytesTotal);
  expect(last.disk!.bytesTotal).toBeGreaterThanOrEqual(GIB);
  expect(seen.some((j) => j.disk && j.disk.bytesCopied > 0 && j.disk.bytesCopied < j.disk.bytesTotal)).toBe(true);

  const status = await sys.status(hostId);
  figures.tenantAfterMove = (await tenant.stats()).filter((t) => vmIds.includes(t.vmId));
  const perVm: Record<string, unknown> = {};
  for (const vmId of vmIds) {
    const b = before.get(vmId)!;
    // The guest goes on writing on the target: wait for some blocks of its own there, then check every disk.
    const sourceLast = lastDiskBlock(b.q.serialPath)!;
    expect(sourceLast).toBeGreaterThan(b.blocks); // it wrote during the move too
    const q = await guestWriting(target, vmId, sourceLast + 8);
    const expectAtLeast = lastDiskBlock(q.serialPath)! + 1;
    const disks = specs[vmIds.indexOf(vmId)]!.disks!;
    const reports = disks.map((d, i) => {
      const file = d.kind === 'local' ? q.files.get(`disk${i}`)! : volumeFile(st.storage, d.volumeId);
      if (d.kind === 'local') expect(path.dirname(file)).toBe(target.storageDir);
      return { disk: d.name, kind: d.kind, ...verifyDiskBlocks(file, { expectAtLeast, live: true }) };
    });
    for (const r of reports) expect(r).toMatchObject({ ok: true, bad: null });
    // The host's fill at the end of each local disk is byte for byte the source's.
    for (const [node, hash] of b.fill) expect(rangeHash(q.files.get(node)!, ...fillRange(GIB))).toBe(hash);
    // No mirror job, NBD export or mirror target left in the VM's QEMU on the target.
    expect(await blockLeftovers(q)).toEqual({ jobs: [], exports: [], mirrorNodes: [] });
    const t = (await tenant.stats()).find((x) => x.vmId === vmId)!;
    const f = status.vms.find((v) => v.vmId === vmId)!.figures!;
    perVm[vmId] = {
      disks: reports.map((r) => `${r.kind}:${r.blocks}`),
      blocksAtStart: b.blocks,
      lastOnSource: sourceLast,
      downtimeMs: f.downtimeMs,
      totalTimeMs: f.totalTimeMs,
      clientMaxStallMs: t.clientMaxStallMs,
      requestsDone: t.requestsDone,
    };
  }
  figures.move = { vms: perVm, job: { disk: last.disk, memory: last.memory, totalTimeMs: last.totalTimeMs, downtimeMs: last.downtimeMs } };

  // De-provisioning: the scheduler tears the old incarnation down; its server's storage is empty, no QEMU runs there.
  await eventually(
    'the old server de-provisioned',
    async () => (await sys.inventory.listEvents({ dedicatedHostId: hostId })).some((e) => e.action === 'deprovision.completed'),
    60_000,
    200,
  );
  expect(fs.readdirSync(source.server.storageDir)).toEqual([]);
  expect(qemuOn(source.server)).toEqual([]);
  expect((await storageExports(st.storage, logger)).sort()).toEqual([vol1, vol2].sort());
  // Last, so a failure here still leaves the disk checks above done: the tenant lost no request on any VM.
  for (const t of (await tenant.stats()).filter((x) => vmIds.includes(x.vmId)))
    expect(t).toMatchObject({ requestsFailed: 0, reconnects: 0, counterContinued: true, outOfOrder: 0, connected: true });
}, 400_000);

test('a cancel in the middle of the mirror: the VM keeps running on the source with its disk intact; nothing is left on the target', async () => {
  const spec: VmSpec = { vcpus: 1, memoryMiB: 128, diskGiB: 1 }; // one local disk, `root`, of diskGiB
  const { hostId, vmIds } = await hostWithVms({ vms: 1, specs: [spec], resourceClass: 'tb-small', zone: 'tb-zone' });
  const [vmId] = vmIds as [string];
  const source = await sourceOf(hostId);
  await tenant.add(vmId, guestNic(vmId).ip);
  await answering(vmIds);
  const q = await guestWriting(source.server, vmId, 8);
  const file = q.files.get('disk0')!;
  const fill = rangeHash(file, ...fillRange(GIB));

  // 2 MiB/s: the 24 MiB fill takes ~12 s to mirror, long enough to cancel in the middle.
  const handle = await sys.startMigration(hostId, { maxParallel: 1, maxDowntimeMs: 300, bandwidthCapBps: 2 * MIB });
  const { jobId } = await jobOf(hostId, vmId);
  const targetId = (await sys.status(hostId)).target!.serverId;
  const mid = await eventually(
    'the mirror to be under way',
    async () => {
      const j = await sys.agent(source.server.id).getMigration(jobId);
      if (j && j.state !== 'running') throw new Error(`the job ended first: ${JSON.stringify(j)}`);
      return j?.disk && j.disk.bytesCopied > 2 * MIB && j.disk.bytesRemaining > 4 * MIB ? j : null;
    },
    60_000,
    100,
  );
  expect(mid.bytesSent).toBe(0); // memory has not started: this is the mirror's part
  await handle.cancel();
  await handle.result().catch(() => undefined);
  expect((await sys.status(hostId)).phase).toBe('rolled-back');
  const job = (await sys.agent(source.server.id).getMigration(jobId))!;
  expect(job.state).toBe('cancelled');

  // Still on the source, same QEMU, still answering; its disk holds every block it reported, and the fill unchanged.
  expect(await sys.agent(source.server.id).getVm(vmId)).toMatchObject({ serverId: source.server.id, state: 'running' });
  expect(qemuOfVm(source.server, vmId)!.pid).toBe(q.pid);
  await guestWriting(source.server, vmId, lastDiskBlock(q.serialPath)! + 8);
  expect(verifyDiskBlocks(file, { expectAtLeast: lastDiskBlock(q.serialPath)! + 1, live: true })).toMatchObject({ ok: true, bad: null });
  expect(rangeHash(file, ...fillRange(GIB))).toBe(fill);
  expect(await blockLeftovers(q)).toEqual({ jobs: [], exports: [], mirrorNodes: [] });
  // The target: no destination, no disk file.
  const target = server(targetId);
  await eventually('the destination on the target reaped', async () => qemuOn(target).length === 0, 20_000, 100);
  expect(fs.readdirSync(target.storageDir)).toEqual([]);
  const t = (await tenant.stats()).find((x) => x.vmId === vmId)!;
  expect(t).toMatchObject({ requestsFailed: 0, reconnects: 0, connected: true });
  figures.cancel = { copiedMiBAtCancel: Math.round(mid.disk!.bytesCopied / MIB), ofMiB: Math.round(mid.disk!.bytesTotal / MIB) };
}, 300_000);

test("the target's storage fills up mid-mirror (a 12 MiB quota for a disk with 24 MiB of data): the move fails cleanly, the VM keeps running on the source with its disk intact, nothing is left on the target", async () => {
  const spec: VmSpec = { vcpus: 1, memoryMiB: 128, diskGiB: 1 };
  const { hostId, vmIds } = await hostWithVms({ vms: 1, specs: [spec], resourceClass: 'tb-small', zone: 'tb-zone' });
  const [vmId] = vmIds as [string];
  const source = await sourceOf(hostId);
  const target = await freeServer(source.server.id);
  // The quota: a 12 MiB tmpfs over the target's storage folder, in its agent's mount namespace (its QEMUs see it).
  await inAgentMounts(target, ['mount', '-t', 'tmpfs', '-o', 'size=12m,mode=0700', 'dhm-quota', target.storageDir]);
  const targetView = `/proc/${target.agentPid}/root${target.storageDir}`;
  try {
    await tenant.add(vmId, guestNic(vmId).ip);
    await answering(vmIds);
    const q = await guestWriting(source.server, vmId, 8);
    const file = q.files.get('disk0')!;
    const fill = rangeHash(file, ...fillRange(GIB));
    const handle = await sys.startMigration(hostId, { maxParallel: 1, maxDowntimeMs: 300, onVmFailure: 'rollback' }, target.id);
    const { jobId } = await jobOf(hostId, vmId);
    const err = await handle.result().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((await sys.status(hostId)).phase).toBe('rolled-back');
    const job = (await sys.agent(source.server.id).getMigration(jobId))!;
    expect(job).toMatchObject({ state: 'failed', error: { code: 'DiskMirrorFailed' } });
    expect(job.error!.message).toMatch(/No space left on device/i);
    expect(job.disk!.bytesCopied).toBeGreaterThan(0); // it failed mid-mirror, not before

    expect(await sys.agent(source.server.id).getVm(vmId)).toMatchObject({ serverId: source.server.id, state: 'running' });
    await guestWriting(source.server, vmId, lastDiskBlock(q.serialPath)! + 8);
    expect(verifyDiskBlocks(file, { expectAtLeast: lastDiskBlock(q.serialPath)! + 1, live: true })).toMatchObject({ ok: true, bad: null });
    expect(rangeHash(file, ...fillRange(GIB))).toBe(fill);
    expect(await blockLeftovers(q)).toEqual({ jobs: [], exports: [], mirrorNodes: [] });
    await eventually('the destination on the target reaped', async () => qemuOn(target).length === 0, 20_000, 100);
    expect(fs.readdirSync(targetView)).toEqual([]); // the partial disk wiped, the quota's space free again
    const t = (await tenant.stats()).find((x) => x.vmId === vmId)!;
    expect(t).toMatchObject({ requestsFailed: 0, reconnects: 0, connected: true });
    figures.quota = { error: job.error, copiedMiB: Math.round(job.disk!.bytesCopied / MIB) };
  } finally {
    await inAgentMounts(target, ['umount', target.storageDir]);
  }
}, 300_000);

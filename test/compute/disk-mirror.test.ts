import type { VmSpec } from '../../compute/agent-api';
import { Agents, finished, GIB, MIB, relErr, startPair, waitFor } from './helpers';

/**
 * The sim's local-disk mirror (issue 17): the data on a VM's local disks crosses the link before its memory, blocks
 * written meanwhile are sent again, the memory stream starts once the mirror is in sync and shares the NIC with its
 * writes; the job reports both parts. Network disks move nothing.
 */

const NIC_BITS = 1e9;
const B = NIC_BITS / 8; // 125 MB/s; one stream may use all of it here

function diskVm(opts: { memoryMiB: number; usedGiB: number; writeMiBps: number; disks?: VmSpec['disks'] }): VmSpec {
  return {
    vcpus: 1,
    memoryMiB: opts.memoryMiB,
    diskGiB: 20,
    workload: { dirtyRateMiBps: 0, workingSetMiB: 0, diskUsedGiB: opts.usedGiB, diskWriteMiBps: opts.writeMiBps },
    ...(opts.disks ? { disks: opts.disks } : {}),
  };
}

describe('the sim models local disks', () => {
  const agents = new Agents();
  afterEach(() => agents.stopAll());

  async function migrate(spec: VmSpec, timeScale = 2000) {
    const pair = await startPair(agents, { nicBandwidthBps: NIC_BITS, streamCapFraction: 1, timeScale });
    await pair.source.client.createVm({ vmId: 'vm-d', incarnationId: 'src', spec });
    await pair.source.client.startMigration({
      jobId: 'job-d',
      vmId: 'vm-d',
      target: { agentUrl: pair.target.url, incarnationId: 'dst' },
      maxDowntimeMs: 300,
      autoConverge: false,
    });
    return pair;
  }

  test('the disk data is copied first (memory untouched meanwhile), re-sent blocks are counted, and the move takes (disk + resends + memory)/B', async () => {
    const { source, target } = await migrate(diskVm({ memoryMiB: 1024, usedGiB: 4, writeMiBps: 10 }), 100);
    // Early on the mirror is copying and no memory has been sent.
    const early = await source.client.getMigration('job-d');
    expect(early!.state).toBe('running');
    expect(early!.disk).toEqual({ bytesTotal: 4 * GIB, bytesCopied: expect.any(Number), bytesRemaining: expect.any(Number) });
    expect(early!.disk!.bytesRemaining).toBeGreaterThan(0);
    expect(early!.memory).toEqual({ bytesTotal: 1024 * MIB, bytesTransferred: 0, bytesRemaining: 1024 * MIB });
    const job = await finished(source.client, 'job-d');
    expect(job.state).toBe('completed');
    expect(job.disk!.bytesRemaining).toBe(0);
    expect(job.memory.bytesRemaining).toBe(0);
    // More than the data: blocks written during the bulk copy went again, and writes were mirrored during the RAM copy.
    expect(job.disk!.bytesCopied).toBeGreaterThan(4 * GIB);
    expect(job.bytesSent).toBeCloseTo(job.disk!.bytesCopied + job.memory.bytesTransferred, 0);
    // Bulk 4 GiB at 125 MB/s ≈ 34.4 s, re-sends at 10 MiB/s ≈ 9 % more, then 1 GiB memory at B − writes: ≈ 46 s.
    const resent = (4 * GIB * (10 * MIB)) / (B - 10 * MIB);
    const expectedMs = ((4 * GIB + resent) / B + (1024 * MIB) / (B - 10 * MIB)) * 1000;
    expect(relErr(job.totalTimeMs!, expectedMs)).toBeLessThan(0.05);
    expect(await target.client.getVm('vm-d')).toMatchObject({ serverId: 'server-b', spec: expect.objectContaining({ diskGiB: 20 }) });
  });

  test('a VM whose disks are network volumes moves only its memory: no disk part', async () => {
    const { source } = await migrate(diskVm({ memoryMiB: 1024, usedGiB: 4, writeMiBps: 10, disks: [{ name: 'root', kind: 'network', volumeId: 'vol-1' }] }));
    const job = await finished(source.client, 'job-d');
    expect(job.state).toBe('completed');
    expect(job.disk).toBeNull();
    expect(job.bytesSent).toBe(job.memory.bytesTransferred);
    expect(relErr(job.totalTimeMs!, ((1024 * MIB) / B) * 1000 + 5)).toBeLessThan(0.05);
  });

  test('a guest writing faster than the link never gets its mirror in sync: NotConverging, the VM stays on the source', async () => {
    const { source, target } = await migrate(diskVm({ memoryMiB: 256, usedGiB: 2, writeMiBps: Math.ceil(B / MIB) + 5 }), 20_000);
    const job = await finished(source.client, 'job-d');
    expect([job.state, job.error?.code]).toEqual(['failed', 'NotConverging']);
    expect(job.error?.message).toMatch(/disk mirror/);
    expect(job.memory.bytesTransferred).toBe(0);
    expect(await source.client.getVm('vm-d')).toMatchObject({ state: 'running', serverId: 'server-a' });
    expect(await target.client.getVm('vm-d')).toBeNull();
    await waitFor('the target reservation released', async () => (await target.client.getIncarnation('dst'))?.vmIds.length === 0);
  });

  test('a cancel during the disk copy leaves the VM on the source and nothing on the target', async () => {
    const { source, target } = await migrate(diskVm({ memoryMiB: 256, usedGiB: 10, writeMiBps: 1 }), 200);
    await waitFor('some disk copied', async () => ((await source.client.getMigration('job-d'))?.disk?.bytesCopied ?? 0) > 0);
    const cancelled = await source.client.cancelMigration('job-d');
    expect(cancelled.state).toBe('cancelled');
    expect(cancelled.disk!.bytesRemaining).toBeGreaterThan(0);
    expect(cancelled.memory.bytesTransferred).toBe(0);
    expect(await source.client.getVm('vm-d')).toMatchObject({ state: 'running', serverId: 'server-a' });
    expect((await target.client.getIncarnation('dst'))?.vmIds).toEqual([]);
  });
});

describe('the sim wipes local disks (de-provisioning, deleted VMs, dropped copies)', () => {
  const agents = new Agents();
  afterEach(() => agents.stopAll());

  test("after a move the source keeps the old copy until its incarnation is torn down, which wipes it (idempotently); a deleted VM's disks are wiped at once", async () => {
    const { source, target } = await startPair(agents, { nicBandwidthBps: NIC_BITS, streamCapFraction: 1, timeScale: 5000 });
    await source.client.createVm({ vmId: 'vm-w', incarnationId: 'src', spec: diskVm({ memoryMiB: 256, usedGiB: 1, writeMiBps: 1 }) });
    await source.client.createVm({
      vmId: 'vm-net',
      incarnationId: 'src',
      spec: diskVm({ memoryMiB: 256, usedGiB: 0, writeMiBps: 0, disks: [{ name: 'root', kind: 'network', volumeId: 'vol-n' }] }),
    });
    expect((await source.client.info()).localStorage).toEqual({ diskBytes: 20 * GIB, wipedBytes: 0 }); // the network disk is not here
    await source.client.startMigration({
      jobId: 'job-w',
      vmId: 'vm-w',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 300,
      autoConverge: false,
    });
    expect((await finished(source.client, 'job-w')).state).toBe('completed');
    expect((await target.client.info()).localStorage).toEqual({ diskBytes: 20 * GIB, wipedBytes: 0 });
    expect((await source.client.info()).localStorage).toEqual({ diskBytes: 20 * GIB, wipedBytes: 0 });
    await source.client.teardownIncarnation('src');
    expect((await source.client.info()).localStorage).toEqual({ diskBytes: 0, wipedBytes: 20 * GIB });
    await source.client.teardownIncarnation('src');
    expect((await source.client.info()).localStorage).toEqual({ diskBytes: 0, wipedBytes: 20 * GIB });
    await target.client.deleteVm('vm-w');
    expect((await target.client.info()).localStorage).toEqual({ diskBytes: 0, wipedBytes: 20 * GIB });
  });

  test("a cancelled move's partial copy on the target is wiped with its reservation", async () => {
    const { source, target } = await startPair(agents, { nicBandwidthBps: NIC_BITS, streamCapFraction: 1, timeScale: 200 });
    await source.client.createVm({ vmId: 'vm-c', incarnationId: 'src', spec: diskVm({ memoryMiB: 256, usedGiB: 10, writeMiBps: 1 }) });
    await source.client.startMigration({
      jobId: 'job-c',
      vmId: 'vm-c',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 300,
      autoConverge: false,
    });
    expect((await target.client.info()).localStorage.diskBytes).toBe(20 * GIB);
    expect((await source.client.cancelMigration('job-c')).state).toBe('cancelled');
    expect((await target.client.info()).localStorage).toEqual({ diskBytes: 0, wipedBytes: 20 * GIB });
    expect((await source.client.info()).localStorage).toEqual({ diskBytes: 20 * GIB, wipedBytes: 0 });
  });
});

import { loadControlPlaneTls } from '../compute/agent-tls';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createLogger } from '../common/logger';
import { createAgentClient } from '../compute/agent-client';
import type { MigrationJob } from '../compute/agent-api';
import { lastDiskBlock, verifyDiskBlocks } from '../compute/qemu/disk-blocks';
import { runQemuSetup } from '../compute/qemu/tools';
import { downTestbed, processesUnder, upTestbed, type TestbedServer } from '../compute/testbed/testbed';

/**
 * Testbed benchmark: a host of VMs with local disks moved between two testbed servers (namespaced, NIC shaped to
 * B = 300 Mbit/s, TLS), one VM at a time as dhm's schedule does when one stream fills the NIC. Each VM's disk is
 * mirrored (NBD + blockdev-mirror) and then its memory migrated. The figure: the host's wall time against
 * Σ(memory + disk)/B, with "disk" both as the data the disks hold (what must cross the wire: the host's fill and the
 * guest's blocks; zero ranges go as NBD write-zeroes) and as the disks' nominal size.
 *
 *   node -r @swc-node/register bench/testbed-disks.ts [--vms 3] [--memory 128] [--fill 96]
 * Writes bench/results/<timestamp>-testbed-disks.json and .md. Needs root (a testbed).
 */

const MIB = 2 ** 20;
const GIB = 2 ** 30;

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}

function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

function qemuFiles(server: TestbedServer, vmId: string): { files: string[]; serial: string } | null {
  for (const pid of processesUnder(server.dir)) {
    const args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    if (!args.some((a) => a.includes('qemu-system'))) continue;
    if (args[args.indexOf('-name') + 1] !== vmId) continue;
    const files = args
      .filter((_, i) => args[i - 1] === '-blockdev')
      .map((a) => JSON.parse(a) as { driver: string; filename?: string })
      .filter((b) => b.driver === 'file')
      .map((b) => b.filename!);
    return { files, serial: args[args.indexOf('-serial') + 1]!.replace(/^file:/, '') };
  }
  return null;
}

async function main(): Promise<void> {
  const vms = arg('vms', 3);
  const memoryMiB = arg('memory', 128);
  const fillMiB = arg('fill', 96);
  const nicBps = 300e6;
  const logger = createLogger('bench-testbed-disks', 'warn');
  await runQemuSetup();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-bench-disks-'));
  const st = await upTestbed(
    { name: `bd${process.pid.toString(36).slice(-5)}`, root, servers: 2, nicBandwidthBps: nicBps, transport: 'tls', diskFillMiB: fillMiB },
    logger,
  );
  const started = new Date();
  try {
    const tls = loadControlPlaneTls(st.controlPlaneDir, 'controlPlaneDir');
    const [a, b] = st.servers.map((s) => createAgentClient({ baseUrl: s.agentUrl, tls }));
    const cap = { vcpus: 4, memoryMiB: 1024, diskGiB: 20 };
    await a!.prepareIncarnation({ incarnationId: 'inc-src', capacity: cap });
    await b!.prepareIncarnation({ incarnationId: 'inc-dst', capacity: cap });
    const ids = Array.from({ length: vms }, (_, i) => `bench-vm-${i}`);
    for (const vmId of ids) await a!.createVm({ vmId, incarnationId: 'inc-src', spec: { vcpus: 1, memoryMiB, diskGiB: 1 } });
    // The guests boot and start writing their blocks.
    const deadline = Date.now() + 180_000;
    while (!ids.every((id) => (lastDiskBlock(qemuFiles(st.servers[0]!, id)?.serial ?? '') ?? -1) >= 8)) {
      if (Date.now() > deadline) throw new Error('guests did not start writing within 180 s');
      await new Promise((r) => setTimeout(r, 500)); // poll interval within the deadline
    }
    const dataBytes = ids.map((id) => qemuFiles(st.servers[0]!, id)!.files.reduce((s, f) => s + allocatedBytes(f), 0));
    const t0 = Date.now();
    const jobs: Array<MigrationJob & { wallMs: number }> = [];
    for (const vmId of ids) {
      const t = Date.now();
      await a!.startMigration({
        jobId: `bench-${vmId}`,
        vmId,
        target: { agentUrl: st.servers[1]!.agentUrl, incarnationId: 'inc-dst' },
        maxDowntimeMs: 300,
        autoConverge: true,
      });
      let j: MigrationJob | null = null;
      while (!j || j.state === 'running') j = await a!.getMigration(`bench-${vmId}`, { waitMs: 1_000 });
      if (j.state !== 'completed') throw new Error(`move of ${vmId} ${j.state}: ${JSON.stringify(j.error)}`);
      jobs.push({ ...j, wallMs: Date.now() - t });
    }
    const wallMs = Date.now() - t0;
    await new Promise((r) => setTimeout(r, 3_000)); // the guests write a few blocks on the target
    const verified = ids.map((id) => {
      const q = qemuFiles(st.servers[1]!, id)!;
      return verifyDiskBlocks(q.files[0]!, { expectAtLeast: (lastDiskBlock(q.serial) ?? 0) + 1, live: true }).ok;
    });
    const memBytes = jobs.reduce((s, j) => s + j.memory.bytesTotal, 0);
    const data = dataBytes.reduce((s, x) => s + x, 0);
    const nominal = vms * GIB;
    const Bps = nicBps / 8;
    const result = {
      benchmark: 'testbed: a host with local disks (mirror + memory, one VM at a time)',
      at: started.toISOString(),
      machine: { cpus: os.cpus().length, loadavg: os.loadavg().map((l) => Number(l.toFixed(1))) },
      nicBandwidthBps: nicBps,
      vms: jobs.map((j, i) => ({
        vmId: j.vmId,
        memoryMiB,
        diskGiB: 1,
        diskDataMiB: Number((dataBytes[i]! / MIB).toFixed(1)),
        diskCopiedMiB: Number(((j.disk?.bytesCopied ?? 0) / MIB).toFixed(1)),
        memorySentMiB: Number((j.bytesSent / MIB).toFixed(1)),
        downtimeMs: j.downtimeMs,
        ramMs: j.totalTimeMs,
        wallMs: j.wallMs,
        diskVerified: verified[i],
      })),
      wallMs,
      boundDataMs: Math.round(((memBytes + data) / Bps) * 1000),
      boundNominalMs: Math.round(((memBytes + nominal) / Bps) * 1000),
    };
    const ratioData = wallMs / result.boundDataMs;
    const summary = { ...result, wallOverBoundData: Number(ratioData.toFixed(2)), wallOverBoundNominal: Number((wallMs / result.boundNominalMs).toFixed(2)) };
    const stamp = started.toISOString().slice(0, 16).replace(/:/g, '-');
    const out = path.resolve(__dirname, 'results', `${stamp}-testbed-disks`);
    fs.writeFileSync(`${out}.json`, `${JSON.stringify(summary, null, 2)}\n`);
    const md = [
      `# ${summary.benchmark}`,
      '',
      `${summary.at}; ${vms} VMs × (${memoryMiB} MiB memory + a 1 GiB local disk holding ~${fillMiB} MiB); B = ${nicBps / 1e6} Mbit/s, TLS; load ${summary.machine.loadavg.join(' ')} on ${summary.machine.cpus} cores.`,
      '',
      '| VM | disk data MiB | disk copied MiB (job) | memory sent MiB | downtime ms | QEMU RAM ms | move wall ms | blocks verified |',
      '|---|---|---|---|---|---|---|---|',
      ...summary.vms.map(
        (v) => `| ${v.vmId} | ${v.diskDataMiB} | ${v.diskCopiedMiB} | ${v.memorySentMiB} | ${v.downtimeMs} | ${v.ramMs} | ${v.wallMs} | ${v.diskVerified} |`,
      ),
      '',
      `Host: ${wallMs} ms wall; Σ(memory + disk data)/B = ${summary.boundDataMs} ms (× ${summary.wallOverBoundData}); Σ(memory + nominal disk)/B = ${summary.boundNominalMs} ms (× ${summary.wallOverBoundNominal}).`,
      '',
      'The disk jobs\' bytesCopied counts the whole nominal size (zero ranges are skipped as NBD write-zeroes, not sent), so "disk data" (allocated bytes of the source files) is what crossed the wire.',
      '',
    ].join('\n');
    fs.writeFileSync(`${out}.md`, md);
    process.stdout.write(`${md}\nwritten ${out}.json and .md\n`);
  } finally {
    await downTestbed(st.dir, logger);
    fs.rmSync(root, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});

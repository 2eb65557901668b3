import * as fs from 'node:fs';
import type { Disk } from '../../common/vm-spec';
import { lastDiskBlock, verifyDiskBlocks, type DiskBlocksReport } from '../qemu/disk-blocks';
import { volumeFile, type StorageService } from './storage';
import { processesUnder, type TestbedServer } from './testbed';

/**
 * A VM's QEMU on a testbed server, read from its command line: its serial log, its local disk files by node, and its
 * inspection QMP socket (a second monitor, for measurements that must not disturb the agent's).
 */
export function vmQemu(
  server: TestbedServer,
  vmId: string,
): { pid: number; serialPath: string; files: Map<string, string>; inspectSocket: string | null } | null {
  for (const pid of processesUnder(server.dir)) {
    let args: string[];
    try {
      args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (!args.some((a) => a.includes('qemu-system')) || args[args.indexOf('-name') + 1] !== vmId) continue;
    const files = new Map<string, string>();
    args.forEach((a, i) => {
      if (args[i - 1] !== '-blockdev') return;
      const b = JSON.parse(a) as { driver: string; filename?: string; 'node-name': string };
      if (b.driver === 'file' && b.filename) files.set(b['node-name'].replace(/-proto$/, ''), b.filename);
    });
    const inspect = args.find((a) => a.includes('inspect.sock'));
    const inspectSocket = inspect ? inspect.replace(/^unix:/, '').split(',')[0]! : null;
    return { pid, serialPath: args[args.indexOf('-serial') + 1]!.replace(/^file:/, ''), files, inspectSocket };
  }
  return null;
}

/**
 * Checks every disk of a VM running on `server` for the guest's numbered blocks: each must hold every block the guest
 * has reported written (here, or on `alsoReported`: the serial log of where it ran before), in order, checksums right.
 */
export function verifyVmDisks(
  server: TestbedServer,
  storage: StorageService,
  vmId: string,
  disks: Disk[],
  alsoReported: number | null = null,
): { verified: boolean; disks: Array<DiskBlocksReport & { name: string }> } {
  const q = vmQemu(server, vmId);
  if (!q) return { verified: false, disks: [] };
  const expectAtLeast = Math.max(lastDiskBlock(q.serialPath) ?? -1, alsoReported ?? -1) + 1;
  const reports = disks.map((d, i) => {
    const file = d.kind === 'local' ? q.files.get(`disk${i}`) : volumeFile(storage, d.volumeId);
    const r: DiskBlocksReport = file
      ? verifyDiskBlocks(file, { expectAtLeast, live: true })
      : { blocks: 0, bad: { index: 0, reason: 'no file' }, tornTail: false, ok: false };
    return { name: d.name, ...r };
  });
  return { verified: reports.length > 0 && reports.every((r) => r.ok), disks: reports };
}

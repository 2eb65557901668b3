import * as fs from 'node:fs';
import * as path from 'node:path';

/** `pgrep -f` without needing procps: pids whose command line contains `needle` (never this process). */
export function processesMatching(needle: string): Array<{ pid: number; cmd: string }> {
  const found: Array<{ pid: number; cmd: string }> = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let cmd: string;
    try {
      cmd = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ');
    } catch {
      continue; // exited meanwhile
    }
    if (cmd.includes(needle)) found.push({ pid: Number(entry), cmd });
  }
  return found;
}

/** QEMU processes whose command line mentions `dir` (their QMP socket and serial log live under it). */
export function qemuUnder(dir: string): number[] {
  return processesMatching(dir)
    .filter((p) => p.cmd.includes('qemu-system-x86_64'))
    .map((p) => p.pid);
}

/** Every counter line in a serial log, in order. */
export function countersIn(serialPath: string): number[] {
  if (!fs.existsSync(serialPath)) return [];
  return [...fs.readFileSync(serialPath, 'latin1').matchAll(/dhm-counter (\d+)\r?\n/g)].map((m) => Number(m[1]));
}

/** Serial logs of the QEMU processes an agent started (`vm-*` for VMs created there, `in-*` for destinations). */
export function serialLogs(stateDir: string, prefix: 'vm-' | 'in-'): string[] {
  if (!fs.existsSync(stateDir)) return [];
  return fs
    .readdirSync(stateDir)
    .filter((d) => d.startsWith(prefix))
    .sort((x, y) => Number(x.slice(3)) - Number(y.slice(3)))
    .map((d) => path.join(stateDir, d, 'serial.log'));
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

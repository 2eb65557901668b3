import * as fs from 'node:fs';
import { writeFileAtomic } from '../common/atomic-file';

/** True when a process with this pid exists (signal 0 probes without touching it). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function commandOf(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

/**
 * A process left behind by a stack that was killed with SIGKILL: stop it if its pid file still names a live process
 * whose command line matches, so a re-run after a crash starts cleanly. Returns the pid it stopped, if any.
 */
export async function stopStaleProcess(pidFile: string, commandMustContain: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(pidFile, 'utf8').split('\n')[0]!.trim());
  } catch {
    return null;
  }
  fs.rmSync(pidFile, { force: true });
  if (!Number.isInteger(pid) || pid <= 1 || !isAlive(pid) || !commandOf(pid).includes(commandMustContain)) return null;
  process.kill(pid, signal);
  const deadline = Date.now() + 15_000;
  while (isAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  if (isAlive(pid)) process.kill(pid, 'SIGKILL');
  return pid;
}

export function writePidFile(pidFile: string, pid: number): void {
  writeFileAtomic(pidFile, `${pid}\n`, { mode: 0o644 }); // a reader racing the write would see no pid
}

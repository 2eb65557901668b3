import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { saveTestbedState, type TestbedState } from './state';

/** The testbed's processes: started inside its namespaces and recorded, found and stopped by pid (never by name). */

/** Kills `pid` only if its command line still holds `match` (a pid the kernel reused is someone else's). */
export async function killIfOurs(pid: number, match: string): Promise<boolean> {
  const cmd = cmdline(pid);
  if (cmd === null || !cmd.includes(match)) return false;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return false;
  }
  const deadline = Date.now() + 5_000;
  while (cmdline(pid) !== null && Date.now() < deadline) await new Promise<void>((r) => setTimeout(r, 50)); // waiting for it to exit
  if (cmdline(pid) !== null) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
    while (cmdline(pid) !== null && Date.now() < deadline + 5_000) await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

function cmdline(pid: number): string | null {
  try {
    const s = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    // A zombie has an empty command line: it is gone for our purposes.
    return s === '' ? null : s.split('\0').join(' ');
  } catch {
    return null;
  }
}

/** Pids whose command line mentions the testbed's folder (never this process). */
export function processesUnder(dir: string): number[] {
  const found: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    const c = cmdline(Number(e));
    if (c?.includes(dir)) found.push(Number(e));
  }
  return found;
}

/** Starts a process inside one of the testbed's namespaces, recorded in its state so `down` stops it. */
export function spawnInTestbed(st: TestbedState, ns: string, role: string, command: string[], match: string) {
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'ip', 'netns', 'exec', ns, ...command], { stdio: ['pipe', 'pipe', 'pipe'] });
  st.pids.push({ pid: child.pid!, role, match });
  saveTestbedState(st);
  return child;
}

import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { bridgeIn, run } from '../../compute/testbed/net';
import { processesUnder, testbedLeftovers, type TestbedServer } from '../../compute/testbed/testbed';

/** QEMU processes running from a testbed server's folder. */
export function qemuOn(server: TestbedServer): number[] {
  return processesUnder(server.dir).filter((pid) => {
    try {
      return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu-system-x86_64');
    } catch {
      return false;
    }
  });
}

/** MACs a server's tenant bridge has learnt (its fdb, without the bridge's and ports' own permanent entries). */
export async function learntMacs(server: TestbedServer): Promise<string[]> {
  const out = await bridgeIn(server.namespace, 'fdb', 'show', 'br', 'brt');
  return out
    .split('\n')
    .filter((l) => l && !l.includes('permanent'))
    .map((l) => l.split(' ')[0]!);
}

/** A packet capture (tcpdump) on a server's fabric NIC, whole packets, into `file`. */
export interface Capture {
  stop(): Promise<Buffer>;
}

export async function startCapture(server: TestbedServer, file: string, filter: string): Promise<Capture> {
  const child: ChildProcess = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'ip', 'netns', 'exec', server.namespace, 'tcpdump', '-i', 'eth0', '-U', '-s', '0', '-w', file, filter], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += String(d)));
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  // tcpdump says "listening on eth0" once the capture runs.
  const deadline = Date.now() + 10_000;
  while (!/listening on/.test(stderr)) {
    if (child.exitCode !== null) throw new Error(`tcpdump exited: ${stderr}`);
    if (Date.now() > deadline) throw new Error(`tcpdump did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50)); // poll interval within the deadline
  }
  return {
    async stop() {
      child.kill('SIGTERM');
      await exited;
      const buf = fs.readFileSync(file);
      fs.rmSync(file, { force: true });
      return buf;
    },
  };
}

export function occurrences(haystack: Buffer, needle: string): number {
  const n = Buffer.from(needle);
  let count = 0;
  for (let i = haystack.indexOf(n); i >= 0; i = haystack.indexOf(n, i + 1)) count++;
  return count;
}

/** Drops every packet between two servers, in `server`'s namespace (both directions). */
export async function partition(server: TestbedServer, peerIp: string): Promise<() => Promise<void>> {
  const rules = [
    ['OUTPUT', '-d', peerIp, '-j', 'DROP'],
    ['INPUT', '-s', peerIp, '-j', 'DROP'],
  ];
  for (const r of rules) await run('ip', ['netns', 'exec', server.namespace, 'iptables', '-A', ...r]);
  return async () => {
    for (const r of rules) await run('ip', ['netns', 'exec', server.namespace, 'iptables', '-D', ...r]);
  };
}

/** Everything of the testbed still on this machine: for the "leaves nothing" assertions. */
export const leftoversOf = testbedLeftovers;

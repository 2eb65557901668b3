import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createLogger } from '../../common/logger';
import { QmpClient } from '../../compute/qemu/qmp';
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
  const child: ChildProcess = spawn(
    'setpriv',
    ['--pdeathsig', 'KILL', '--', 'ip', 'netns', 'exec', server.namespace, 'tcpdump', '-i', 'eth0', '-U', '-s', '0', '-w', file, filter],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
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

/** One VM's QEMU on a testbed server, as its command line says: pid, serial log, inspect monitor, disk files by node. */
export interface QemuOfVm {
  pid: number;
  serialPath: string;
  inspectPath: string;
  /** Local disk files, by disk node (`disk0`, …). */
  files: Map<string, string>;
}

export function qemuOfVm(server: TestbedServer, vmId: string): QemuOfVm | null {
  for (const pid of qemuOn(server)) {
    let args: string[];
    try {
      args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (args[args.indexOf('-name') + 1] !== vmId) continue;
    const serial = args[args.indexOf('-serial') + 1]!.replace(/^file:/, '');
    const inspect = args
      .find((a) => a.includes('inspect.sock'))!
      .replace(/^unix:/, '')
      .split(',')[0]!;
    const files = new Map<string, string>();
    args.forEach((a, i) => {
      if (args[i - 1] !== '-blockdev') return;
      const b = JSON.parse(a) as { driver: string; filename?: string; 'node-name': string };
      if (b.driver === 'file' && b.filename) files.set(b['node-name'].replace(/-proto$/, ''), b.filename);
    });
    return { pid, serialPath: serial, inspectPath: inspect, files };
  }
  return null;
}

/** What a QEMU has of migration plumbing left: block jobs, NBD exports, mirror-target nodes (all [] when clean). */
export async function blockLeftovers(q: QemuOfVm): Promise<{ jobs: string[]; exports: string[]; mirrorNodes: string[] }> {
  const qmp = await QmpClient.connect({ socketPath: q.inspectPath, connectTimeoutMs: 5_000, logger: createLogger('inspect', 'warn') });
  try {
    const jobs = (await qmp.execute<Array<{ device: string }>>('query-block-jobs')).map((j) => j.device);
    const exports = (await qmp.execute<Array<{ id: string }>>('query-block-exports')).map((e) => e.id);
    const nodes = (await qmp.execute<Array<{ 'node-name': string }>>('query-named-block-nodes')).map((n) => n['node-name']);
    return { jobs, exports, mirrorNodes: nodes.filter((n) => n.startsWith('mirror-target')) };
  } finally {
    qmp.close();
  }
}

/** sha256 of a file's byte range (the host's fill at the end of a local disk). */
export function rangeHash(file: string, from: number, to: number): string {
  const fd = fs.openSync(file, 'r');
  const h = createHash('sha256');
  const buf = Buffer.alloc(4 << 20);
  try {
    for (let off = from; off < to;) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, to - off), off);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
      off += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Runs a command in a testbed agent's mount namespace (a mount the agent and its QEMUs see; the root namespace does not). */
export function inAgentMounts(server: TestbedServer, cmd: string[]): Promise<string> {
  return run('nsenter', ['--mount', `--target=${server.agentPid}`, '--', ...cmd]);
}

import type { ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { GUEST_SERVICE_PORT } from '../qemu/guest-nic';
import { spawnInTestbed, type TestbedState } from './testbed';

/**
 * The tenant's view of a migration: from the testbed's `tenant` namespace, one TCP connection per VM to its counter
 * service, a request every 10 ms while fewer than 4 are unanswered (a client waits for its answers; it does not
 * pile requests onto a slow server). Per VM it counts requests answered and failed, reconnects, the longest stall (the
 * longest time with a request outstanding and no answer) and whether the guest's counter only ever went on.
 *
 * `runTenantClient` is the process inside the namespace (`dhm testbed tenant-client`): commands on stdin, one JSON
 * line per command on stdout. `startTenantClient` starts and drives it from the control plane's side.
 */

export interface VmTraffic {
  vmId: string;
  ip: string;
  requestsDone: number;
  requestsFailed: number;
  reconnects: number;
  clientMaxStallMs: number;
  /** The counter never went backwards (no reboot, no second copy answering). */
  counterContinued: boolean;
  firstCounter: number | null;
  lastCounter: number | null;
  connected: boolean;
  /** Requests answered out of order (TCP would never do this; a second copy answering would). */
  outOfOrder: number;
  /** The first few times the counter went backwards ("<before> -> <after>"): empty while counterContinued. */
  backwards: string[];
  errors: string[];
}

const INTERVAL_MS = 10;
/**
 * Requests in flight at most. Sending open-loop (one every 10 ms whatever the answers) made a guest that answers
 * more slowly than 100/s during a move (a TCG vCPU on a loaded machine) fall behind without bound: its answers kept
 * coming (stalls of 1-2.6 s) but the queue grew past the 10 s timeout, which then counted every queued request
 * failed (testbed disks test: "no answer for 10000 ms" with clientMaxStallMs 1025-2583, even for a VM that never
 * moved). Bounded, a request fails only when the guest does not answer for 10 s.
 */
const MAX_IN_FLIGHT = 4;
/** A request without an answer for this long counts as failed and the connection is dropped (and re-made). */
const REQUEST_TIMEOUT_MS = 10_000;

class VmConnection {
  readonly t: VmTraffic;
  private sock: net.Socket | null = null;
  private seq = 0;
  private readonly outstanding = new Map<number, number>();
  private lastAnswerAt = 0;
  private buf = '';
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private everConnected = false;

  constructor(vmId: string, ip: string) {
    this.t = {
      vmId,
      ip,
      requestsDone: 0,
      requestsFailed: 0,
      reconnects: 0,
      clientMaxStallMs: 0,
      counterContinued: true,
      firstCounter: null,
      lastCounter: null,
      connected: false,
      outOfOrder: 0,
      backwards: [],
      errors: [],
    };
    this.connect();
    this.timer = setInterval(() => this.tick(), INTERVAL_MS);
  }

  private connect(): void {
    if (this.stopped) return;
    const sock = net.connect({ host: this.t.ip, port: GUEST_SERVICE_PORT });
    sock.setNoDelay(true);
    sock.setEncoding('latin1');
    sock.on('connect', () => {
      if (this.everConnected) this.t.reconnects++;
      this.everConnected = true;
      this.t.connected = true;
      this.lastAnswerAt = Date.now();
    });
    sock.on('data', (d: string) => this.onData(d));
    const lost = (why: string) => {
      if (this.sock !== sock) return;
      this.sock = null;
      this.t.connected = false;
      if (this.everConnected) {
        this.t.requestsFailed += this.outstanding.size;
        if (this.t.errors.length < 10) this.t.errors.push(`${new Date().toISOString()} ${why}`);
      }
      this.outstanding.clear();
      if (!this.stopped) setTimeout(() => this.connect(), this.everConnected ? 50 : 200); // retry pacing
    };
    sock.on('error', (err) => lost(err.message));
    sock.on('close', () => lost('connection closed'));
    this.sock = sock;
  }

  private tick(): void {
    const now = Date.now();
    if (this.outstanding.size > 0) this.t.clientMaxStallMs = Math.max(this.t.clientMaxStallMs, now - this.lastAnswerAt);
    const oldest = this.outstanding.values().next().value;
    if (oldest !== undefined && now - oldest > REQUEST_TIMEOUT_MS) {
      this.sock?.destroy(new Error(`no answer for ${REQUEST_TIMEOUT_MS} ms`));
      return;
    }
    if (!this.sock || !this.t.connected || this.outstanding.size >= MAX_IN_FLIGHT) return;
    const n = ++this.seq;
    if (this.outstanding.size === 0) this.lastAnswerAt = now; // a stall is measured from the first unanswered request
    this.outstanding.set(n, now);
    this.sock.write(`${n}\n`);
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      const m = /^(\d+) (\d+)$/.exec(line);
      if (!m) continue;
      const n = Number(m[1]);
      const counter = Number(m[2]);
      if (!this.outstanding.has(n)) continue;
      if (this.outstanding.keys().next().value !== n) this.t.outOfOrder++;
      this.outstanding.delete(n);
      const now = Date.now();
      this.t.clientMaxStallMs = Math.max(this.t.clientMaxStallMs, now - this.lastAnswerAt);
      this.lastAnswerAt = now;
      this.t.requestsDone++;
      if (this.t.lastCounter !== null && counter < this.t.lastCounter) {
        this.t.counterContinued = false;
        if (this.t.backwards.length < 5) this.t.backwards.push(`${this.t.lastCounter} -> ${counter} (${line})`);
      }
      this.t.firstCounter ??= counter;
      this.t.lastCounter = counter;
    }
  }

  /** The tenant stops using the VM: what is still outstanding is abandoned, not failed. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    const sock = this.sock;
    this.sock = null;
    this.outstanding.clear();
    sock?.destroy();
  }
}

type Command = { cmd: 'add'; vmId: string; ip: string } | { cmd: 'remove'; vmId: string } | { cmd: 'stats' } | { cmd: 'stop' };

/** The process in the tenant namespace. */
export function runTenantClient(): void {
  const conns = new Map<string, VmConnection>();
  const removed: VmTraffic[] = [];
  const stats = () => ({ vms: [...[...conns.values()].map((c) => c.t), ...removed] });
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const c = JSON.parse(line) as Command;
    if (c.cmd === 'add') {
      if (!conns.has(c.vmId)) conns.set(c.vmId, new VmConnection(c.vmId, c.ip));
      process.stdout.write(`${JSON.stringify({ ok: true })}\n`);
    } else if (c.cmd === 'remove') {
      const conn = conns.get(c.vmId);
      if (conn) {
        conn.stop();
        conns.delete(c.vmId);
        removed.push(conn.t);
      }
      process.stdout.write(`${JSON.stringify({ ok: true })}\n`);
    } else if (c.cmd === 'stats') {
      process.stdout.write(`${JSON.stringify(stats())}\n`);
    } else {
      for (const conn of conns.values()) conn.stop();
      process.stdout.write(`${JSON.stringify(stats())}\n`);
      process.exit(0);
    }
  });
  rl.on('close', () => process.exit(0));
}

export interface TenantClient {
  add(vmId: string, ip: string): Promise<void>;
  /** Stops holding a VM's connection (it is being deleted); its figures stay in the stats. */
  remove(vmId: string): Promise<void>;
  stats(): Promise<VmTraffic[]>;
  stop(): Promise<VmTraffic[]>;
}

/** Starts the tenant client in the testbed's tenant namespace. */
export function startTenantClient(st: TestbedState): TenantClient {
  const bin = path.resolve(__dirname, '..', '..', 'bin', 'dhm.js');
  const child: ChildProcess = spawnInTestbed(
    st,
    st.tenantNamespace,
    'tenant client',
    [process.execPath, bin, 'testbed', 'tenant-client', '--testbed', st.dir],
    st.dir,
  );
  const waiting: Array<(line: string) => void> = [];
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr = (stderr + String(d)).slice(-2000)));
  createInterface({ input: child.stdout! }).on('line', (line) => waiting.shift()?.(line));
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  const call = (c: Command) =>
    new Promise<string>((resolve, reject) => {
      if (child.exitCode !== null) return reject(new Error(`the tenant client exited: ${stderr}`));
      waiting.push(resolve);
      child.stdin!.write(`${JSON.stringify(c)}\n`);
      void exited.then(() => reject(new Error(`the tenant client exited: ${stderr}`)));
    });
  return {
    async add(vmId, ip) {
      await call({ cmd: 'add', vmId, ip });
    },
    async remove(vmId) {
      await call({ cmd: 'remove', vmId });
    },
    async stats() {
      return (JSON.parse(await call({ cmd: 'stats' })) as { vms: VmTraffic[] }).vms;
    },
    async stop() {
      const out = (JSON.parse(await call({ cmd: 'stop' })) as { vms: VmTraffic[] }).vms;
      await exited;
      return out;
    },
  };
}

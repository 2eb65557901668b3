import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { diskArgs, type MachineDisk } from './disks';
import { nicArgs, TENANT_PREFIX_LENGTH, type GuestNic } from './guest-nic';
import { QmpClient } from './qmp';
import { copyTlsForQemu, type QemuUser } from './qemu-user';
import type { QemuTools } from './tools';

/** What decides a VM's QEMU command line. Both ends of a migration derive their arguments from the same value. */
export interface MachineSpec {
  memoryMiB: number;
  vcpus: number;
  /** Size of the guest's continuously rewritten tmpfs buffer (0 = no dirtier). */
  dirtyMiB: number;
  /** At most this many MiB/s (0 = as fast as the vCPU can). */
  dirtyRateMiBps: number;
  /** A virtio-net NIC on the tenant network (agents with a tenant bridge); none otherwise. */
  nic?: GuestNic;
  /** Written into guest memory by its /init (wire-capture tests look for it). */
  marker?: string;
  /** Its disks, in device order (local files, network volumes); the guest writes numbered blocks to each. */
  disks?: MachineDisk[];
  /** The guest's numbered blocks stop before this block (the host filled the rest of the local disks). */
  diskBlocks?: number;
  /** Client credentials for the storage service (network disks over NBD with TLS): a credential folder. */
  storageTlsDir?: string;
}

/** The id of the storage service's client credentials object on the command line. */
export const STORAGE_TLS_ID = 'storage-tls';

/** Machine arguments, identical on source and destination (a mismatch makes the destination exit). */
export function machineArgs(tools: QemuTools, m: MachineSpec): string[] {
  // init_on_free: pages the guest frees are zero, which QEMU sends as a flag (a 128 MiB guest: ~50 MB instead of ~90).
  // no_timer_check: on a loaded host a TCG guest's boot-time IO-APIC timer check can fail and panic the kernel
  // ("IO-APIC + timer doesn't work!"), seen with three guests booting at once at load 13 on 2 cores.
  const append = ['console=ttyS0', 'quiet', 'panic=-1', 'init_on_free=1', 'no_timer_check'];
  if (m.dirtyMiB > 0) append.push(`dhm.dirty_mib=${m.dirtyMiB}`, `dhm.dirty_rate_mibps=${m.dirtyRateMiBps}`);
  if (m.nic) append.push(`dhm.ip=${m.nic.ip}/${TENANT_PREFIX_LENGTH}`);
  if (m.marker) append.push(`dhm.marker=${m.marker}`);
  const disks = m.disks ?? [];
  if (disks.length) append.push(`dhm.disks=${disks.length}`, `dhm.disk_blocks=${m.diskBlocks ?? 0}`);
  return [
    ...tools.dataDirs.flatMap((d) => ['-L', d]),
    // TCG always: /dev/kvm may exist on these machines without being usable.
    '-machine',
    'q35,accel=tcg',
    '-m',
    String(m.memoryMiB),
    '-smp',
    String(m.vcpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    // A guest that panics or reboots makes QEMU exit (the VM is reported failed) instead of restarting its counter.
    '-no-reboot',
    '-kernel',
    tools.kernel,
    '-initrd',
    tools.initrd,
    '-append',
    append.join(' '),
    ...(m.nic ? nicArgs(m.nic) : []),
    ...(m.storageTlsDir ? ['-object', `tls-creds-x509,id=${STORAGE_TLS_ID},dir=${m.storageTlsDir},endpoint=client,verify-peer=on`] : []),
    ...disks.flatMap(diskArgs),
  ];
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last lines QEMU wrote to stderr, for the failure message. */
  stderr: string;
}

/** `setpriv --pdeathsig` kills QEMU if the agent's process dies without stopping it (a crash, SIGKILL). */
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p));
const STDERR_KEEP = 4096;

export const QEMU_SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';

/**
 * QEMU's whole environment: where its libraries and modules are, and a PATH for the tools' wrapper script. Nothing of
 * the agent's (its settings, credentials' paths, tokens a caller exported) reaches the process a guest runs in.
 */
export function qemuEnv(tools: QemuTools): NodeJS.ProcessEnv {
  return {
    PATH: '/usr/local/bin:/usr/bin:/bin',
    LD_LIBRARY_PATH: tools.libraryPath.join(':'),
    QEMU_MODULE_DIR: tools.moduleDir,
  };
}

/**
 * One QEMU process: a VM, or the destination of an incoming migration (`incoming`). Its QMP socket and serial
 * log live in `dir`. The caller tracks it and must `stop()` it; `exited` resolves however it ends.
 */
export class QemuProcess {
  readonly qmpPath: string;
  /** A second QMP monitor, for looking from outside (tests, operators: block jobs, NBD exports); the agent uses `qmpPath`. */
  readonly inspectPath: string;
  readonly serialPath: string;
  readonly pid: number;
  /** The credentials folder this QEMU reads (tls-creds-x509 `dir`): its own copy when it runs as another user. */
  readonly tlsDir: string | null;
  readonly exited: Promise<ExitInfo>;
  exitInfo: ExitInfo | null = null;
  private readonly child: ChildProcess;
  private stderr = '';
  private qmpPromise: Promise<QmpClient> | null = null;
  private readonly exitAbort = new AbortController();
  private readonly log: Logger;
  private readonly qmpConnectTimeoutMs: number;

  constructor(opts: {
    tools: QemuTools;
    dir: string;
    machine: MachineSpec;
    incoming: boolean;
    logger: Logger;
    name: string;
    /** Run QEMU as this user (the agent is root); unset: as the agent's user. */
    user?: QemuUser | null;
    /** This server's credentials (migration and storage TLS); copied for `user` into `<dir>/tls`. */
    tlsDir?: string;
    /** How long QMP may take to come up (a destination: the agent's `qemu.listenWaitMs`). Default 15 s. */
    qmpConnectTimeoutMs?: number;
  }) {
    this.qmpConnectTimeoutMs = opts.qmpConnectTimeoutMs ?? 15_000;
    fs.mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
    const user = opts.user ?? null;
    if (user) fs.chownSync(opts.dir, user.uid, user.gid);
    this.tlsDir = opts.tlsDir ? (user ? copyTlsForQemu(opts.tlsDir, path.join(opts.dir, 'tls'), user) : opts.tlsDir) : null;
    const machine = opts.machine.storageTlsDir && this.tlsDir ? { ...opts.machine, storageTlsDir: this.tlsDir } : opts.machine;
    this.qmpPath = path.join(opts.dir, 'qmp.sock');
    this.inspectPath = path.join(opts.dir, 'inspect.sock');
    this.serialPath = path.join(opts.dir, 'serial.log');
    for (const f of [this.qmpPath, this.inspectPath, this.serialPath]) fs.rmSync(f, { force: true });
    const args = [
      ...machineArgs(opts.tools, machine),
      '-name',
      opts.name,
      '-qmp',
      `unix:${this.qmpPath},server=on,wait=off`,
      '-qmp',
      `unix:${this.inspectPath},server=on,wait=off`,
      '-serial',
      `file:${this.serialPath}`,
      ...(opts.incoming ? ['-incoming', 'defer'] : []),
      // QEMU's own seccomp filter: no obsolete syscalls, no setuid/setgid, no fork/exec, no scheduler/affinity changes.
      '-sandbox',
      QEMU_SANDBOX,
    ];
    const [cmd, ...argv] = SETPRIV ? [SETPRIV, '--pdeathsig', 'KILL', '--', opts.tools.qemuBinary, ...args] : [opts.tools.qemuBinary, ...args];
    this.child = spawn(cmd!, argv, {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: qemuEnv(opts.tools),
      // Set before exec (and before setpriv sets the parent-death signal, which a credential change would clear).
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
    });
    this.pid = this.child.pid ?? -1;
    this.log = opts.logger.child({ pid: this.pid, qemu: opts.name });
    this.child.stderr!.setEncoding('utf8');
    this.child.stderr!.on('data', (s: string) => {
      this.stderr = (this.stderr + s).slice(-STDERR_KEEP);
    });
    this.exited = new Promise<ExitInfo>((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.exitInfo) return;
        this.exitInfo = { code, signal, stderr: this.stderr.trim() };
        // The copy of the server's keys lives only as long as the process that reads it.
        if (user && this.tlsDir) fs.rmSync(this.tlsDir, { recursive: true, force: true });
        this.exitAbort.abort(new Error(`QEMU exited (${describeExit(this.exitInfo)})`));
        resolve(this.exitInfo);
      };
      // 'close' (not 'exit'): stderr has been read to the end, so the failure message is complete.
      this.child.on('close', done);
      this.child.on('error', (err) => {
        this.stderr += `\n${err.message}`;
        done(null, null);
      });
    });
    this.log.debug({ incoming: opts.incoming, machine: opts.machine }, 'QEMU started');
  }

  get running(): boolean {
    return this.exitInfo === null;
  }

  /** The QMP connection, made once; waits while the socket appears and fails at once if QEMU exits meanwhile. */
  qmp(): Promise<QmpClient> {
    this.qmpPromise ??= QmpClient.connect({
      socketPath: this.qmpPath,
      connectTimeoutMs: this.qmpConnectTimeoutMs,
      signal: this.exitAbort.signal,
      logger: this.log,
      oob: true,
    }).then((client) => {
      if (!this.running) client.close();
      return client;
    });
    return this.qmpPromise;
  }

  /** Stops the process and waits for it: `quit` over QMP if connected, SIGKILL after `graceMs` (or at once if 0). */
  async stop(graceMs = 2_000): Promise<ExitInfo> {
    if (this.exitInfo) return this.exitInfo;
    if (graceMs > 0) {
      const client = this.qmpPromise ? await this.qmpPromise.catch(() => null) : null;
      if (client && !client.closed) await client.execute('quit', undefined, { timeoutMs: graceMs }).catch(() => undefined);
      else this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      try {
        return await this.exited;
      } finally {
        clearTimeout(timer);
      }
    }
    this.child.kill('SIGKILL');
    return this.exited;
  }

  /** The last complete counter line in the serial log, or null before the guest printed one. */
  readCounter(): number | null {
    return lastCounter(this.serialPath);
  }
}

export function describeExit(e: ExitInfo): string {
  const how = e.signal ? `signal ${e.signal}` : `code ${e.code}`;
  return e.stderr ? `${how}: ${e.stderr.split('\n').slice(-3).join(' | ')}` : how;
}

const TAIL_BYTES = 4096;
const COUNTER_LINE = /dhm-counter (\d+)\r?\n/g;

/** Reads only the tail of the log: it grows by ~30 bytes a second for as long as the VM runs. */
export function lastCounter(serialPath: string): number | null {
  let fd: number;
  try {
    fd = fs.openSync(serialPath, 'r');
  } catch {
    return null;
  }
  try {
    const size = fs.fstatSync(fd).size;
    const len = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(len);
    fs.readSync(fd, buf, 0, len, size - len);
    let last: number | null = null;
    for (const m of buf.toString('latin1').matchAll(COUNTER_LINE)) last = Number(m[1]);
    return last;
  } finally {
    fs.closeSync(fd);
  }
}

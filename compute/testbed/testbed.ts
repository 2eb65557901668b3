import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { z } from 'zod';
import { UserFacingError } from '../../common/errors';
import type { Fleet, FleetServer } from '../../common/fleet';
import type { Logger } from '../../common/logger';
import { CONTROL_PLANE_CN } from '../agent-tls';
import { ensureFleetCa, issueClientCreds, issueServerCreds, type FleetCa } from '../fleet-ca';
import { TENANT_MTU } from '../qemu/guest-nic';
import { loadQemuTools } from '../qemu/tools';
import { STORAGE_NAME, STORAGE_NBD_PORT, storageDaemonArgs, waitStorageReady, type StorageService } from './storage';
import { bridgeIn, deleteNamespace, inNs, ipIn, linkExists, listNamespaces, run, tcIn } from './net';
import type { TestbedAgentConfig } from './agent-main';

/**
 * A testbed of real (namespaced) servers on this machine. Each server is a network namespace with a veth into a
 * fabric bridge (in its own namespace), an address 198.18.<slot>.<i>/24, its egress shaped with tc htb to its NIC
 * bandwidth, a tenant bridge joined to the other servers' over VXLAN, a private folder, and its host agent (qemu
 * backend) running inside it, bound to its fabric address. A `tenant` namespace sits on the tenant network
 * (198.19.0.0/16, VXLAN), and the root namespace gets a veth into the fabric so the control plane reaches the agents.
 *
 * Everything is named `dhmtb-<name>-…` (namespaces) or `dtb<name>` (the root veth) and recorded in a state file
 * with the agents' pids, so `down` (or an `up` of the same name after a crash) removes every namespace, veth,
 * bridge, qdisc, process and file. Deleting a namespace removes its veths, bridges, taps, VXLAN devices and qdiscs.
 */

const NS_PREFIX = 'dhmtb-';
/** 198.18.<slot>.0/24 per testbed: the fabric of two testbeds never overlaps in the root namespace's routes. */
const MAX_SLOT = 254;
/** .1 – .250 servers, .252 the storage service, .253 tenant, .254 the root namespace (the control plane). */
export const MAX_SERVERS = 250;
const STORAGE_HOST = 252;
const TENANT_HOST = 253;
const ROOT_HOST = 254;
/** What one server costs this machine besides its VMs: its agent process (Node) and the guest QEMUs' overhead. */
const PER_SERVER_MIB = 192;
const VXLAN_ID = 100;
const VXLAN_PORT = 4789;
export const TENANT_BRIDGE = 'brt';
/** The tenant client's address on the tenant network; servers' bridges get 198.19.255.<i>. */
export const TENANT_CLIENT_IP = '198.19.255.254';
const SLOT_DIR = '/run/dhm-testbed';
const AGENT_READY_MS = 90_000;
const PROJECT_ROOT = path.resolve(__dirname, '..', '..');
const DHM_BIN = path.join(PROJECT_ROOT, 'bin', 'dhm.js');

export const testbedOptionsSchema = z
  .object({
    /** Unique per testbed on this machine: names and folders derive from it. */
    name: z.string().regex(/^[a-z0-9]{1,10}$/, 'lowercase letters and digits, at most 10'),
    /** Where its folder goes (`<root>/<name>`): DHM_HOME/testbed for `dhm testbed`, a temporary folder in tests. */
    root: z.string().min(1),
    servers: z.number().int().min(1),
    /** Bits/s each server's egress is shaped to; the fleet's nicBandwidthBps is set to it (the model's B is the testbed's). */
    nicBandwidthBps: z.number().min(1e6).max(4e9).default(300e6),
    capacity: z
      .object({ vcpus: z.number().int().positive(), memoryMiB: z.number().int().positive(), diskGiB: z.number().int().positive() })
      .default({ vcpus: 4, memoryMiB: 1024, diskGiB: 20 }),
    transport: z.enum(['tls', 'insecure']).default('tls'),
    toolsDir: z.string().min(1).optional(),
    /** Agents die with this process (tests); `dhm testbed up` leaves them running until `down`. */
    attached: z.boolean().default(true),
    logLevel: z.string().default('warn'),
    /** The agents give a migration up after this long without a byte sent (a partition). */
    stallTimeoutMs: z.number().int().min(1_000).default(8_000),
    /** MiB of random data at the end of every new local disk (what a mirror has to send besides the guest's blocks). */
    diskFillMiB: z.number().int().min(0).max(4096).default(0),
    /** The agents' fault-injection routes (tests that inject faults); off by default, as in production. */
    faultRoutes: z.boolean().default(false),
  })
  .strict();
export type TestbedOptions = z.input<typeof testbedOptionsSchema>;

export interface TestbedServer {
  id: string;
  index: number;
  namespace: string;
  fabricIp: string;
  /** The server's own address on the tenant network (its bridge): where the agent's probe comes from. */
  tenantIp: string;
  dir: string;
  agentUrl: string;
  agentPid: number;
  credsDir: string;
  /** Its local storage (one raw file per local disk): `<dir>/disks`, 0700. */
  storageDir: string;
}

export interface TestbedState {
  name: string;
  dir: string;
  slot: number;
  fabricNamespace: string;
  tenantNamespace: string;
  rootVeth: string;
  rootIp: string;
  tenantFabricIp: string;
  namespaces: string[];
  nicBandwidthBps: number;
  transport: 'tls' | 'insecure';
  caCert: string;
  /** The control plane's agent-plane client certificate (issued by the testbed's CA): what the root namespace calls agents with. */
  controlPlaneDir: string;
  servers: TestbedServer[];
  /** The storage service (network disks): qemu-storage-daemon in its own namespace on the fabric. */
  storage: StorageService;
  fleet: Fleet;
  /** Every process the testbed started (agents, tenant clients, captures), with a string their command line holds. */
  pids: Array<{ pid: number; role: string; match: string }>;
}

export const testbedDir = (root: string, name: string) => path.join(root, name);
const stateFile = (dir: string) => path.join(dir, 'state.json');
const nsName = (name: string, part: string) => `${NS_PREFIX}${name}-${part}`;
export const serverId = (i: number) => `tb-${i}`;

/** Refuses, in one line naming the field, a testbed this machine or the address range cannot hold. */
export function checkTestbedSize(servers: number): void {
  if (servers > MAX_SERVERS) throw new UserFacingError(`servers: at most ${MAX_SERVERS} (a testbed's fabric is one 198.18.x.0/24), got ${servers}`, 'servers');
  const freeMiB = Math.floor(os.freemem() / 2 ** 20);
  const fits = Math.floor(freeMiB / PER_SERVER_MIB);
  if (servers > fits)
    throw new UserFacingError(
      `servers: this machine has ${freeMiB} MiB free, room for ${fits} servers at ${PER_SERVER_MIB} MiB each, got ${servers}`,
      'servers',
    );
}

/** Root and the commands the testbed runs, checked before anything is made. */
function checkHostTools(): void {
  if (process.getuid?.() !== 0) throw new UserFacingError('testbed: needs root (it makes network namespaces, veths, bridges and qdiscs)', 'testbed');
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/bin', '/bin']);
  for (const cmd of ['ip', 'tc', 'bridge', 'setpriv', 'openssl'])
    if (!dirs.some((d) => fs.existsSync(path.join(d, cmd))))
      throw new UserFacingError(`testbed: the \`${cmd}\` command is missing (Debian: apt-get install iproute2 util-linux openssl)`, 'testbed');
}

/** The fleet the testbed runs: one zone, one class, every server a qemu server with the shaped NIC. */
export function testbedFleet(o: {
  servers: number;
  nicBandwidthBps: number;
  capacity: FleetServer['capacity'];
  transport: 'tls' | 'insecure';
  storageIp?: string;
}): Fleet {
  return {
    ...(o.storageIp ? { storage: { nbd: { host: o.storageIp, port: STORAGE_NBD_PORT, serverName: STORAGE_NAME } } } : {}),
    zones: ['tb-zone'],
    resourceClasses: { 'tb-small': o.capacity },
    servers: Array.from({ length: o.servers }, (_, k) => ({
      id: serverId(k + 1),
      zone: 'tb-zone',
      resourceClass: 'tb-small',
      capacity: o.capacity,
      nicBandwidthBps: o.nicBandwidthBps,
      agentPort: 0,
      backend: 'qemu' as const,
    })),
    migration: { transport: o.transport },
  };
}

/** Makes the testbed; whatever it made is removed again if a step fails. A leftover of the same name goes first. */
export async function upTestbed(input: TestbedOptions, logger: Logger): Promise<TestbedState> {
  const parsed = testbedOptionsSchema.safeParse(input);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new UserFacingError(`${i.path.join('.')}: ${i.message}`, i.path.join('.'));
  }
  const o = parsed.data;
  checkTestbedSize(o.servers);
  checkHostTools();
  const dir = testbedDir(o.root, o.name);
  await downTestbed(dir, logger, o.name); // a crash left it behind: start clean
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const slot = claimSlot(dir);
  const net = `198.18.${slot}`;
  const tools = loadQemuTools(o.toolsDir);
  const storageDir = path.join(dir, 'storage');
  const state: TestbedState = {
    name: o.name,
    dir,
    slot,
    fabricNamespace: nsName(o.name, 'fabric'),
    tenantNamespace: nsName(o.name, 'tenant'),
    rootVeth: `dtb${o.name}`,
    rootIp: `${net}.${ROOT_HOST}`,
    tenantFabricIp: `${net}.${TENANT_HOST}`,
    namespaces: [],
    nicBandwidthBps: o.nicBandwidthBps,
    transport: o.transport,
    caCert: '',
    controlPlaneDir: path.join(dir, 'pki', 'control-plane'),
    servers: [],
    storage: {
      namespace: nsName(o.name, 'storage'),
      ip: `${net}.${STORAGE_HOST}`,
      port: STORAGE_NBD_PORT,
      serverName: STORAGE_NAME,
      dir: storageDir,
      qmpPath: path.join(storageDir, 'qmp.sock'),
      credsDir: path.join(dir, 'pki', STORAGE_NAME),
    },
    fleet: testbedFleet({ ...o, storageIp: `${net}.${STORAGE_HOST}` }),
    pids: [],
  };
  const save = () => fs.writeFileSync(stateFile(dir), JSON.stringify(state, null, 2), { mode: 0o600 });
  // Recorded before anything is made, so a crash at any step leaves a state `down` can clean.
  state.namespaces = [
    state.fabricNamespace,
    state.tenantNamespace,
    state.storage.namespace,
    ...Array.from({ length: o.servers }, (_, k) => nsName(o.name, `s${k + 1}`)),
  ];
  save();
  try {
    const t0 = Date.now();
    await makeFabric(state);
    const vteps = [...Array.from({ length: o.servers }, (_, k) => `${net}.${k + 1}`), state.tenantFabricIp];
    for (let i = 1; i <= o.servers; i++) {
      state.servers.push(await makeServer(state, i, vteps, o.nicBandwidthBps));
      save();
    }
    await makeTenant(state, vteps);
    logger.info({ testbed: o.name, servers: o.servers, ms: Date.now() - t0 }, 'testbed network made');

    const ca = await ensureFleetCa(path.join(dir, 'pki', 'ca'), `dhm testbed ${o.name} CA`);
    state.caCert = ca.certPath;
    for (const s of state.servers) await issueServerCreds(ca, s.id, [s.fabricIp], s.credsDir);
    await issueClientCreds(ca, CONTROL_PLANE_CN, state.controlPlaneDir);
    save();
    await startStorage(state, tools, o.transport === 'tls' ? ca : null, o.attached, logger);
    if (o.transport === 'insecure') logger.warn({ testbed: o.name }, 'migration.transport is insecure: VM memory crosses the fabric in plaintext');

    // Agents start in parallel: each is a Node process that needs a second or two of CPU to load.
    const peers = state.servers.map((s) => s.id);
    await Promise.all(
      state.servers.map(async (s) => {
        const { pid, url } = await startAgentIn(state, s, peers, o, logger);
        s.agentPid = pid;
        s.agentUrl = url;
      }),
    );
    save();
    logger.info({ testbed: o.name, agents: state.servers.map((s) => s.agentUrl), ms: Date.now() - t0 }, 'testbed up');
    return state;
  } catch (err) {
    save();
    await downTestbed(dir, logger).catch(() => undefined);
    throw err;
  }
}

async function makeFabric(st: TestbedState): Promise<void> {
  await run('ip', ['netns', 'add', st.fabricNamespace]);
  await ipIn(st.fabricNamespace, 'link', 'add', 'br0', 'type', 'bridge');
  await ipIn(st.fabricNamespace, 'link', 'set', 'br0', 'up');
  // The root namespace's leg: the control plane reaches the agents through it.
  if (await linkExists(st.rootVeth)) await run('ip', ['link', 'del', st.rootVeth]);
  await run('ip', ['link', 'add', st.rootVeth, 'type', 'veth', 'peer', 'name', 'root', 'netns', st.fabricNamespace]);
  await ipIn(st.fabricNamespace, 'link', 'set', 'root', 'master', 'br0', 'up');
  await run('ip', ['addr', 'add', `${st.rootIp}/24`, 'dev', st.rootVeth]);
  await run('ip', ['link', 'set', st.rootVeth, 'up']);
}

async function attachToFabric(st: TestbedState, ns: string, port: string, ip: string): Promise<void> {
  await run('ip', ['netns', 'add', ns]);
  await ipIn(ns, 'link', 'set', 'lo', 'up');
  await ipIn(ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', port, 'netns', st.fabricNamespace);
  await ipIn(st.fabricNamespace, 'link', 'set', port, 'master', 'br0', 'up');
  await ipIn(ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0');
  await ipIn(ns, 'link', 'set', 'eth0', 'up');
}

/** The tenant L2 segment over the fabric: one VNI, head-end replication to every other VTEP. */
async function vxlan(ns: string, local: string, vteps: string[]): Promise<void> {
  await ipIn(ns, 'link', 'add', 'vx0', 'type', 'vxlan', 'id', String(VXLAN_ID), 'local', local, 'dev', 'eth0', 'dstport', String(VXLAN_PORT));
  for (const v of vteps) if (v !== local) await bridgeIn(ns, 'fdb', 'append', '00:00:00:00:00:00', 'dev', 'vx0', 'dst', v);
}

async function makeServer(st: TestbedState, i: number, vteps: string[], nicBps: number): Promise<TestbedServer> {
  const ns = nsName(st.name, `s${i}`);
  const fabricIp = `198.18.${st.slot}.${i}`;
  await attachToFabric(st, ns, `s${i}`, fabricIp);
  // Egress only: it is the direction a migration leaves a server in.
  await tcIn(ns, 'qdisc', 'add', 'dev', 'eth0', 'root', 'handle', '1:', 'htb', 'default', '10');
  await tcIn(
    ns,
    'class',
    'add',
    'dev',
    'eth0',
    'parent',
    '1:',
    'classid',
    '1:10',
    'htb',
    'rate',
    `${Math.round(nicBps)}bit`,
    'ceil',
    `${Math.round(nicBps)}bit`,
  );
  await vxlan(ns, fabricIp, vteps);
  await ipIn(ns, 'link', 'add', TENANT_BRIDGE, 'type', 'bridge');
  await ipIn(ns, 'link', 'set', 'vx0', 'master', TENANT_BRIDGE, 'mtu', String(TENANT_MTU), 'up');
  await ipIn(ns, 'link', 'set', TENANT_BRIDGE, 'mtu', String(TENANT_MTU), 'up');
  const tenantIp = `198.19.255.${i}`;
  await ipIn(ns, 'addr', 'add', `${tenantIp}/16`, 'dev', TENANT_BRIDGE);
  const id = serverId(i);
  const dir = path.join(st.dir, 'servers', id);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const storageDir = path.join(dir, 'disks');
  fs.mkdirSync(storageDir, { recursive: true, mode: 0o700 });
  return { id, index: i, namespace: ns, fabricIp, tenantIp, dir, agentUrl: '', agentPid: 0, credsDir: path.join(st.dir, 'pki', id), storageDir };
}

/** The storage service: its own namespace on the fabric, its credentials, qemu-storage-daemon in it. */
async function startStorage(st: TestbedState, tools: ReturnType<typeof loadQemuTools>, ca: FleetCa | null, attached: boolean, logger: Logger): Promise<void> {
  const tls = ca !== null;
  const s = st.storage;
  await attachToFabric(st, s.namespace, 'storage', s.ip);
  fs.mkdirSync(path.join(s.dir, 'volumes'), { recursive: true, mode: 0o700 });
  if (ca) await issueServerCreds(ca, s.serverName, [s.ip], s.credsDir);
  const args = storageDaemonArgs(s, tools, { tls, clients: st.servers.map((x) => x.id) });
  // Like the agents: tied to this process only when attached (tests); `dhm testbed up` leaves it running until `down`
  // (pipes or a parent-death signal would keep the command from returning, or kill the service when it does).
  const logFile = path.join(s.dir, 'storage.log');
  const log = fs.openSync(logFile, 'a');
  const argv = ['netns', 'exec', s.namespace, ...args];
  const [cmd, cmdArgs] = attached ? ['setpriv', ['--pdeathsig', 'KILL', '--', 'ip', ...argv]] : ['ip', argv];
  const child = spawn(cmd as string, cmdArgs as string[], { stdio: ['ignore', log, log], detached: !attached });
  fs.closeSync(log);
  st.pids.push({ pid: child.pid!, role: 'storage service', match: s.dir });
  fs.writeFileSync(stateFile(st.dir), JSON.stringify(st, null, 2), { mode: 0o600 });
  if (!attached) child.unref();
  await waitStorageReady(s, logger, () => child.exitCode === null).catch((err: unknown) => {
    const tail = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').slice(-2000).trim() : '';
    throw new Error(`${(err as Error).message}: ${tail}`);
  });
}

async function makeTenant(st: TestbedState, vteps: string[]): Promise<void> {
  const ns = st.tenantNamespace;
  await attachToFabric(st, ns, 'tenant', st.tenantFabricIp);
  await vxlan(ns, st.tenantFabricIp, vteps);
  await ipIn(ns, 'link', 'set', 'vx0', 'mtu', String(TENANT_MTU), 'up');
  await ipIn(ns, 'addr', 'add', `${TENANT_CLIENT_IP}/16`, 'dev', 'vx0');
}

/** One line of the testbed: an agent started inside its server's namespace, bound to its fabric address. */
async function startAgentIn(
  st: TestbedState,
  s: TestbedServer,
  peers: string[],
  o: z.infer<typeof testbedOptionsSchema>,
  logger: Logger,
): Promise<{ pid: number; url: string }> {
  const fleetServer = st.fleet.servers.find((f) => f.id === s.id)!;
  const readyFile = path.join(s.dir, 'agent.ready');
  fs.rmSync(readyFile, { force: true });
  const config: TestbedAgentConfig = {
    readyFile,
    logLevel: o.logLevel,
    tlsDir: s.credsDir,
    faultRoutes: o.faultRoutes,
    agent: {
      serverId: s.id,
      capacity: fleetServer.capacity,
      nicBandwidthBps: fleetServer.nicBandwidthBps,
      host: s.fabricIp,
      port: 0,
      backend: 'qemu',
      qemu: {
        ...(o.toolsDir ? { toolsDir: o.toolsDir } : {}),
        stateDir: path.join(s.dir, 'agent'),
        migrationDir: path.join(s.dir, 'migrate'),
        maxVmMemoryMiB: Math.min(fleetServer.capacity.memoryMiB, 512),
        migrationHost: s.fabricIp,
        transport: o.transport,
        ...(o.transport === 'tls' ? { tlsDir: s.credsDir, fleetCaCert: st.caCert } : {}),
        tenantBridge: TENANT_BRIDGE,
        peers,
        stallTimeoutMs: o.stallTimeoutMs,
        storageDir: s.storageDir,
        diskFillMiB: o.diskFillMiB,
        networkStorage: { host: st.storage.ip, port: st.storage.port, serverName: st.storage.serverName },
      },
    },
  };
  const configFile = path.join(s.dir, 'agent.json');
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2), { mode: 0o600 });
  const log = fs.openSync(path.join(s.dir, 'agent.log'), 'a');
  const argv = ['netns', 'exec', s.namespace, process.execPath, DHM_BIN, 'testbed', 'agent', '--config', configFile];
  // Attached (tests): setpriv makes the kernel kill the agent if this process dies; the agent's QEMUs follow it.
  const [cmd, args] = o.attached ? ['setpriv', ['--pdeathsig', 'KILL', '--', 'ip', ...argv]] : ['ip', argv];
  const child = spawn(cmd as string, args as string[], { stdio: ['ignore', log, log], detached: !o.attached, env: agentEnv() });
  fs.closeSync(log);
  const pid = child.pid!;
  st.pids.push({ pid, role: `agent ${s.id}`, match: configFile });
  if (!o.attached) child.unref();
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + AGENT_READY_MS;
  for (;;) {
    if (fs.existsSync(readyFile)) {
      const ready = JSON.parse(fs.readFileSync(readyFile, 'utf8')) as { url: string };
      return { pid, url: ready.url };
    }
    const code = child.exitCode ?? (await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 100))])); // poll interval within the deadline
    if (code !== undefined && code !== null) {
      const tail = fs.readFileSync(path.join(s.dir, 'agent.log'), 'utf8').trim().split('\n').slice(-3).join(' | ');
      throw new Error(`the agent of ${s.id} exited (code ${code}) before it was ready: ${tail}`);
    }
    if (Date.now() > deadline) throw new Error(`the agent of ${s.id} was not ready within ${AGENT_READY_MS} ms`);
  }
  void logger;
}

/** The agent sees none of the caller's DHM_* settings (they would be refused or misapplied inside a server). */
function agentEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('DHM_') || k === 'DHM_TOOLS_DIR') env[k] = v;
  return env;
}

export function readTestbedState(dir: string): TestbedState | null {
  try {
    return JSON.parse(fs.readFileSync(stateFile(dir), 'utf8')) as TestbedState;
  } catch {
    return null;
  }
}

/**
 * Removes everything a testbed made: its processes (by pid, each checked against its command line first), their
 * children (QEMUs, whose command lines hold the testbed's folder), its namespaces (with their veths, bridges, taps,
 * VXLAN devices and qdiscs), the root veth, its slot, and its folder. Safe to repeat; `name` also catches namespaces
 * of a testbed whose state file was never written.
 */
export async function downTestbed(dir: string, logger: Logger, name?: string): Promise<{ removed: string[] }> {
  const st = readTestbedState(dir);
  const removed: string[] = [];
  const tbName = st?.name ?? name;
  for (const p of st?.pids ?? []) if (await killIfOurs(p.pid, p.match)) removed.push(`process ${p.pid} (${p.role})`);
  // Anything else still running from the testbed's folder (QEMUs of an agent that was SIGKILLed) goes too.
  for (const pid of processesUnder(dir)) if (await killIfOurs(pid, dir)) removed.push(`process ${pid}`);
  const namespaces = new Set(st?.namespaces ?? []);
  if (tbName) for (const ns of await listNamespaces()) if (ns.startsWith(nsName(tbName, ''))) namespaces.add(ns);
  for (const ns of namespaces) {
    if (!(await listNamespaces()).includes(ns)) continue;
    await deleteNamespace(ns);
    removed.push(`namespace ${ns}`);
  }
  const rootVeth = st?.rootVeth ?? (tbName ? `dtb${tbName}` : undefined);
  if (rootVeth && (await linkExists(rootVeth))) {
    await run('ip', ['link', 'del', rootVeth]).catch(() => undefined);
    removed.push(`veth ${rootVeth}`);
  }
  releaseSlot(dir);
  if (fs.existsSync(dir)) {
    fs.rmSync(dir, { recursive: true, force: true });
    removed.push(`folder ${dir}`);
  }
  try {
    fs.rmdirSync(path.dirname(dir)); // the testbeds' folder, once the last one is gone
  } catch {
    // not empty, or not there
  }
  if (removed.length) logger.info({ testbed: tbName, removed }, 'testbed removed');
  return { removed };
}

/** What of a testbed is still on this machine (namespaces, the root veth, processes, its folder): [] after `down`. */
export async function testbedLeftovers(st: Pick<TestbedState, 'name' | 'rootVeth' | 'dir'>): Promise<string[]> {
  const left = (await listNamespaces()).filter((n) => n.startsWith(nsName(st.name, ''))).map((n) => `namespace ${n}`);
  if (await linkExists(st.rootVeth)) left.push(`veth ${st.rootVeth}`);
  left.push(...processesUnder(st.dir).map((p) => `process ${p}`));
  if (fs.existsSync(st.dir)) left.push(`folder ${st.dir}`);
  return left;
}

/** Kills `pid` only if its command line still holds `match` (a pid the kernel reused is someone else's). */
async function killIfOurs(pid: number, match: string): Promise<boolean> {
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

/**
 * A /24 of 198.18.0.0/15 that no other testbed on this machine holds and the root namespace does not route yet.
 * Claimed by creating `/run/dhm-testbed/slot-<n>` exclusively; a claim whose testbed folder is gone is stale.
 */
function claimSlot(dir: string): number {
  fs.mkdirSync(SLOT_DIR, { recursive: true });
  for (let n = 1; n <= MAX_SLOT; n++) {
    const f = path.join(SLOT_DIR, `slot-${n}`);
    if (fs.existsSync(f)) {
      const owner = fs.readFileSync(f, 'utf8');
      if (owner !== dir && fs.existsSync(owner)) continue;
      fs.rmSync(f, { force: true });
    }
    if (routed(`198.18.${n}.`)) continue;
    try {
      fs.writeFileSync(f, dir, { flag: 'wx' });
      return n;
    } catch {
      continue; // another testbed took it just now
    }
  }
  throw new UserFacingError(`name: no free 198.18.x.0/24 left for another testbed on this machine (${MAX_SLOT} in use)`, 'name');
}

function releaseSlot(dir: string): void {
  if (!fs.existsSync(SLOT_DIR)) return;
  for (const f of fs.readdirSync(SLOT_DIR)) {
    const p = path.join(SLOT_DIR, f);
    try {
      if (fs.readFileSync(p, 'utf8') === dir) fs.rmSync(p, { force: true });
    } catch {
      // raced with another release
    }
  }
}

/** Whether an interface of the root namespace already has an address in that /24. */
function routed(prefix: string): boolean {
  return Object.values(os.networkInterfaces()).some((l) => (l ?? []).some((a) => a.address.startsWith(prefix)));
}

/** Starts a process inside one of the testbed's namespaces, recorded in its state so `down` stops it. */
export function spawnInTestbed(st: TestbedState, ns: string, role: string, command: string[], match: string) {
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'ip', 'netns', 'exec', ns, ...command], { stdio: ['pipe', 'pipe', 'pipe'] });
  st.pids.push({ pid: child.pid!, role, match });
  fs.writeFileSync(stateFile(st.dir), JSON.stringify(st, null, 2), { mode: 0o600 });
  return child;
}

export { inNs };

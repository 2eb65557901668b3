import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UserFacingError } from '../../common/errors';
import type { Fleet, FleetServer } from '../../common/fleet';
import type { Logger } from '../../common/logger';
import { CONTROL_PLANE_CN } from '../agent-tls';
import { ensureFleetCa, issueClientCreds, issueServerCreds, type FleetCa } from '../fleet-ca';
import { TENANT_MTU } from '../qemu/guest-nic';
import { loadQemuTools } from '../qemu/tools';
import { copyTlsForQemu, ensureQemuDir, letQemuReadTools, resolveQemuUser } from '../qemu/qemu-user';
import { STORAGE_NAME, STORAGE_NBD_PORT, storageCredsDir, storageDaemonArgs, waitStorageReady } from './storage';
import { bridgeIn, deleteNamespace, inNs, ipIn, linkExists, listNamespaces, run, tcIn } from './net';
import { startAgentIn } from './agent-process';
import { killIfOurs, processesUnder } from './processes';
import { claimSlot, releaseSlot } from './slots';
import {
  nsName,
  saveTestbedState,
  serverId,
  TENANT_BRIDGE,
  TENANT_CLIENT_IP,
  testbedOptionsSchema,
  readTestbedState,
  testbedDir,
  type TestbedOptions,
  type TestbedServer,
  type TestbedState,
} from './state';

// The testbed's face to the CLI, the bench and the tests.
export { processesUnder, spawnInTestbed } from './processes';
export { readTestbedState, serverId, TENANT_BRIDGE, TENANT_CLIENT_IP, testbedDir, testbedOptionsSchema } from './state';
export type { TestbedOptions, TestbedServer, TestbedState } from './state';

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

/** .1 – .250 servers, .252 the storage service, .253 tenant, .254 the root namespace (the control plane). */
export const MAX_SERVERS = 250;
const STORAGE_HOST = 252;
const TENANT_HOST = 253;
const ROOT_HOST = 254;
/** What one server costs this machine besides its VMs: its agent process (Node) and the guest QEMUs' overhead. */
const PER_SERVER_MIB = 192;
const VXLAN_ID = 100;
const VXLAN_PORT = 4789;

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
  const save = () => saveTestbedState(state);
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
  // As root, the daemon runs as QEMU's unprivileged user (as the servers' QEMUs do): its folders and key copy its own.
  const user = resolveQemuUser(undefined, logger);
  if (user) {
    s.user = { name: user.name, uid: user.uid, gid: user.gid };
    letQemuReadTools(tools, user, logger);
    for (const d of [s.dir, path.join(s.dir, 'volumes')]) ensureQemuDir(d, user, 'testbed storage', logger);
    if (ca) copyTlsForQemu(s.credsDir, storageCredsDir(s), user);
  }
  const args = storageDaemonArgs(s, tools, { tls, clients: st.servers.map((x) => x.id), parentDeathSignal: attached });
  // Like the agents: tied to this process only when attached (tests); `dhm testbed up` leaves it running until `down`
  // (pipes or a parent-death signal would keep the command from returning, or kill the service when it does).
  const logFile = path.join(s.dir, 'storage.log');
  const log = fs.openSync(logFile, 'a');
  const argv = ['netns', 'exec', s.namespace, ...args];
  const [cmd, cmdArgs] = attached ? ['setpriv', ['--pdeathsig', 'KILL', '--', 'ip', ...argv]] : ['ip', argv];
  const child = spawn(cmd as string, cmdArgs as string[], { stdio: ['ignore', log, log], detached: !attached });
  fs.closeSync(log);
  st.pids.push({ pid: child.pid!, role: 'storage service', match: s.dir });
  saveTestbedState(st);
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

export { inNs };

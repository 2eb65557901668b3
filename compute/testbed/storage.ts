import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from '../../common/logger';
import { tlsIdentity } from '../fleet-ca';
import { createDiskFile, wipeDiskFile } from '../qemu/disks';
import { QmpClient } from '../qemu/qmp';
import type { QemuTools } from '../qemu/tools';

/**
 * The testbed's storage service: `qemu-storage-daemon` in its own namespace on the fabric, exporting volumes (raw
 * files in its folder) over NBD, with TLS from the testbed's CA (only the fleet's servers' client certificates are
 * admitted: authz-listfile). Both ends of a migration attach the same volume; only memory moves.
 */

export const STORAGE_NAME = 'storage';
export const STORAGE_NBD_PORT = 10809;
const READY_MS = 20_000;

export interface StorageService {
  namespace: string;
  ip: string;
  port: number;
  /** The name in its certificate (the agents' tls-hostname). */
  serverName: string;
  dir: string;
  qmpPath: string;
  credsDir: string;
  /**
   * Who the daemon runs as when the testbed runs as root: QEMU's unprivileged user (compute/qemu/qemu-user.ts), with
   * its own copy of the service's keys (`<dir>/tls`) and the volume files its own. Unset: the testbed's user.
   */
  user?: { name: string; uid: number; gid: number };
}

/** The credentials folder the daemon reads: its user's copy when it runs as QEMU's user. */
export const storageCredsDir = (s: StorageService) => (s.user ? path.join(s.dir, 'tls') : s.credsDir);

export const volumeFile = (s: StorageService, volumeId: string) => path.join(s.dir, 'volumes', `${volumeId}.raw`);

/**
 * QEMU's names for a volume's nodes and export: a node name has at most 31 characters and an id starts with a
 * letter, and the API's volume ids are UUIDs (36 characters, often a leading digit). The NBD export keeps the
 * volume id as its name (what the servers attach).
 */
const volumeNode = (volumeId: string) => `vol-${createHash('sha256').update(volumeId).digest('hex').slice(0, 24)}`;

/**
 * The daemon's command line (runs in the storage namespace, after `ip netns exec`). With `s.user` it drops to that
 * user first (setpriv: uid, gid, no supplementary groups, no new privileges); `parentDeathSignal` is then set after
 * the drop, since a change of credentials clears it.
 */
export function storageDaemonArgs(s: StorageService, tools: QemuTools, o: { tls: boolean; clients: string[]; parentDeathSignal?: boolean }): string[] {
  if (!tools.storageDaemon) throw new Error(`qemu-storage-daemon is missing from ${tools.dir}: run scripts/qemu/setup.sh`);
  // Only the fleet's servers' client certificates (their subjects) may attach volumes.
  const authz = {
    'qom-type': 'authz-list',
    id: 'authz0',
    policy: 'deny',
    rules: o.clients.map((c) => ({ match: tlsIdentity(c), policy: 'allow', format: 'exact' })),
  };
  const nbd = [`addr.type=inet`, `addr.host=${s.ip}`, `addr.port=${s.port}`, ...(o.tls ? ['tls-creds=tls0', 'tls-authz=authz0'] : [])].join(',');
  const drop = s.user
    ? [
        'setpriv',
        `--reuid=${s.user.uid}`,
        `--regid=${s.user.gid}`,
        '--clear-groups',
        '--no-new-privs',
        '--',
        ...(o.parentDeathSignal ? ['setpriv', '--pdeathsig', 'KILL', '--'] : []),
      ]
    : [];
  return [
    ...drop,
    'env',
    `LD_LIBRARY_PATH=${tools.libraryPath.join(':')}`,
    `QEMU_MODULE_DIR=${tools.moduleDir}`,
    tools.storageDaemon,
    ...(o.tls ? ['--object', `tls-creds-x509,id=tls0,dir=${storageCredsDir(s)},endpoint=server,verify-peer=on`, '--object', JSON.stringify(authz)] : []),
    '--nbd-server',
    nbd,
    '--chardev',
    `socket,id=mon0,path=${s.qmpPath},server=on,wait=off`,
    '--monitor',
    'chardev=mon0',
  ];
}

/** One QMP conversation with the daemon (its monitor takes one client at a time). */
export async function withStorageQmp<T>(s: StorageService, logger: Logger, fn: (qmp: QmpClient) => Promise<T>, connectTimeoutMs = 5_000): Promise<T> {
  const qmp = await QmpClient.connect({ socketPath: s.qmpPath, connectTimeoutMs, logger });
  try {
    return await fn(qmp);
  } finally {
    qmp.close();
  }
}

export async function waitStorageReady(s: StorageService, logger: Logger, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + READY_MS;
  for (;;) {
    if (!alive()) throw new Error('qemu-storage-daemon exited before it was ready');
    try {
      await withStorageQmp(s, logger, (q) => q.execute('query-block-exports'), 2_000);
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`qemu-storage-daemon not ready within ${READY_MS} ms: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 100)); // poll interval within the deadline
    }
  }
}

/** A new volume: a sparse raw file of `sizeMiB`, exported writable under its id. Idempotent. */
export async function createVolume(s: StorageService, logger: Logger, volumeId: string, sizeMiB: number): Promise<string> {
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(volumeId)) throw new Error(`volumeId: letters, digits, ".", "_", "-" only (got ${volumeId})`);
  const file = volumeFile(s, volumeId);
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  createDiskFile(file, sizeMiB * 2 ** 20);
  if (s.user) fs.chownSync(file, s.user.uid, s.user.gid); // the daemon opens it as its user
  await withStorageQmp(s, logger, async (q) => {
    const node = volumeNode(volumeId);
    const exports = (await q.execute<Array<{ id: string }>>('query-block-exports')).map((e) => e.id);
    if (exports.includes(node)) return;
    await q.execute('blockdev-add', { driver: 'file', filename: file, 'node-name': `${node}-f`, discard: 'unmap' });
    await q.execute('blockdev-add', { driver: 'raw', file: `${node}-f`, 'node-name': node, discard: 'unmap' });
    await q.execute('block-export-add', { type: 'nbd', id: node, 'node-name': node, name: volumeId, writable: true });
  });
  return file;
}

/** Removes a volume's export and wipes its file. Idempotent. */
export async function deleteVolume(s: StorageService, logger: Logger, volumeId: string): Promise<void> {
  const node = volumeNode(volumeId);
  await withStorageQmp(s, logger, async (q) => {
    await q.execute('block-export-del', { id: node, mode: 'hard' }).catch(() => undefined);
    // The export goes away asynchronously; its nodes can only be deleted after it has.
    const deadline = Date.now() + 5_000;
    while ((await q.execute<Array<{ id: string }>>('query-block-exports')).some((e) => e.id === node) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50)); // poll interval within the deadline
    await q.execute('blockdev-del', { 'node-name': node }).catch(() => undefined);
    await q.execute('blockdev-del', { 'node-name': `${node}-f` }).catch(() => undefined);
  });
  wipeDiskFile(volumeFile(s, volumeId));
}

/** The volumes exported now (by volume id: the file under each export's node). */
export async function storageExports(s: StorageService, logger: Logger): Promise<string[]> {
  return withStorageQmp(s, logger, async (q) => {
    const exported = new Set((await q.execute<Array<{ 'node-name': string }>>('query-block-exports')).map((e) => e['node-name']));
    const nodes = await q.execute<Array<{ 'node-name': string; file: string }>>('query-named-block-nodes');
    return nodes.filter((n) => exported.has(n['node-name'])).map((n) => path.basename(n.file, '.raw'));
  });
}

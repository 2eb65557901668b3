import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Logger } from 'pino';
import type { BackendIncoming } from '../backend-contract';
import { tlsIdentity } from '../fleet-ca';
import type { QemuMigrationSettings } from './migration';
import type { MachineSpec, QemuProcess } from './qemu-process';
import type { MoveFeatures } from './move-features';
import { QmpError, type QmpClient } from './qmp';
import { queryMigrateSchema } from './query-migrate';

/**
 * The destination side of a migration into this server: the QEMU started with `-incoming defer`, where it listens
 * for the source (TCP with TLS and authz, or a UNIX socket), and the NBD exports the source mirrors local disks into.
 */

/** A destination QEMU for a VM migrating in; `committed` once it runs the guest and is a VM here. */
export interface Incoming extends BackendIncoming {
  machine: MachineSpec;
  proc: QemuProcess;
  socketPath: string;
  /** Where the destination listens, once it does (`unix:` or `tcp:`): what the source migrates to. */
  uri: string | null;
  tls: boolean;
  /** QEMU resumed the guest here (the migration completed). */
  resumed: boolean;
  /** Why the destination is gone, if it is (cancel, failure: QEMU exits then). */
  ended: string | null;
  /** Where the empty local disks are exported for the source's mirror, once they are (`tcp:`/`unix:`). */
  nbdAddress: string | null;
  /** The NBD server runs in the destination (to be stopped before the export can be called gone). */
  nbdStarted: boolean;
  /** multifd channels and post-copy, as the source derives them from the same request (move-features.ts). */
  features: MoveFeatures;
  /** A post-copy recovery (pause, then listen again) is being set up. */
  recovering: boolean;
  /** When the target accepted (before it made the disks and started QEMU), and where its set-up time went (ms). */
  acceptedAt: number;
  setupMs: Record<string, number>;
}

/**
 * A source asking again for a VM that runs here in post-copy wants to recover a broken stream: the destination is
 * paused (`migrate-pause`, unless QEMU noticed the break itself) and listens again (`migrate-recover`) on a fresh port,
 * which `r.uri` answers from then on. Out of band: the destination's main loop may be blocked (a vCPU, or a device
 * emulating DMA under the big lock, waits on a page the broken stream cannot bring), so in-band QMP would not answer.
 */
export async function recoverIncoming(r: Incoming, host: string | undefined, logger: Logger): Promise<void> {
  if (!host || !r.proc.running) return;
  r.recovering = true;
  const log = logger.child({ jobId: r.jobId, vmId: r.vmId });
  try {
    const qmp = await r.proc.qmp();
    // Refused unless post-copy is active (QEMU may have paused by itself on a broken socket): either way it is paused next.
    await qmp.executeOob('migrate-pause').then(
      () => log.warn('source reports the post-copy stream broken: destination paused (migrate-pause)'),
      () => undefined,
    );
    const hostPart = host.includes(':') ? `[${host}]` : host;
    const uri = `tcp:${hostPart}:${await freeTcpPort(host)}`;
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        // Refused until the destination has reached postcopy-paused.
        await qmp.executeOob('migrate-recover', { uri });
        break;
      } catch (err) {
        if (!(err instanceof QmpError && err.code === 'COMMAND') || Date.now() > deadline) throw err;
        await new Promise((res) => setTimeout(res, 200));
      }
    }
    r.uri = uri;
    log.warn({ uri }, 'destination listens for the post-copy recovery (migrate-recover)');
  } catch (err) {
    log.warn({ err: err instanceof Error ? err.message : String(err) }, 'post-copy recovery could not be set up here');
  } finally {
    r.recovering = false;
  }
}

/** Where this server's destinations listen, and with which TLS settings. */
export interface ListenOptions {
  /** This server's fabric address; unset: a UNIX socket at the incoming's `socketPath`. */
  migrationHost?: string;
  settings: QemuMigrationSettings;
}

/**
 * migrate-incoming on this server's migration address (TCP port chosen by the kernel, read back from QEMU), or on
 * a UNIX socket when agents share the host. With TLS: server credentials that require the peer's certificate
 * (verify-peer) and admit only the source server's identity (tls-authz).
 */
export async function startListening(qmp: QmpClient, r: Incoming, opts: ListenOptions, sourceServerId: string): Promise<string> {
  const host = opts.migrationHost;
  if (!host) {
    await exportDisks(qmp, r, undefined, {});
    await qmp.execute('migrate-incoming', { uri: `unix:${r.socketPath}` });
    return `unix:${r.socketPath}`;
  }
  const s = opts.settings;
  if (s.transport === 'tls') {
    await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: r.proc.tlsDir ?? s.tlsDir!, endpoint: 'server', 'verify-peer': true });
    await qmp.execute('object-add', { 'qom-type': 'authz-simple', id: 'authz0', identity: tlsIdentity(sourceServerId) });
    await qmp.execute('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-authz': 'authz0' });
    r.tls = true;
  }
  await exportDisks(qmp, r, host, r.tls ? { 'tls-creds': 'tls0', 'tls-authz': 'authz0' } : {});
  const hostPart = host.includes(':') ? `[${host}]` : host;
  await qmp.execute('migrate-incoming', { uri: `tcp:${hostPart}:0` });
  const q = queryMigrateSchema.parse(await qmp.execute('query-migrate'));
  const port = q['socket-address']?.[0]?.port;
  if (port === undefined) throw new Error('QEMU did not report the port it listens on');
  return `tcp:${hostPart}:${String(port)}`;
}

/**
 * The destination exports its empty local disks, writable, on this server's migration address (a kernel-chosen
 * free port) or a UNIX socket, with the migration's TLS credentials and authz (only the source may connect).
 */
async function exportDisks(qmp: QmpClient, r: Incoming, host: string | undefined, tls: Record<string, string>): Promise<void> {
  const local = (r.machine.disks ?? []).filter((d) => d.kind === 'local');
  if (!local.length) return;

  let addr: Record<string, unknown>;
  let address: string;
  if (host) {
    const port = await freeTcpPort(host);
    // nbd-server-start takes the legacy SocketAddress form ({type, data}).
    addr = { type: 'inet', data: { host, port: String(port) } };
    address = `tcp:${host.includes(':') ? `[${host}]` : host}:${port}`;
  } else {
    const sock = `${r.socketPath}.nbd`;
    fs.rmSync(sock, { force: true });
    addr = { type: 'unix', data: { path: sock } };
    address = `unix:${sock}`;
  }
  await qmp.execute('nbd-server-start', { addr, ...tls });
  r.nbdStarted = true;
  for (const d of local) await qmp.execute('block-export-add', { type: 'nbd', id: `export-${d.node}`, 'node-name': d.node, name: d.node, writable: true });
  r.nbdAddress = address;
}

/** Removes the destination's exports and its NBD server (hard: a client still connected is cut off). */
export async function stopNbd(r: Incoming, logger: Logger): Promise<void> {
  if (!r.nbdStarted || !r.proc.running) return;
  r.nbdStarted = false;
  try {
    const qmp = await r.proc.qmp();
    for (const d of r.machine.disks ?? [])
      if (d.kind === 'local') await qmp.execute('block-export-del', { id: `export-${d.node}`, mode: 'hard' }).catch(() => undefined);
    await qmp.execute('nbd-server-stop');
    logger.info({ jobId: r.jobId, vmId: r.vmId }, 'NBD exports of the incoming disks removed');
  } catch (err) {
    logger.warn({ jobId: r.jobId, err: err instanceof Error ? err.message : String(err) }, 'could not stop the NBD server of a destination');
  }
}

/** A TCP port free on `host` right now (QEMU's nbd-server-start cannot report a kernel-chosen one). */
function freeTcpPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

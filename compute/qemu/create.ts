import * as os from 'node:os';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { Resources } from '../../common/resources';
import type { PeerClient } from '../peer-client';
import { PROJECT_ROOT } from '../../common/config';
import { UserFacingError } from '../../common/errors';
import { ensurePrivateDir } from '../../common/private-dir';
import { checkServerCreds, ensureDhParams } from '../fleet-ca';
import { QemuBackend } from './qemu-backend';
import { ensureQemuDir, letQemuOpenTun, letQemuReadTools, letQemuUseUserfaultfd, resolveQemuUser } from './qemu-user';
import { loadQemuTools } from './tools';

/** See `listenWaitMs`. */
export const DEFAULT_LISTEN_WAIT_MS = 60_000;

/** The `qemu` backend's options as a host agent takes them (all optional). */
export const qemuAgentOptionsSchema = z
  .object({
    /** Where scripts/qemu/setup.sh put QEMU and the guest. Default: $DHM_TOOLS_DIR/qemu or <project>/.tools/qemu. */
    toolsDir: z.string().min(1).optional(),
    /**
     * This agent's QMP sockets and serial logs. Default: $DHM_HOME/qemu/<serverId>-<bootId prefix>; removed on stop.
     * Like `migrationDir`, a folder of this user only (0700, owner checked): a planted socket could receive a guest's RAM.
     */
    stateDir: z.string().min(1).optional(),
    /** Shared by the agents of this user on this machine (migration sockets). Default: $DHM_HOME/qemu/migrate. */
    migrationDir: z.string().min(1).optional(),
    /** Per-VM limits. Default memory: the smaller of the server's capacity and half this host's RAM. */
    maxVmMemoryMiB: z.number().int().positive().optional(),
    maxVmVcpus: z.number().int().positive().max(288).default(8),
    pollIntervalMs: z.number().int().min(10).max(5_000).default(50),
    /** Bytes/s used when a migration's policy sets no bandwidth cap. Default: the NIC's bandwidth. */
    defaultMaxBandwidthBps: z.number().positive().optional(),
    throttleInitialPct: z.number().int().min(1).max(99).default(20),
    throttleStepPct: z.number().int().min(1).max(99).default(10),
    /** A migration still not converged after this long is given up (NotConverging). */
    maxMigrationMs: z.number().int().positive().default(600_000),
    /**
     * How long a move waits for the target's destination to listen (QEMU started, its TLS and NBD set up,
     * migrate-incoming), and how long the target's destination may take for it. On 2 cores at load 10 the 15 s this
     * once was did not hold; a destination that fails before that is reported at once (INCOMING_FAILED), not waited out.
     */
    listenWaitMs: z.number().int().min(1_000).max(600_000).default(DEFAULT_LISTEN_WAIT_MS),
    /** A migration that sends no byte for this long (a partition) is given up and cancelled: the VM stays here. */
    stallTimeoutMs: z.number().int().min(1_000).default(20_000),
    /**
     * This server's migration address (its fabric IP): destinations listen there over TCP, and it must be an address
     * of this host. Unset: UNIX sockets in `migrationDir` (agents on one host only).
     */
    migrationHost: z.string().min(1).optional(),
    /** `tls` (default) encrypts migrations over TCP; `insecure` only where the fleet file says so. */
    transport: z.enum(['tls', 'insecure']).default('tls'),
    /** This server's credentials (compute/fleet-ca.ts); required with `migrationHost` and `tls`. */
    tlsDir: z.string().min(1).optional(),
    /** The fleet CA's certificate: `tlsDir` must hold certificates it issued to this server. */
    fleetCaCert: z.string().min(1).optional(),
    /** The tenant bridge of this server: VMs get a NIC on it. */
    tenantBridge: z.string().min(1).max(15).optional(),
    /** The fleet's server ids: migrations from any other source are refused. */
    peers: z.array(z.string().min(1)).optional(),
    /** This server's local storage: one raw file per local disk (folder 0700). Default: <stateDir>/disks. */
    storageDir: z.string().min(1).optional(),
    /**
     * The fleet's storage service for network disks (fleet file `storage.nbd`): NBD at host:port, export name = volume
     * id, TLS with this server's client certificate when `transport` is tls (`serverName`: the name in the service's
     * certificate). Unset: network disks are refused.
     */
    networkStorage: z
      .object({ host: z.string().min(1), port: z.number().int().min(1).max(65535), serverName: z.string().min(1).default('storage') })
      .strict()
      .optional(),
    /**
     * The user QEMU runs as when the agent runs as root (default: dhm-qemu, a system user created on first use). Its
     * folders (state, migration sockets, local disks) belong to it; the agent's credentials stay root's, QEMU gets a
     * copy per process. Ignored when the agent is not root: QEMU then runs as the agent's user.
     */
    user: z.string().min(1).max(32).optional(),
    /** MiB of random data written at the end of every new local disk: test data for a mirror to send (testbeds, benchmarks). */
    diskFillMiB: z.number().int().min(0).max(65536).default(0),
  })
  .strict();
export type QemuAgentOptions = z.input<typeof qemuAgentOptionsSchema>;

/**
 * What one QEMU migration stream carries at most when the NIC does not limit it: the destination's core is the
 * limit, ~2.1 Gbit/s in plaintext and ~1.2 Gbit/s with TLS on this class of machine (shared/notes/qemu-multiserver.md).
 * The workflow's schedule uses it as the per-stream cap S of qemu servers (the sim's is a fraction of the NIC).
 */
export const QEMU_STREAM_BITS_PER_SEC = 1.2e9;

/** QEMU's max-bandwidth over TCP, as a multiple of the NIC's: the NIC is the limit, not QEMU's rate limiter. */
const TCP_BANDWIDTH_HEADROOM = 4;

/** Every address of an interface of this host (in this network namespace). */
export function localAddresses(): Set<string> {
  return new Set(Object.values(os.networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address)));
}

export function createQemuBackend(input: {
  serverId: string;
  bootId: string;
  capacity: Resources;
  nicBytesPerSec: number;
  peer: PeerClient;
  logger: Logger;
  selfUrl: () => string;
  options?: QemuAgentOptions;
}): QemuBackend {
  const o = qemuAgentOptionsSchema.parse(input.options ?? {});
  if (o.migrationHost) {
    if (!localAddresses().has(o.migrationHost))
      throw new UserFacingError(`qemu.migrationHost: ${o.migrationHost} is not an address of any interface here`, 'qemu.migrationHost');
    if (o.transport === 'tls') {
      if (!o.tlsDir) throw new UserFacingError('qemu.tlsDir: required for TLS migrations (migration.transport is tls)', 'qemu.tlsDir');
      if (!o.fleetCaCert) throw new UserFacingError('qemu.fleetCaCert: required to check qemu.tlsDir', 'qemu.fleetCaCert');
      checkServerCreds(o.tlsDir, input.serverId, o.fleetCaCert, 'qemu.tlsDir');
      ensureDhParams(o.tlsDir); // credentials issued before it was part of them
    } else {
      input.logger.warn({ serverId: input.serverId }, 'migration.transport is insecure: VM memory crosses the network in plaintext');
    }
  }
  // Not a predictable folder in /tmp (another local user could plant a socket there): under DHM_HOME, and checked.
  const base = path.join(process.env.DHM_HOME || path.join(PROJECT_ROOT, '.dhm'), 'qemu');
  const safeId = input.serverId.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 32);
  const stateDir = o.stateDir ?? path.join(base, `${safeId}-${input.bootId.slice(0, 8)}`);
  if (o.networkStorage && o.transport === 'tls' && !o.tlsDir)
    throw new UserFacingError('qemu.tlsDir: required for network disks over TLS (qemu.networkStorage with transport tls)', 'qemu.tlsDir');
  const migrationDir = o.migrationDir ?? path.join(base, 'migrate');
  const storageDir = o.storageDir ?? path.join(stateDir, 'disks');
  const tools = loadQemuTools(o.toolsDir);
  const qemuUser = resolveQemuUser(o.user, input.logger);
  if (!o.stateDir || !o.migrationDir) ensurePrivateDir(base, 'DHM_HOME', qemuUser?.gid);
  if (qemuUser) {
    // QEMU (unprivileged) makes its sockets in these and opens the disk files: they are its user's, 0700.
    ensureQemuDir(stateDir, qemuUser, 'qemu.stateDir', input.logger);
    ensureQemuDir(migrationDir, qemuUser, 'qemu.migrationDir', input.logger);
    ensureQemuDir(storageDir, qemuUser, 'qemu.storageDir', input.logger);
    if (o.tenantBridge) letQemuOpenTun(qemuUser, input.logger);
    letQemuUseUserfaultfd(qemuUser, input.logger);
    letQemuReadTools(tools, qemuUser, input.logger);
  } else {
    ensurePrivateDir(stateDir, 'qemu.stateDir');
    ensurePrivateDir(migrationDir, 'qemu.migrationDir');
  }
  return new QemuBackend({
    serverId: input.serverId,
    bootId: input.bootId,
    capacity: input.capacity,
    peer: input.peer,
    logger: input.logger,
    selfUrl: input.selfUrl,
    tools,
    stateDir,
    storageDir,
    qemuUser,
    diskFillMiB: o.diskFillMiB,
    ...(o.networkStorage
      ? {
          networkStorage: {
            host: o.networkStorage.host,
            port: o.networkStorage.port,
            ...(o.transport === 'tls' ? { tlsHostname: o.networkStorage.serverName } : {}),
          },
        }
      : {}),
    migrationDir,
    nicBytesPerSec: input.nicBytesPerSec,
    maxVmMemoryMiB: o.maxVmMemoryMiB ?? Math.min(input.capacity.memoryMiB, Math.floor(os.totalmem() / 2 ** 20 / 2)),
    maxVmVcpus: o.maxVmVcpus,
    settings: {
      pollIntervalMs: o.pollIntervalMs,
      // Over TCP the NIC (shaped or not) limits the stream; QEMU's own limit only has to stay out of its way.
      defaultMaxBandwidthBps: o.defaultMaxBandwidthBps ?? input.nicBytesPerSec * (o.migrationHost ? TCP_BANDWIDTH_HEADROOM : 1),
      throttleInitialPct: o.throttleInitialPct,
      throttleStepPct: o.throttleStepPct,
      maxMigrationMs: o.maxMigrationMs,
      listenWaitMs: o.listenWaitMs,
      stallTimeoutMs: o.stallTimeoutMs,
      transport: o.transport,
      ...(o.tlsDir ? { tlsDir: o.tlsDir } : {}),
    },
    ...(o.migrationHost ? { migrationHost: o.migrationHost } : {}),
    ...(o.tenantBridge ? { tenantBridge: o.tenantBridge } : {}),
    ...(o.peers ? { peers: o.peers } : {}),
  });
}

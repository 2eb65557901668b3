import * as os from 'node:os';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { Resources } from '../../common/resources';
import type { PeerClient } from '../peer-client';
import { QemuBackend } from './qemu-backend';
import { loadQemuTools } from './tools';

/** The `qemu` backend's options as a host agent takes them (all optional). */
export const qemuAgentOptionsSchema = z
  .object({
    /** Where scripts/qemu/setup.sh put QEMU and the guest. Default: $DHM_TOOLS_DIR/qemu or <project>/.tools/qemu. */
    toolsDir: z.string().min(1).optional(),
    /** This agent's QMP sockets and serial logs. Default: <tmp>/dhm-qemu/<serverId>-<bootId prefix>; removed on stop. */
    stateDir: z.string().min(1).optional(),
    /** Shared by the agents on this machine (migration sockets). Default: <tmp>/dhm-qemu/migrate. */
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
  })
  .strict();
export type QemuAgentOptions = z.input<typeof qemuAgentOptionsSchema>;

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
  const base = path.join(os.tmpdir(), 'dhm-qemu');
  const safeId = input.serverId.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 32);
  return new QemuBackend({
    serverId: input.serverId,
    bootId: input.bootId,
    capacity: input.capacity,
    peer: input.peer,
    logger: input.logger,
    selfUrl: input.selfUrl,
    tools: loadQemuTools(o.toolsDir),
    stateDir: o.stateDir ?? path.join(base, `${safeId}-${input.bootId.slice(0, 8)}`),
    migrationDir: o.migrationDir ?? path.join(base, 'migrate'),
    maxVmMemoryMiB: o.maxVmMemoryMiB ?? Math.min(input.capacity.memoryMiB, Math.floor(os.totalmem() / 2 ** 20 / 2)),
    maxVmVcpus: o.maxVmVcpus,
    settings: {
      pollIntervalMs: o.pollIntervalMs,
      defaultMaxBandwidthBps: o.defaultMaxBandwidthBps ?? input.nicBytesPerSec,
      throttleInitialPct: o.throttleInitialPct,
      throttleStepPct: o.throttleStepPct,
      maxMigrationMs: o.maxMigrationMs,
      listenWaitMs: 15_000,
    },
  });
}

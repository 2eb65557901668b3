import * as fs from 'node:fs';
import { z } from 'zod';
import { UserFacingError, describeZodError } from '../../common/errors';
import { createLogger } from '../../common/logger';
import { resourcesSchema } from '../../common/resources';
import { startAgent } from '../agent-service';
import { loadServerTls } from '../agent-tls';
import { qemuAgentOptionsSchema } from '../qemu/create';
import { writeFileAtomic } from '../../common/atomic-file';

/**
 * One testbed server's host agent, as a process of its own inside the server's network namespace. Its settings come
 * from a file (0600; nothing in argv); once it listens it writes `{url}` to `readyFile`. It stops on SIGTERM/SIGINT,
 * killing its QEMU processes.
 */
export const testbedAgentConfigSchema = z
  .object({
    readyFile: z.string().min(1),
    logLevel: z.string().default('warn'),
    /** The server's agent-plane certificates (compute/fleet-ca.ts files): required, checked before the agent binds. */
    tlsDir: z.string({ error: "required: the folder of this server's certificates (an agent never runs without credentials)" }).min(1),
    /** The fault-injection routes; tests only. */
    faultRoutes: z.boolean().default(false),
    agent: z
      .object({
        serverId: z.string().min(1),
        capacity: resourcesSchema,
        nicBandwidthBps: z.number().positive(),
        host: z.string().min(1),
        port: z.number().int().min(0).max(65535),
        backend: z.literal('qemu'),
        qemu: qemuAgentOptionsSchema,
      })
      .strict(),
  })
  .strict();
export type TestbedAgentConfig = z.input<typeof testbedAgentConfigSchema>;

export async function runTestbedAgent(configFile: string): Promise<void> {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  } catch (err) {
    throw new UserFacingError(`--config: cannot read ${configFile}: ${(err as Error).message}`, 'config');
  }
  const parsed = testbedAgentConfigSchema.safeParse(raw);
  if (!parsed.success) throw new UserFacingError(`--config: ${describeZodError(parsed.error)}`, 'config');
  const cfg = parsed.data;
  const logger = createLogger('testbed-agent', cfg.logLevel);
  const tls = loadServerTls(cfg.tlsDir, cfg.agent.serverId, 'tlsDir');
  const agent = await startAgent({ ...cfg.agent, tls, faultRoutes: cfg.faultRoutes, logger });
  // Atomic: `dhm testbed up` polls for this file and parses it as soon as it exists.
  writeFileAtomic(cfg.readyFile, JSON.stringify({ url: agent.url, pid: process.pid }));
  const signal = await new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  logger.info({ signal }, 'stopping');
  await agent.stop();
  process.exit(0);
}

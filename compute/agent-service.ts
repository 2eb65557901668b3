import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import Fastify, { type FastifyBaseLogger, type FastifyError } from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import { observeHttp, type Metrics } from '../common/metrics';
import { resourcesSchema, type Resources } from '../common/resources';
import { paths } from './agent-api';
import { errorBody, parseOr400, registerAgentRoutes } from './agent-routes';
import { bearerMatches } from './auth';
import type { ComputeBackend } from './backend';
import { AgentFailure } from './errors';
import { createPeerClient } from './peer-client';
import { UserFacingError } from '../common/errors';
import { createQemuBackend, localAddresses, qemuAgentOptionsSchema, type QemuAgentOptions } from './qemu/create';
import { SimBackend } from './sim/sim-backend';
import { bitsToBytesPerSec } from './units';

export interface StartAgentOptions {
  serverId: string;
  capacity: Resources;
  /** NIC bandwidth in bits/s, as in the fleet file. */
  nicBandwidthBps: number;
  /** Per-stream cap S as a fraction of the NIC bandwidth (one stream cannot fill a fast link). Default 0.4. */
  streamCapFraction?: number;
  /** Simulated time runs this many times faster than real time. Default 1. */
  timeScale?: number;
  host?: string;
  /** The host name other processes reach this agent by (its URL); default: `host`, or loopback for a wildcard bind. */
  advertiseHost?: string;
  /** 0 lets the OS choose. */
  port?: number;
  /** When set, every request but /healthz must carry `Authorization: Bearer <secret>`; agents use it with each other too. */
  secret?: string;
  /** `sim` (default) models VMs; `qemu` runs each VM as a QEMU process (needs scripts/qemu/setup.sh to have run). */
  backend?: 'sim' | 'qemu';
  /** Options of the `qemu` backend; ignored by `sim`. */
  qemu?: QemuAgentOptions;
  /** The server reaches its zone's storage service (network disks). Default true. */
  networkStorage?: boolean;
  /** HTTP requests served are counted here when given (`service="agent"`). */
  metrics?: Metrics;
  logger: Logger;
}

export interface RunningAgent {
  url: string;
  serverId: string;
  bootId: string;
  /**
   * Fault injection: the agent daemon restarts while the server keeps running — unreachable for `downMs`, then back
   * with its migration jobs aborted and forgotten and its VMs untouched (the boot id, the server's, stays).
   */
  restartDaemon(downMs?: number): Promise<void>;
  /** Long-polls of migration jobs the agent holds right now (for tests and diagnostics). */
  pollsWaiting(): number;
  stop(): Promise<void>;
}

export const DEFAULT_STREAM_CAP_FRACTION = 0.4;
/** Readiness, like /healthz public (no secret): probes carry none. */
const READYZ = '/readyz';

const startAgentOptionsSchema = z.object({
  serverId: z.string().min(1),
  capacity: resourcesSchema,
  nicBandwidthBps: z.number().positive().max(1e13),
  streamCapFraction: z.number().gt(0).max(1).default(DEFAULT_STREAM_CAP_FRACTION),
  timeScale: z.number().positive().max(1e7).default(1),
  host: z.string().min(1).default('127.0.0.1'),
  advertiseHost: z.string().min(1).optional(),
  port: z.number().int().min(0).max(65535).default(0),
  secret: z.string().min(1).optional(),
  backend: z.enum(['sim', 'qemu']).default('sim'),
  qemu: qemuAgentOptionsSchema.optional(),
  networkStorage: z.boolean().default(true),
});

/** Starts one host agent (one physical server) on its own port. Several may run in one process. */
export async function startAgent(options: StartAgentOptions): Promise<RunningAgent> {
  const { logger: parentLogger, metrics, ...config } = options;
  const opts = parseConfig(config);
  // An address no interface has cannot be bound; say which setting is wrong before anything starts.
  if (isIP(opts.host) !== 0 && opts.host !== '0.0.0.0' && opts.host !== '::' && !localAddresses().has(opts.host))
    throw new UserFacingError(`host: ${opts.host} is not an address of any interface here (DHM_AGENT_HOST)`, 'host');
  const bootId = randomUUID();
  const logger = parentLogger.child({ component: 'agent', serverId: opts.serverId, bootId });
  let url = '';

  const backend: ComputeBackend =
    opts.backend === 'qemu'
      ? createQemuBackend({
          serverId: opts.serverId,
          bootId,
          capacity: opts.capacity,
          nicBytesPerSec: bitsToBytesPerSec(opts.nicBandwidthBps),
          peer: createPeerClient({ secret: opts.secret }),
          logger,
          selfUrl: () => url,
          options: opts.qemu,
        })
      : new SimBackend({
          serverId: opts.serverId,
          bootId,
          capacity: opts.capacity,
          nicBytesPerSec: bitsToBytesPerSec(opts.nicBandwidthBps),
          streamCapFraction: opts.streamCapFraction,
          timeScale: opts.timeScale,
          networkStorage: opts.networkStorage,
          peer: createPeerClient({ secret: opts.secret }),
          logger,
          selfUrl: () => url,
        });

  const app = Fastify({ loggerInstance: logger as FastifyBaseLogger, forceCloseConnections: true });

  app.addHook('onRequest', async (req, reply) => {
    const path = req.url.split('?')[0];
    // An "unreachable" agent still takes the faults route, so a test can make it reachable again.
    if (backend.faults().unreachable && path !== paths.faults)
      return reply.code(503).send(errorBody('AGENT_UNAVAILABLE', `agent ${opts.serverId} is unreachable (injected fault)`));
    if (opts.secret !== undefined && path !== paths.healthz && path !== READYZ && !bearerMatches(req.headers.authorization, opts.secret))
      return reply.code(401).send(errorBody('UNAUTHORIZED', 'missing or wrong bearer secret'));
  });

  app.setErrorHandler((err: FastifyError | AgentFailure | Error, req, reply) => {
    if (err instanceof AgentFailure) {
      if (err.status >= 500) req.log.warn({ code: err.code }, err.message);
      return reply.code(err.status).send(errorBody(err.code, err.message, err.field, err.movedTo));
    }
    const status = (err as FastifyError).statusCode;
    if (status !== undefined && status >= 400 && status < 500)
      return reply.code(status).send(errorBody('INVALID_INPUT', `body: ${err.message}`, 'body'));
    req.log.error({ err }, 'unexpected error');
    return reply.code(500).send(errorBody('INTERNAL', err.message));
  });
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send(errorBody('NO_SUCH_ROUTE', `no route ${req.method} ${req.url.split('?')[0]}`)),
  );

  if (metrics) app.addHook('onResponse', async (req, reply) => observeHttp(metrics, 'agent', req, reply.statusCode, reply.elapsedTime / 1000));
  // Ready: listening and not stopping (the backend keeps its VMs in this process; it has no other dependency).
  let closing = false;
  app.get(READYZ, { logLevel: 'warn' }, async (_req, reply) => (closing ? reply.code(503).send({ ok: false, status: 'stopping' }) : { ok: true, serverId: opts.serverId, bootId }));

  registerAgentRoutes(app, backend, {
    serverId: opts.serverId,
    bootId,
    capacity: opts.capacity,
    nicBandwidthBps: opts.nicBandwidthBps,
  });

  try {
    await app.listen({ host: opts.host, port: opts.port });
  } catch (err) {
    await backend.close(); // a qemu backend has made its state folder already
    throw err;
  }
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('agent did not bind a TCP port');
  url = `http://${opts.advertiseHost ? urlHost(opts.advertiseHost) : urlHost(opts.host)}:${address.port}`;
  logger.info({ url, timeScale: opts.timeScale, nicBandwidthBps: opts.nicBandwidthBps }, 'host agent started');

  let stopping: Promise<void> | undefined;
  return {
    url,
    serverId: opts.serverId,
    bootId,
    pollsWaiting: () => backend.pollsWaiting(),
    async restartDaemon(downMs = 0) {
      // Down (every request answered 503, as when nothing listens), then back with the jobs forgotten.
      backend.setFaults({ unreachable: true });
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs)); // the simulated outage itself
      await backend.restartDaemon();
      backend.setFaults({ unreachable: false });
    },
    stop: () =>
      (stopping ??= (async () => {
        closing = true;
        // Backend first: parked guest operations are answered before the server waits for open requests.
        await backend.close();
        await app.close();
        logger.info('host agent stopped');
      })()),
  };
}

function parseConfig(config: Omit<StartAgentOptions, 'logger'>) {
  try {
    return parseOr400(startAgentOptionsSchema, config);
  } catch (err) {
    throw new Error(`invalid host agent options: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** Where clients should connect: a wildcard bind is reached on loopback; IPv6 literals need brackets. */
function urlHost(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
}

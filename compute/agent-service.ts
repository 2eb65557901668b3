import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import type { TLSSocket } from 'node:tls';
import Fastify, { type FastifyBaseLogger, type FastifyError } from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import { observeHttp, type Metrics } from '../common/metrics';
import { resourcesSchema, type Resources } from '../common/resources';
import { paths, routes } from './agent-api';
import { errorBody, parseOr400, registerAgentRoutes } from './agent-routes';
import { callerOf, peerClientTls, type AgentServerTls } from './agent-tls';
import { RevocationList, watchRevocations } from './cert-revocation';
import type { ComputeBackend } from './backend';
import { AgentFailure } from './errors';
import { ExpectedMigrations } from './expected-migrations';
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
  /**
   * The sim's per-channel cap S as a fraction of the NIC bandwidth (one stream cannot fill a fast link): a property of
   * the simulated world, not an input of dhm's — the control plane learns S by measuring it (`GET /v1/link`). Default 0.4.
   */
  streamCapFraction?: number;
  /** Simulated time runs this many times faster than real time. Default 1. */
  timeScale?: number;
  /** Seed of the sim's measurement noise (compute/sim/measure.ts); default: from the server id. */
  measurementSeed?: number;
  /** Sim: simulated ms each outbound move spends off the link before its first byte (compute/sim/calibration.ts). Default 0. */
  moveSetupMs?: number;
  host?: string;
  /** The host name other processes reach this agent by (its URL); default: `host`, or loopback for a wildcard bind. */
  advertiseHost?: string;
  /** 0 lets the OS choose. */
  port?: number;
  /**
   * The server's certificates (compute/agent-tls.ts): required. The agent listens on HTTPS only and takes a request
   * only from a certificate of the same CA: the control plane's (every route but the peers'), or a peer server's (the
   * incoming-migration routes of a job the control plane told it to expect from that server, nothing else).
   */
  tls: AgentServerTls;
  /** The fault-injection routes (`/v1/faults`) exist only when true: tests' stacks (DHM_AGENT_FAULTS=1). Default false. */
  faultRoutes?: boolean;
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
  /** Listening and not stopping (what the ops endpoint's /readyz reports). */
  ready(): boolean;
  /** Long-polls of migration jobs the agent holds right now (for tests and diagnostics). */
  pollsWaiting(): number;
  stop(): Promise<void>;
}

/**
 * The sim world's per-channel cap, S/B. Not measured anywhere (issue 18's calibration on the testbed is to replace it);
 * dhm's workflow never reads it: it measures S through the agent, and uses this only as the fallback hint of
 * `policyForHost` for agents that cannot measure.
 */
export const DEFAULT_STREAM_CAP_FRACTION = 0.4;
const READYZ = '/readyz';
/** The routes a peer server may call (for an expected job); the control plane never needs them. */
const PEER_ROUTES = new Set([`PUT ${routes.incoming}`, `POST ${routes.commitIncoming}`, `DELETE ${routes.incoming}`]);
/** Probes any fleet identity may make. */
const OPEN_ROUTES = new Set([`GET ${routes.healthz}`, `GET ${READYZ}`]);

const startAgentOptionsSchema = z.object({
  serverId: z.string().min(1),
  capacity: resourcesSchema,
  nicBandwidthBps: z.number().positive().max(1e13),
  streamCapFraction: z.number().gt(0).max(1).default(DEFAULT_STREAM_CAP_FRACTION),
  timeScale: z.number().positive().max(1e7).default(1),
  measurementSeed: z
    .number()
    .int()
    .min(0)
    .max(2 ** 32 - 1)
    .optional(),
  moveSetupMs: z.number().min(0).max(3_600_000).optional(),
  host: z.string().min(1).default('127.0.0.1'),
  advertiseHost: z.string().min(1).optional(),
  port: z.number().int().min(0).max(65535).default(0),
  faultRoutes: z.boolean().default(false),
  backend: z.enum(['sim', 'qemu']).default('sim'),
  qemu: qemuAgentOptionsSchema.optional(),
  networkStorage: z.boolean().default(true),
});

/** Starts one host agent (one physical server) on its own port. Several may run in one process. */
export async function startAgent(options: StartAgentOptions): Promise<RunningAgent> {
  const { logger: parentLogger, metrics, tls, ...config } = options;
  const opts = parseConfig(config);
  // No credentials, no agent: refused before anything is made or bound (a caller in plain JS may leave it out).
  if (!tls?.cert || !tls.key || !tls.ca || !tls.clientCert || !tls.clientKey)
    throw new UserFacingError("tls: required: the server's agent-plane certificates (compute/agent-tls.ts); an agent never runs without them", 'tls');
  if (tls.serverId !== opts.serverId) throw new UserFacingError(`tls: the certificates are server ${tls.serverId}'s, not ${opts.serverId}'s`, 'tls');
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
          peer: createPeerClient({ tls: peerClientTls(tls) }),
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
          ...(opts.measurementSeed !== undefined ? { measurementSeed: opts.measurementSeed } : {}),
          ...(opts.moveSetupMs !== undefined ? { moveSetupMs: opts.moveSetupMs } : {}),
          networkStorage: opts.networkStorage,
          peer: createPeerClient({ tls: peerClientTls(tls) }),
          logger,
          selfUrl: () => url,
        });
  const expected = new ExpectedMigrations();
  const revoked = tls.revokedFile ? new RevocationList(tls.revokedFile) : null;

  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    forceCloseConnections: true,
    // A client without a certificate of the fleet CA does not get past the handshake (no HTTP at all).
    https: { key: tls.key, cert: tls.cert, ca: tls.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' },
  });

  // Connections are kept alive: when the list changes, a caller whose certificate it now revokes is cut at once,
  // not only refused at its next request (a long wait on a migration would otherwise carry on).
  const open = new Set<TLSSocket>();
  app.server.on('secureConnection', (socket: TLSSocket) => {
    open.add(socket);
    socket.once('close', () => open.delete(socket));
  });
  const unwatch = tls.revokedFile
    ? watchRevocations(tls.revokedFile, (list) => {
        for (const socket of open) {
          const why = list.verdict(socket.getPeerCertificate()?.serialNumber);
          if (why) {
            logger.warn({ caller: callerOf(socket) }, `connection cut: ${why}`);
            socket.destroy();
          }
        }
      })
    : () => undefined;
  app.addHook('onClose', async () => unwatch());

  app.addHook('onRequest', async (req, reply) => {
    const path = req.url.split('?')[0];
    const route = `${req.method} ${req.routeOptions.url ?? path}`;
    const caller = callerOf(req.raw.socket as TLSSocket);
    const refuse = (why: string) => {
      req.log.warn({ caller, route }, `refused: ${why}`);
      return reply.code(403).send(errorBody('FORBIDDEN', why));
    };
    if (!caller) return refuse('the client certificate names neither the control plane nor a fleet server');
    const revokedWhy = revoked?.check((req.raw.socket as TLSSocket).getPeerCertificate().serialNumber);
    if (revokedWhy) return refuse(revokedWhy);
    if (!OPEN_ROUTES.has(route)) {
      if (caller.kind === 'control-plane' && PEER_ROUTES.has(route)) return refuse(`${route} is for peer servers only`);
      if (caller.kind === 'server') {
        if (!PEER_ROUTES.has(route)) return refuse(`server ${caller.serverId} may call only the incoming-migration routes`);
        const jobId = (req.params as Record<string, string>).jobId ?? '';
        if (expected.get(jobId)?.sourceServerId !== caller.serverId) return refuse(`no migration ${jobId} from server ${caller.serverId} is expected here`);
      }
    }
    // An "unreachable" agent still takes the faults route, so a test can make it reachable again.
    if (backend.faults().unreachable && path !== paths.faults)
      return reply.code(503).send(errorBody('AGENT_UNAVAILABLE', `agent ${opts.serverId} is unreachable (injected fault)`));
  });
  // The expected job pins its VM and incarnation too: a peer reserves room for that VM only.
  app.addHook('preHandler', async (req, reply) => {
    if (`${req.method} ${req.routeOptions.url}` !== `PUT ${routes.incoming}`) return;
    const e = expected.get((req.params as Record<string, string>).jobId ?? '');
    const body = req.body as { vmId?: unknown; incarnationId?: unknown; sourceServerId?: unknown } | undefined;
    if (e && (body?.vmId !== e.vmId || body?.incarnationId !== e.incarnationId || body?.sourceServerId !== e.sourceServerId))
      return reply.code(403).send(errorBody('FORBIDDEN', `migration ${e.jobId} is expected for VM ${e.vmId} into ${e.incarnationId} from ${e.sourceServerId}`));
  });

  app.setErrorHandler((err: FastifyError | AgentFailure | Error, req, reply) => {
    if (err instanceof AgentFailure) {
      if (err.status >= 500) req.log.warn({ code: err.code }, err.message);
      return reply.code(err.status).send(errorBody(err.code, err.message, err.field, err.movedTo));
    }
    const status = (err as FastifyError).statusCode;
    if (status !== undefined && status >= 400 && status < 500) return reply.code(status).send(errorBody('INVALID_INPUT', `body: ${err.message}`, 'body'));
    req.log.error({ err }, 'unexpected error');
    return reply.code(500).send(errorBody('INTERNAL', err.message));
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send(errorBody('NO_SUCH_ROUTE', `no route ${req.method} ${req.url.split('?')[0]}`)));

  if (metrics) app.addHook('onResponse', async (req, reply) => observeHttp(metrics, 'agent', req, reply.statusCode, reply.elapsedTime / 1000));
  // Ready: listening and not stopping (the backend keeps its VMs in this process; it has no other dependency).
  let closing = false;
  app.get(READYZ, { logLevel: 'warn' }, async (_req, reply) =>
    closing ? reply.code(503).send({ ok: false, status: 'stopping' }) : { ok: true, serverId: opts.serverId, bootId },
  );

  registerAgentRoutes(
    app,
    backend,
    { serverId: opts.serverId, bootId, capacity: opts.capacity, nicBandwidthBps: opts.nicBandwidthBps },
    { expected, faultRoutes: opts.faultRoutes },
  );

  try {
    await app.listen({ host: opts.host, port: opts.port });
  } catch (err) {
    await backend.close(); // a qemu backend has made its state folder already
    throw err;
  }
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('agent did not bind a TCP port');
  url = `https://${opts.advertiseHost ? urlHost(opts.advertiseHost) : urlHost(opts.host)}:${address.port}`;
  logger.info({ url, timeScale: opts.timeScale, nicBandwidthBps: opts.nicBandwidthBps }, 'host agent started');

  let stopping: Promise<void> | undefined;
  return {
    url,
    serverId: opts.serverId,
    bootId,
    pollsWaiting: () => backend.pollsWaiting(),
    ready: () => !closing,
    async restartDaemon(downMs = 0) {
      // Down (every request answered 503, as when nothing listens), then back with the jobs forgotten.
      backend.setFaults({ unreachable: true });
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs)); // the simulated outage itself
      await backend.restartDaemon();
      expected.clear();
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

function parseConfig(config: Omit<StartAgentOptions, 'logger' | 'tls'>) {
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

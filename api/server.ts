import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply } from 'fastify';
import type { Env } from '../common/config';
import { UserFacingError } from '../common/errors';
import { createMetrics, observeHttp, type Metrics } from '../common/metrics';
import type { HostService } from './host-service';
import { type ApiContext, type ApiDeps, type ApiLimits, type Principal } from './context';
import { ApiError, internalError, toErrorResponse } from './errors';
import { createIdempotencyStore, SWEEP_INTERVAL_MS } from './idempotency';
import { DEFAULT_RATE_LIMITS, registerRateLimits } from './rate-limits';
import { buildOpenApiDocument } from './openapi';
import { healthCache, registerHealthRoutes } from './routes/health';
import { registerHostRoutes } from './routes/hosts';
import { registerMigrationRoutes } from './routes/migrations';
import { allowedMethods, register } from './routes/register';
import { registerServerRoutes } from './routes/servers';
import { registerTenantRoutes } from './routes/tenants';
import { registerVmRoutes } from './routes/vms';
import { registerVolumeRoutes } from './routes/volumes';
import { routes } from './schemas';

export type { ApiDeps, ApiLimits } from './context';

export const DEFAULT_BODY_LIMIT_BYTES = 64 * 1024;
/** Deeper JSON than this is refused before it is parsed: no request of this API nests more than 3 levels. */
export const MAX_JSON_DEPTH = 32;
const MAX_TOKEN_LENGTH = 512;

/**
 * Slow-client defaults: headers within 10 s of a request's first byte, the whole request within 30 s (checked every
 * second), 120 s without a byte moving closes a socket, 4,096 connections at once (the listen backlog's size). Without
 * them Node allows 60 s for headers, checked only every 30 s, and Fastify sets no request or idle timeout at all.
 */
export const DEFAULT_API_LIMITS: Readonly<ApiLimits> = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  idleTimeoutMs: 120_000,
  keepAliveTimeoutMs: 72_000,
  timeoutCheckIntervalMs: 1_000,
  maxConnections: 4096,
};

/** The defaults with `overrides` applied; a value that is not a positive integer, or headers allowed longer than the request, throws naming it. */
export function apiLimits(overrides: Partial<ApiLimits> = {}): ApiLimits {
  const limits: ApiLimits = { ...DEFAULT_API_LIMITS };
  for (const [key, value] of Object.entries(overrides) as Array<[keyof ApiLimits, number | undefined]>) {
    if (value === undefined) continue;
    if (!(key in DEFAULT_API_LIMITS)) throw new UserFacingError(`limits.${key}: unknown API limit`, `limits.${key}`);
    if (!Number.isSafeInteger(value) || value <= 0)
      throw new UserFacingError(`limits.${key}: must be a positive integer (got ${String(value)})`, `limits.${key}`);
    limits[key] = value;
  }
  if (limits.headersTimeoutMs > limits.requestTimeoutMs)
    throw new UserFacingError(
      `limits.headersTimeoutMs: must not exceed limits.requestTimeoutMs (${limits.headersTimeoutMs} > ${limits.requestTimeoutMs})`,
      'limits.headersTimeoutMs',
    );
  return limits;
}

const sha256 = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/**
 * A request body: empty means absent; otherwise JSON no deeper than MAX_JSON_DEPTH (checked by a linear scan before
 * JSON.parse, so a hostile body cannot make anything recurse deeply). Bad JSON is a 400 naming `body`.
 */
export function parseJsonBody(text: string): unknown {
  if (text.trim() === '') return undefined;
  let depth = 0;
  let inString = false;
  let escaped = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (escaped) escaped = false;
      else if (c === 0x5c) escaped = true;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > MAX_JSON_DEPTH) throw new ApiError(400, 'INVALID_INPUT', `body: JSON nested deeper than ${MAX_JSON_DEPTH} levels`, 'body');
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(400, 'INVALID_INPUT', 'body: malformed JSON', 'body');
  }
}

/**
 * The HTTP API (routes in routes/*.ts, schemas in schemas/, one module per resource, the OpenAPI document at /openapi.json).
 *
 * Auth: `Authorization: Bearer <token>`. The operator token is compared in constant time (timingSafeEqual over
 * sha256 digests, so lengths do not leak either); tenant tokens are looked up by their sha256 (they are stored only
 * as hashes). No or a bad token: 401. A tenant on an operator-only route: 403, decided from the route alone before
 * any id is read, so it says nothing about whether an object exists; on shared routes another tenant's object
 * answers 404 exactly like a missing one. The authorization header is redacted from every log line.
 */
export async function buildApiServer(deps: ApiDeps & { metrics?: Metrics }): Promise<FastifyInstance> {
  if (typeof deps.operatorToken !== 'string' || deps.operatorToken.length < 16)
    throw new UserFacingError('DHM_OPERATOR_TOKEN: the operator token must have at least 16 characters', 'DHM_OPERATOR_TOKEN');
  const logger = deps.logger.child(
    { component: 'api' },
    { redact: { paths: ['req.headers.authorization', 'headers.authorization', 'authorization', 'token', '*.token'], censor: '[redacted]' } },
  );
  const limits = apiLimits(deps.limits);
  // Slow clients (DEFAULT_API_LIMITS). Node enforces the headers and request deadlines (408, then closes the
  // socket) every `connectionsCheckingInterval`, which can only be set when the server is created.
  const serverOptions = {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    connectionsCheckingInterval: limits.timeoutCheckIntervalMs,
  };
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    bodyLimit: deps.bodyLimitBytes ?? DEFAULT_BODY_LIMIT_BYTES,
    // TLS when a certificate is given (DHM_API_TLS_CERT / DHM_API_TLS_KEY): tokens never cross the network in clear.
    ...(deps.tls ? { https: { ...serverOptions, cert: deps.tls.cert, key: deps.tls.key } } : { http: serverOptions }),
    requestTimeout: limits.requestTimeoutMs,
    connectionTimeout: limits.idleTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    routerOptions: { maxParamLength: 200 },
    return503OnClosing: true,
    // A path that is not valid percent-encoded UTF-8 is bad input like any other, in the same error format.
    frameworkErrors: (err, _req, reply) => {
      const message = `url: ${err.code === 'FST_ERR_BAD_URL' ? 'not a valid URL (bad percent-encoding)' : 'bad request'}`;
      void (reply as unknown as FastifyReply).code(400).send({ error: { code: 'INVALID_INPUT', message, field: 'url' } });
    },
  }) as unknown as FastifyInstance;
  app.server.maxConnections = limits.maxConnections;
  // Without a registry of its own (tests, `dhm up`), the counters still work; process metrics are left to services.
  const metrics = deps.metrics ?? createMetrics({ role: 'api', defaultMetrics: false });
  const idempotency = createIdempotencyStore(deps.pool, {
    sealingKey: deps.sealingKey ?? randomBytes(32).toString('base64url'),
    maxKeysPerPrincipal: deps.idempotency?.maxKeysPerPrincipal,
    retentionHours: deps.idempotency?.retentionHours,
  });
  const rates = await registerRateLimits(app, { inventory: deps.inventory, limits: { ...DEFAULT_RATE_LIMITS, ...deps.rateLimits }, logger });
  const ctx: ApiContext = {
    ...deps,
    hostService: timedHostService(deps.hostService, metrics),
    logger,
    idempotency,
    onQuotasChanged: (tenantId, q) => rates.setTenantRate(tenantId, q.requestsPerSecond),
  };
  // Expired idempotency keys go by age, once at start and then periodically, whatever requests arrive.
  const sweep = () =>
    void idempotency.sweep().then(
      (n) => n > 0 && logger.info({ deleted: n }, 'swept expired idempotency keys'),
      (err: unknown) => logger.warn({ err }, 'could not sweep expired idempotency keys'),
    );
  const sweeper = setInterval(sweep, deps.idempotency?.sweepIntervalMs ?? SWEEP_INTERVAL_MS);
  sweeper.unref();
  app.addHook('onReady', async () => sweep());
  app.addHook('onClose', async () => clearInterval(sweeper));
  const operatorDigest = sha256(deps.operatorToken);

  const authenticate = async (header: string | undefined): Promise<Principal | null> => {
    if (typeof header !== 'string' || header.length > MAX_TOKEN_LENGTH + 7) return null;
    const m = /^Bearer ([\x21-\x7e]+)$/i.exec(header);
    if (!m) return null;
    const token = m[1]!;
    if (timingSafeEqual(sha256(token), operatorDigest)) return { kind: 'operator' };
    const tenant = await deps.inventory.findTenantByToken(token);
    return tenant ? { kind: 'tenant', tenant } : null;
  };

  app.decorateRequest('principal', null);
  // Per address first, before any token is looked up: a flood costs no database work.
  app.addHook('onRequest', rates.perAddress);
  app.addHook('onRequest', async (req) => {
    const access = req.routeOptions.config?.access ?? 'public';
    if (access === 'public') return;
    const principal = await authenticate(req.headers.authorization);
    if (!principal) throw new ApiError(401, 'UNAUTHORIZED', 'missing or invalid bearer token (Authorization: Bearer <token>)');
    if (access === 'operator' && principal.kind !== 'operator') throw new ApiError(403, 'FORBIDDEN', 'operators only');
    req.principal = principal;
  });
  // Per token, once it is known (public routes have none: only the per-address limit applies to them).
  app.addHook('onRequest', rates.perPrincipal);

  // JSON only; everything else is 415. Fastify enforces bodyLimit (413) before this runs.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseJsonBody(body as string));
    } catch (err) {
      done(err as Error, undefined);
    }
  });

  app.setErrorHandler((err, req, reply) => {
    // The client went away before its whole request arrived (it hung up mid-body, or a slow body hit the request
    // deadline and Node closed the socket): the body stream fails with ECONNRESET "aborted", which is not a backing
    // service being down (a 503 and an error line each, before). Nobody reads this answer; it is logged at info.
    if (!req.raw.complete && req.raw.socket.destroyed) {
      const e = err as { message?: unknown; code?: unknown };
      req.log.info({ err: { message: e.message, code: e.code } }, 'client closed the connection before the whole request arrived');
      return reply.code(400).send({ error: { code: 'INVALID_INPUT', message: 'body: the connection closed before the whole request arrived', field: 'body' } });
    }
    const mapped = toErrorResponse(err);
    if (mapped) {
      if (mapped.status >= 500) req.log.error({ err }, 'a backing service is unavailable');
      if (mapped.status === 401) void reply.header('www-authenticate', 'Bearer');
      const retryAfter = mapped.body.error.details?.retryAfterSeconds;
      if (mapped.status === 429 && typeof retryAfter === 'number') void reply.header('retry-after', String(retryAfter));
      return reply.code(mapped.status).send(mapped.body);
    }
    req.log.error({ err, route: req.routeOptions.url }, 'unexpected error');
    const internal = internalError();
    return reply.code(internal.status).send(internal.body);
  });
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0]!;
    const allow = allowedMethods(path);
    // A path that exists but not with this method: 405 with the methods it does serve (RFC 9110 15.5.6).
    if (allow)
      return reply
        .code(405)
        .header('allow', allow.join(', '))
        .send({
          error: {
            code: 'METHOD_NOT_ALLOWED',
            message: `${req.method.slice(0, 20)} is not served on ${path.slice(0, 200)}; allowed: ${allow.join(', ')}`,
            field: 'method',
          },
        });
    return reply.code(404).send({ error: { code: 'NOT_FOUND', message: `no route ${req.method.slice(0, 20)} ${path.slice(0, 200)}` } });
  });

  // Operations: request counts and latencies by route pattern; migrations started and cancels accepted (202, not an
  // idempotent replay); /readyz (Postgres and Temporal answer) and /metrics, public like /healthz.
  app.addHook('onResponse', async (req, reply) => {
    observeHttp(metrics, 'api', req, reply.statusCode, reply.elapsedTime / 1000);
    if (reply.statusCode !== 202 || reply.getHeader('idempotent-replayed')) return;
    if (req.routeOptions.url === routes.startMigration.url) metrics.migrationsStarted.inc();
    else if (req.routeOptions.url === routes.cancelMigration.url) metrics.migrationCancelsRequested.inc();
  });
  const health = healthCache(deps);
  register(
    app,
    routes.readyz,
    async (_req, reply) => {
      const { ok, checks } = await health.check();
      if (!ok) reply.log.warn({ checks }, 'not ready');
      return reply.code(ok ? 200 : 503).send({ status: ok ? 'ok' : 'unavailable', checks });
    },
    { logLevel: 'warn' },
  );
  register(app, routes.metrics, async (_req, reply) => reply.header('content-type', metrics.registry.contentType).send(await metrics.registry.metrics()), {
    logLevel: 'warn',
  });

  const openapi = buildOpenApiDocument();
  register(app, routes.openapi, async (_req, reply) => reply.send(openapi));
  registerHealthRoutes(app, health);
  registerTenantRoutes(app, ctx);
  registerServerRoutes(app, ctx);
  registerHostRoutes(app, ctx);
  registerVmRoutes(app, ctx);
  registerVolumeRoutes(app, ctx);
  registerMigrationRoutes(app, ctx);
  return app;
}

export interface RunningApiServer {
  url: string;
  app: FastifyInstance;
  stop(): Promise<void>;
}

/** TLS (DHM_API_TLS_CERT / DHM_API_TLS_KEY, PEM files) and the sealing key (DHM_API_SEALING_KEY) from the environment. */
export function apiSecurityFromEnv(env: Pick<Env, 'DHM_API_TLS_CERT' | 'DHM_API_TLS_KEY' | 'DHM_API_SEALING_KEY'>): Pick<ApiDeps, 'tls' | 'sealingKey'> {
  return {
    ...(env.DHM_API_TLS_CERT && env.DHM_API_TLS_KEY ? { tls: { cert: fs.readFileSync(env.DHM_API_TLS_CERT), key: fs.readFileSync(env.DHM_API_TLS_KEY) } } : {}),
    ...(env.DHM_API_SEALING_KEY ? { sealingKey: env.DHM_API_SEALING_KEY } : {}),
  };
}

/** Builds the API and listens (default 127.0.0.1; port 0 picks a free one). */
export async function startApiServer(deps: ApiDeps & { host?: string; port: number; metrics?: Metrics }): Promise<RunningApiServer> {
  const app = await buildApiServer(deps);
  const host = deps.host ?? '127.0.0.1';
  // A burst of clients (1,000 at once in the hostile-input test) must queue, not be reset: Node's default is 511.
  await app.listen({ host, port: deps.port, backlog: 4096 });
  const { port } = app.server.address() as AddressInfo;
  const url = `${deps.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  app.log.info({ url }, 'API listening');
  return {
    url,
    app,
    stop: async () => {
      await app.close();
    },
  };
}

/**
 * Tenant VM requests timed by the path they took: `migration` is the workflow Update on a migrating host (the update
 * latency), `normal` the inventory and the agent. A failed request is `outcome="error"`, `path="unknown"`.
 */
function timedHostService(hostService: HostService, metrics: Metrics): HostService {
  const timed =
    <A, R extends { via: string }>(operation: string, fn: (a: A) => Promise<R>) =>
    async (a: A): Promise<R> => {
      const end = metrics.tenantRequestDuration.startTimer({ operation });
      try {
        const r = await fn(a);
        end({ path: r.via, outcome: 'ok' });
        return r;
      } catch (err) {
        end({ path: 'unknown', outcome: 'error' });
        throw err;
      }
    };
  return { ...hostService, createVm: timed('create_vm', hostService.createVm), deleteVm: timed('delete_vm', hostService.deleteVm) };
}

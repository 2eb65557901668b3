import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from './logger';
import type { Metrics } from './metrics';

/** A readiness check: resolves when the dependency answers; its error message says why not. */
export type ReadinessCheck = () => Promise<void>;

export interface OpsServer {
  url: string;
  stop(): Promise<void>;
}

const CHECK_TIMEOUT_MS = 2_000;

function within(ms: number, p: Promise<void>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Runs every check (2 s each, in parallel): `ok` plus each check's `ok` or the reason it failed. */
export async function runReadiness(checks: Record<string, ReadinessCheck>): Promise<{ ok: boolean; checks: Record<string, string> }> {
  const results = await Promise.all(
    Object.entries(checks).map(async ([name, check]) => {
      try {
        await within(CHECK_TIMEOUT_MS, check());
        return [name, 'ok'] as const;
      } catch (err) {
        return [name, err instanceof Error ? err.message : String(err)] as const;
      }
    }),
  );
  return { ok: results.every(([, r]) => r === 'ok'), checks: Object.fromEntries(results) };
}

/**
 * The operations endpoints of a process without an HTTP API of its own (worker, scheduler, agents): `GET /healthz`
 * (the process is alive: 200 unless it is stopping), `GET /readyz` (its dependencies answer: 200, else 503 naming
 * them) and `GET /metrics` (Prometheus text). Unauthenticated: bind it to a network only the monitoring reaches.
 */
export async function startOpsServer(opts: {
  host: string;
  port: number;
  metrics: Metrics;
  readiness: Record<string, ReadinessCheck>;
  logger: Logger;
}): Promise<OpsServer> {
  let stopping = false;
  const json = (res: http.ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  };
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(res, 405, { error: 'GET only' });
    if (path === '/healthz') return json(res, stopping ? 503 : 200, { status: stopping ? 'stopping' : 'ok' });
    if (path === '/readyz') {
      if (stopping) return json(res, 503, { status: 'stopping', checks: {} });
      void runReadiness(opts.readiness).then(({ ok, checks }) => {
        if (!ok) opts.logger.warn({ checks }, 'not ready');
        json(res, ok ? 200 : 503, { status: ok ? 'ok' : 'unavailable', checks });
      });
      return;
    }
    if (path === '/metrics') {
      void opts.metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': opts.metrics.registry.contentType }).end(text),
        (err: unknown) => {
          opts.logger.error({ err }, 'metrics collection failed');
          json(res, 500, { error: 'metrics collection failed' });
        },
      );
      return;
    }
    json(res, 404, { error: `no route ${path}` });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${port}`;
  opts.logger.info({ url }, 'ops endpoints listening (/healthz, /readyz, /metrics)');
  return {
    url,
    stop: async () => {
      stopping = true;
      server.closeIdleConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

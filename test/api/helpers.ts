import { randomBytes } from 'node:crypto';
import pino from 'pino';
import { createAgentDirectory } from '../../compute/agent-directory';
import type { RateLimits } from '../../api/rate-limits';
import { startApiServer, type ApiLimits, type RunningApiServer } from '../../api/server';
import { createHostService, type HostService } from '../../api/host-service';
import type { Fleet } from '../../common/fleet';
import { startTestSystem, type TestSystem } from '../support/system';

export interface ApiResponse {
  status: number;
  body: any;
  text: string;
  headers: Headers;
}

export interface CallOptions {
  token?: string | null;
  body?: unknown;
  /** Sent as is (malformed JSON, other content types). */
  rawBody?: string;
  contentType?: string;
  headers?: Record<string, string>;
  idempotencyKey?: string;
}

export interface ApiTestSystem {
  sys: TestSystem;
  api: RunningApiServer;
  hostService: HostService;
  operatorToken: string;
  /** Every log line the API wrote (JSON strings). */
  logs: string[];
  call(method: string, path: string, opts?: CallOptions): Promise<ApiResponse>;
  /** A tenant created through the API: its id and token. */
  tenant(name?: string): Promise<{ id: string; token: string }>;
  /** A host of `tenant` created through the API. */
  host(token: string, opts?: { zone?: string; resourceClass?: string; name?: string }): Promise<any>;
  vm(
    token: string,
    hostId: string,
    spec?: Partial<{
      name: string;
      vcpus: number;
      memoryMiB: number;
      diskGiB: number;
      workload: { dirtyRateMiBps: number; workingSetMiB: number };
      disks: unknown[];
    }>,
  ): Promise<any>;
  /** Row counts of the inventory's tables and the server states: "nothing changed" compares two of these. */
  counts(): Promise<Record<string, string | number>>;
  stop(): Promise<void>;
}

/** The real system (Postgres, Temporal worker, sim agents, scheduler) plus the API on a free loopback port. */
export async function startApiTestSystem(
  opts: {
    fleet?: Fleet;
    timeScale?: number;
    logLevel?: string;
    bodyLimitBytes?: number;
    limits?: Partial<ApiLimits>;
    /** Default: far above what any test that is not about rates sends (those pass their own). */
    rateLimits?: Partial<RateLimits>;
    /**
     * `generous` (default): tenants made by `tenant()` get quotas no test that is not about quotas meets;
     * `default`: they keep the inventory's defaults (2 hosts per zone and class, 50 requests/s).
     */
    tenantQuotas?: 'generous' | 'default';
    maxRequestsInFlightPerMigration?: number;
  } = {},
): Promise<ApiTestSystem> {
  const sys = await startTestSystem({ fleet: opts.fleet, timeScale: opts.timeScale });
  sys.db.pool.on('error', () => undefined); // the database is dropped at the end while idle clients may still close
  const logs: string[] = [];
  const logger = pino({ level: opts.logLevel ?? 'warn' }, { write: (line: string) => void logs.push(line) });
  const agents = createAgentDirectory({ lookupAgentUrl: async (serverId) => (await sys.inventory.getServer(serverId)).agentUrl, tls: sys.agentTls });
  const temporal = { client: sys.temporal.client, taskQueue: sys.temporal.taskQueue };
  const hostService = createHostService({
    inventory: sys.inventory,
    agents,
    temporal,
    logger,
    maxRequestsInFlightPerMigration: opts.maxRequestsInFlightPerMigration,
  });
  const operatorToken = `op_${randomBytes(24).toString('hex')}`;
  const api = await startApiServer({
    inventory: sys.inventory,
    hostService,
    temporal,
    pool: sys.db.pool,
    operatorToken,
    logger,
    port: 0,
    ...(opts.bodyLimitBytes ? { bodyLimitBytes: opts.bodyLimitBytes } : {}),
    ...(opts.limits ? { limits: opts.limits } : {}),
    rateLimits: opts.rateLimits ?? { perAddressPerSecond: 100_000, operatorPerSecond: 100_000 },
  });

  const call = async (method: string, path: string, o: CallOptions = {}): Promise<ApiResponse> => {
    const headers: Record<string, string> = { ...(o.headers ?? {}) };
    const token = o.token === undefined ? null : o.token;
    if (token !== null) headers.authorization = `Bearer ${token}`;
    if (o.idempotencyKey !== undefined) headers['idempotency-key'] = o.idempotencyKey;
    let body: string | undefined;
    if (o.rawBody !== undefined) body = o.rawBody;
    else if (o.body !== undefined) body = JSON.stringify(o.body);
    if (body !== undefined) headers['content-type'] = o.contentType ?? 'application/json';
    const res = await fetch(`${api.url}${path}`, { method, headers, body });
    const text = await res.text();
    let parsed: unknown = undefined;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    return { status: res.status, body: parsed, text, headers: res.headers };
  };

  let n = 0;
  return {
    sys,
    api,
    hostService,
    operatorToken,
    logs,
    call,
    async tenant(name) {
      const r = await call('POST', '/v1/tenants', { token: operatorToken, body: { name: name ?? `tenant-${++n}` } });
      if (r.status !== 201) throw new Error(`creating a tenant: ${r.status} ${r.text}`);
      if ((opts.tenantQuotas ?? 'generous') === 'generous')
        await sys.inventory.setTenantQuotas({ tenantId: r.body.id, hostsPerZoneClass: 1000, requestsPerSecond: 100_000, actor: 'test' });
      return { id: r.body.id, token: r.body.token };
    },
    async host(token, o = {}) {
      const r = await call('POST', '/v1/dedicated-hosts', {
        token,
        body: { name: o.name ?? `host-${++n}`, zone: o.zone ?? 'zone-a', resourceClass: o.resourceClass ?? 'std' },
      });
      if (r.status !== 201) throw new Error(`creating a host: ${r.status} ${r.text}`);
      return r.body;
    },
    async vm(token, hostId, spec = {}) {
      const r = await call('POST', `/v1/dedicated-hosts/${hostId}/vms`, {
        token,
        body: { name: `vm-${++n}`, vcpus: 1, memoryMiB: 512, diskGiB: 10, ...spec },
      });
      if (r.status !== 201) throw new Error(`creating a VM: ${r.status} ${r.text}`);
      return r.body;
    },
    async counts() {
      const { rows } = await sys.db.pool.query<Record<string, string>>(`
        SELECT (SELECT count(*) FROM tenants) AS tenants,
               (SELECT count(*) FROM dedicated_hosts) AS hosts,
               (SELECT count(*) FROM host_incarnations) AS incarnations,
               (SELECT count(*) FROM vms) AS vms,
               (SELECT count(*) FROM vms WHERE state = 'running') AS running_vms,
               (SELECT count(*) FROM host_migrations) AS migrations,
               (SELECT count(*) FROM volumes) AS volumes,
               (SELECT string_agg(id || '=' || coalesce(attached_vm_id, '-'), ',' ORDER BY id) FROM volumes) AS attachments,
               (SELECT count(*) FROM audit_events) AS audit_events,
               (SELECT string_agg(id || '=' || state, ',' ORDER BY id) FROM physical_servers) AS servers`);
      return rows[0]!;
    },
    async stop() {
      await api.stop();
      await sys.stop();
    },
  };
}

export const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

import { createHash } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { Pool } from 'pg';
import pino from 'pino';
import { startApiServer } from '../../api/server';
import { routes, type RouteSpec } from '../../api/schemas';
import { eventually } from '../support/system';
import { testFleet } from '../support/fleets';
import { startApiTestSystem, type ApiTestSystem } from './helpers';

/**
 * Every route of the API against the real system: happy path, each error code it gives, tenant isolation, and
 * Idempotency-Key retries. The migration flow itself is in migration.test.ts, hostile input in hostile.test.ts.
 */

const TENANT_HOST_KEYS = ['available', 'capacity', 'createdAt', 'id', 'migration', 'name', 'resourceClass', 'state', 'vmCount', 'zone'];
const TENANT_VM_KEYS = ['createdAt', 'dedicatedHostId', 'deletedAt', 'diskGiB', 'disks', 'id', 'memoryMiB', 'name', 'state', 'vcpus', 'workload'];

describe('HTTP API routes', () => {
  let t: ApiTestSystem;
  let op: string;
  let a: { id: string; token: string };
  let b: { id: string; token: string };
  let hostA: any;
  let hostB: any;
  const missingHost = 'dh-does-not-exist';

  beforeAll(async () => {
    t = await startApiTestSystem({ fleet: testFleet({ servers: 10 }), timeScale: 200 });
    op = t.operatorToken;
    a = await t.tenant('tenant A');
    b = await t.tenant('tenant B');
    hostA = await t.host(a.token, { name: 'host of A' });
    hostB = await t.host(b.token, { name: 'host of B' });
  });
  afterAll(async () => {
    await t?.stop();
  });

  /** The 404 for another tenant's object must read exactly like the one for a missing object (ids swapped). */
  const expectSameAsMissing = (other: { status: number; body: any }, missing: { status: number; body: any }, otherId: string, missingId: string) => {
    expect(other.status).toBe(404);
    expect(missing.status).toBe(404);
    expect(JSON.stringify(other.body).split(otherId).join('<id>')).toBe(JSON.stringify(missing.body).split(missingId).join('<id>'));
  };

  describe('GET /openapi.json', () => {
    it('documents every route of the catalog with its schemas, and every catalog route is served', async () => {
      const r = await t.call('GET', '/openapi.json');
      expect(r.status).toBe(200);
      expect(r.body.openapi).toBe('3.1.0');
      const specs = Object.values(routes) as RouteSpec[];
      for (const spec of specs) {
        const path = spec.url.replace(/:([A-Za-z]+)/g, '{$1}');
        const operation = r.body.paths[path]?.[spec.method.toLowerCase()];
        expect(operation).toBeDefined();
        expect(Object.keys(operation.responses).length).toBeGreaterThan(0);
        if (spec.body) expect(operation.requestBody.content['application/json'].schema.additionalProperties).toBe(false);
        if (spec.idempotent) expect(operation.parameters.some((p: any) => p.name === 'Idempotency-Key')).toBe(true);
        expect(t.api.app.hasRoute({ method: spec.method, url: spec.url })).toBe(true);
      }
      // The VM body says what the API accepts, bounds included.
      const vmBody = r.body.paths['/v1/dedicated-hosts/{id}/vms'].post.requestBody.content['application/json'].schema;
      expect(vmBody.required).toEqual(expect.arrayContaining(['name', 'vcpus', 'memoryMiB', 'diskGiB']));
      expect(vmBody.properties.memoryMiB.maximum).toBeGreaterThan(0);
      expect(r.body.components.securitySchemes.bearer.scheme).toBe('bearer');
    });
  });

  describe('GET /healthz', () => {
    it('200 when Postgres and Temporal answer, without a token', async () => {
      const r = await t.call('GET', '/healthz');
      expect(r).toMatchObject({ status: 200, body: { status: 'ok', postgres: 'ok', temporal: 'ok' } });
    });

    it('503 naming what does not answer when Postgres or Temporal is down', async () => {
      const logger = pino({ level: 'silent' });
      const deadPool = new Pool({ connectionString: 'postgres://dhm@127.0.0.1:1/none', connectionTimeoutMillis: 1000 });
      deadPool.on('error', () => undefined);
      const deadConnection = Connection.lazy({ address: '127.0.0.1:1' });
      const deadTemporal = { client: new Client({ connection: deadConnection }), taskQueue: 'none' };
      const base = { inventory: t.sys.inventory, hostService: {} as never, operatorToken: t.operatorToken, logger };
      const noPg = await startApiServer({ ...base, port: 0, pool: deadPool, temporal: { client: t.sys.temporal.client, taskQueue: t.sys.temporal.taskQueue } });
      const noTemporal = await startApiServer({ ...base, port: 0, pool: t.sys.db.pool, temporal: deadTemporal });
      try {
        const r1 = await fetch(`${noPg.url}/healthz`);
        expect(r1.status).toBe(503);
        expect(await r1.json()).toEqual({ status: 'unavailable', postgres: 'unavailable', temporal: 'ok' });
        const r2 = await fetch(`${noTemporal.url}/healthz`);
        expect(r2.status).toBe(503);
        expect(await r2.json()).toEqual({ status: 'unavailable', postgres: 'ok', temporal: 'unavailable' });
      } finally {
        await noPg.stop();
        await noTemporal.stop();
        await deadPool.end();
        await deadConnection.close().catch(() => undefined);
      }
    });
  });

  it('an unexpected error is a 500 with a generic message, logged in full; its Idempotency-Key is released for the retry', async () => {
    const logs: string[] = [];
    const logger = pino({ level: 'error' }, { write: (l: string) => void logs.push(l) });
    let failures = 1;
    const flaky = {
      ...t.hostService,
      createVm: async (input: Parameters<typeof t.hostService.createVm>[0]) => {
        if (failures-- > 0) throw new Error('boom: agent exploded in an unexpected way');
        return t.hostService.createVm(input);
      },
    };
    const api = await startApiServer({
      inventory: t.sys.inventory,
      hostService: flaky,
      temporal: { client: t.sys.temporal.client, taskQueue: t.sys.temporal.taskQueue },
      pool: t.sys.db.pool,
      operatorToken: t.operatorToken,
      logger,
      port: 0,
    });
    try {
      const send = () =>
        fetch(`${api.url}/v1/dedicated-hosts/${hostA.id}/vms`, {
          method: 'POST',
          headers: { authorization: `Bearer ${a.token}`, 'content-type': 'application/json', 'idempotency-key': 'flaky-1' },
          body: JSON.stringify({ name: 'flaky', vcpus: 1, memoryMiB: 128, diskGiB: 1 }),
        });
      const first = await send();
      expect(first.status).toBe(500);
      expect(await first.json()).toEqual({ error: { code: 'INTERNAL', message: 'internal error; it has been logged' } });
      expect(logs.join('\n')).toContain('boom: agent exploded');
      expect(logs.join('\n')).not.toContain(a.token);
      const retry = await send();
      expect(retry.status).toBe(201);
      expect(((await retry.json()) as { name: string }).name).toBe('flaky');
    } finally {
      await api.stop();
    }
  });

  describe('authentication and authorization', () => {
    const privateRoutes: Array<[string, string]> = [
      ['POST', '/v1/tenants'],
      ['GET', '/v1/physical-servers'],
      ['POST', '/v1/dedicated-hosts'],
      ['GET', '/v1/dedicated-hosts'],
      ['GET', '/v1/dedicated-hosts/dh-x'],
      ['GET', '/v1/dedicated-hosts/dh-x/vms'],
      ['POST', '/v1/dedicated-hosts/dh-x/vms'],
      ['GET', '/v1/vms/vm-x'],
      ['DELETE', '/v1/vms/vm-x'],
      ['GET', '/v1/dedicated-hosts/dh-x/events'],
      ['POST', '/v1/dedicated-hosts/dh-x/migrations'],
      ['GET', '/v1/migrations'],
      ['GET', '/v1/migrations/migration-dh-x'],
      ['POST', '/v1/migrations/migration-dh-x/cancel'],
    ];

    it('401 with WWW-Authenticate for a missing, malformed or wrong token on every private route; nothing changes', async () => {
      const before = await t.counts();
      const bad: Array<Record<string, string>> = [
        {},
        { authorization: 'Basic b3A6b3A=' },
        { authorization: 'Bearer' },
        { authorization: 'Bearer ' },
        { authorization: `Bearer ${'x'.repeat(600)}` },
        { authorization: `Bearer ${op}x` },
        { authorization: `Bearer ${op.slice(0, -1)}` },
        { authorization: `Bearer ${a.token.toUpperCase()}` },
        { authorization: `Token ${op}` },
        { authorization: `Bearer ${op} extra` },
      ];
      for (const [method, path] of privateRoutes) {
        for (const headers of bad) {
          const r = await t.call(method, path, { headers, ...(method === 'POST' ? { body: { name: 'x' } } : {}) });
          expect([method, path, headers, r.status]).toEqual([method, path, headers, 401]);
          expect(r.body.error.code).toBe('UNAUTHORIZED');
          expect(r.headers.get('www-authenticate')).toBe('Bearer');
        }
      }
      expect(await t.counts()).toEqual(before);
    });

    it('a tenant gets 403 on operator-only routes, the same answer whatever the id names (own, other, missing); nothing starts', async () => {
      const before = await t.counts();
      const answers: string[] = [];
      const operatorOnly: Array<[string, string, unknown?]> = [
        ['POST', '/v1/tenants', { name: 'sneaky' }],
        ['GET', '/v1/physical-servers'],
        ['GET', '/v1/migrations'],
        ...[hostA.id, hostB.id, missingHost].flatMap((h): Array<[string, string, unknown?]> => [
          ['POST', `/v1/dedicated-hosts/${h}/migrations`, {}],
          ['GET', `/v1/migrations/migration-${h}`],
          ['POST', `/v1/migrations/migration-${h}/cancel`, {}],
        ]),
      ];
      for (const [method, path, body] of operatorOnly) {
        const r = await t.call(method, path, { token: a.token, ...(body !== undefined ? { body } : {}) });
        expect([method, path, r.status]).toEqual([method, path, 403]);
        answers.push(JSON.stringify(r.body));
      }
      expect(new Set(answers)).toEqual(new Set([JSON.stringify({ error: { code: 'FORBIDDEN', message: 'operators only' } })]));
      expect(await t.counts()).toEqual(before);
      for (const h of [hostA.id, hostB.id]) {
        await expect(t.sys.temporal.client.workflow.getHandle(`migration-${h}`).describe()).rejects.toThrow(/not found/i);
      }
    });

    it('unknown routes answer 404 in the error format', async () => {
      const r = await t.call('GET', '/v1/nothing-here', { token: op });
      expect(r.status).toBe(404);
      expect(r.body.error.code).toBe('NOT_FOUND');
    });
  });

  describe('POST /v1/tenants', () => {
    it('201 with a token shown once, stored only as its sha256; the token authenticates the tenant', async () => {
      const r = await t.call('POST', '/v1/tenants', { token: op, body: { name: 'Acme GmbH' } });
      expect(r.status).toBe(201);
      expect(Object.keys(r.body).sort()).toEqual(['createdAt', 'id', 'name', 'token']);
      expect(r.body.name).toBe('Acme GmbH');
      const { rows } = await t.sys.db.pool.query('SELECT token_hash FROM tenants WHERE id = $1', [r.body.id]);
      expect(rows[0].token_hash).toBe(createHash('sha256').update(r.body.token).digest('hex'));
      const mine = await t.call('GET', '/v1/dedicated-hosts', { token: r.body.token });
      expect(mine).toMatchObject({ status: 200, body: { hosts: [] } });
    });

    it('400 naming the field for a missing, mistyped, unknown, too long or control-character name; nothing created', async () => {
      const before = await t.counts();
      const cases: Array<[unknown, string]> = [
        [{}, 'name'],
        [{ name: 42 }, 'name'],
        [{ name: '' }, 'name'],
        [{ name: 'x'.repeat(201) }, 'name'],
        [{ name: 'bell\u0007' }, 'name'],
        [{ name: 'ok', admin: true }, 'admin'],
        [[{ name: 'ok' }], 'body'],
        ['just a string', 'body'],
        [null, 'body'],
      ];
      for (const [body, field] of cases) {
        const r = await t.call('POST', '/v1/tenants', { token: op, body });
        expect([body, r.status, r.body.error.code, r.body.error.field]).toEqual([body, 400, 'INVALID_INPUT', field]);
        expect(r.body.error.message).toContain(field === 'body' ? '' : field);
      }
      expect(await t.counts()).toEqual(before);
    });

    it('malformed JSON → 400, another content type → 415, a body over the limit → 413', async () => {
      const before = await t.counts();
      const malformed = await t.call('POST', '/v1/tenants', { token: op, rawBody: '{"name": "x",' });
      expect(malformed.status).toBe(400);
      expect(malformed.body.error).toMatchObject({ code: 'INVALID_INPUT', field: 'body' });
      const text = await t.call('POST', '/v1/tenants', { token: op, rawBody: 'name=x', contentType: 'text/plain' });
      expect(text.status).toBe(415);
      expect(text.body.error.code).toBe('UNSUPPORTED_MEDIA_TYPE');
      const big = await t.call('POST', '/v1/tenants', { token: op, body: { name: 'x'.repeat(200 * 1024) } });
      expect(big.status).toBe(413);
      expect(big.body.error.code).toBe('PAYLOAD_TOO_LARGE');
      expect(await t.counts()).toEqual(before);
    });

    it('Idempotency-Key: a retry returns the first answer (same tenant, same token) and creates one tenant; the stored answer is sealed', async () => {
      const before = Number((await t.counts()).tenants);
      const key = `tenant-key-${Date.now()}`;
      const first = await t.call('POST', '/v1/tenants', { token: op, body: { name: 'Retry Ltd' }, idempotencyKey: key });
      const again = await t.call('POST', '/v1/tenants', { token: op, body: { name: 'Retry Ltd' }, idempotencyKey: key });
      expect(first.status).toBe(201);
      expect(again.status).toBe(201);
      expect(again.body).toEqual(first.body);
      expect(again.headers.get('idempotent-replayed')).toBe('true');
      expect(Number((await t.counts()).tenants)).toBe(before + 1);
      // Tokens live in the database only as hashes: the idempotency record holds the answer sealed.
      const { rows } = await t.sys.db.pool.query('SELECT body::text AS body FROM api_idempotency_keys WHERE key = $1', [key]);
      expect(rows).toHaveLength(1);
      expect(rows[0].body).not.toContain(first.body.token);
      expect(rows[0].body).not.toContain('Retry Ltd');
      // The same key for another request is refused.
      const other = await t.call('POST', '/v1/tenants', { token: op, body: { name: 'Other Ltd' }, idempotencyKey: key });
      expect(other.status).toBe(422);
      expect(other.body.error).toMatchObject({ code: 'IDEMPOTENCY_KEY_REUSED', field: 'Idempotency-Key' });
      // A bad key is bad input.
      for (const badKey of ['', 'x'.repeat(201), 'with space']) {
        const r = await t.call('POST', '/v1/tenants', { token: op, body: { name: 'K' }, headers: { 'idempotency-key': badKey } });
        expect([badKey, r.status, r.body.error.field]).toEqual([badKey, 400, 'Idempotency-Key']);
      }
      expect(Number((await t.counts()).tenants)).toBe(before + 1);
      // Bad input is answered before the key is taken: fix the body and send it again under the same key.
      const fixKey = `tenant-fix-${Date.now()}`;
      const wrong = await t.call('POST', '/v1/tenants', { token: op, body: { name: 7 }, idempotencyKey: fixKey });
      expect(wrong.status).toBe(400);
      const fixed = await t.call('POST', '/v1/tenants', { token: op, body: { name: 'Fixed' }, idempotencyKey: fixKey });
      expect(fixed.status).toBe(201);
    });

    it('concurrent retries with one key act once', async () => {
      const before = Number((await t.counts()).tenants);
      const key = `tenant-burst-${Date.now()}`;
      const answers = await Promise.all(
        Array.from({ length: 8 }, () => t.call('POST', '/v1/tenants', { token: op, body: { name: 'Burst' }, idempotencyKey: key })),
      );
      expect(answers.map((r) => r.status)).toEqual(Array(8).fill(201));
      expect(new Set(answers.map((r) => r.body.id)).size).toBe(1);
      expect(Number((await t.counts()).tenants)).toBe(before + 1);
    });
  });

  describe('GET /v1/physical-servers', () => {
    it('the fleet with state and what runs where; filters; 400 for bad filters', async () => {
      const r = await t.call('GET', '/v1/physical-servers', { token: op });
      expect(r.status).toBe(200);
      expect(r.body.servers).toHaveLength(t.sys.fleet.servers.length);
      const hostAOp = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}`, { token: op });
      const srv = r.body.servers.find((s: any) => s.id === hostAOp.body.physicalServerId);
      expect(srv.state).toBe('allocated');
      expect(srv.runs).toMatchObject({ dedicatedHostId: hostA.id, tenantId: a.id, role: 'primary' });
      const free = await t.call('GET', '/v1/physical-servers?state=available&zone=zone-a&resourceClass=std', { token: op });
      expect(free.status).toBe(200);
      expect(free.body.servers.length).toBeGreaterThan(0);
      for (const s of free.body.servers) expect(s).toMatchObject({ state: 'available', zone: 'zone-a', resourceClass: 'std', runs: null });
      for (const [q, field] of [
        ['state=bogus', 'query.state'],
        ['zone=NOT%20AN%20ID', 'query.zone'],
        ['color=red', 'query.color'],
        ['state=available&state=failed', 'query.state'],
      ]) {
        const bad = await t.call('GET', `/v1/physical-servers?${q}`, { token: op });
        expect([q, bad.status, bad.body.error.field]).toEqual([q, 400, field]);
      }
    });
  });

  describe('dedicated hosts', () => {
    it('POST by a tenant: 201, the logical view only (no physical server, no tenant id)', async () => {
      expect(Object.keys(hostA).sort()).toEqual(TENANT_HOST_KEYS);
      expect(hostA).toMatchObject({ name: 'host of A', zone: 'zone-a', resourceClass: 'std', state: 'active', vmCount: 0, migration: null });
      expect(hostA.capacity).toEqual({ vcpus: 32, memoryMiB: 65536, diskGiB: 1000 });
      expect(hostA.available).toEqual(hostA.capacity);
    });

    it('POST by an operator names the tenant and sees the physical server; 400 without tenantId, 404 for an unknown tenant', async () => {
      const r = await t.call('POST', '/v1/dedicated-hosts', { token: op, body: { name: 'op-made', zone: 'zone-a', resourceClass: 'std', tenantId: a.id } });
      expect(r.status).toBe(201);
      expect(r.body.tenantId).toBe(a.id);
      expect(r.body.physicalServerId).toMatch(/^zone-a-std-/);
      const before = await t.counts();
      const noTenant = await t.call('POST', '/v1/dedicated-hosts', { token: op, body: { name: 'x', zone: 'zone-a', resourceClass: 'std' } });
      expect(noTenant.status).toBe(400);
      expect(noTenant.body.error.field).toBe('tenantId');
      const unknownTenant = await t.call('POST', '/v1/dedicated-hosts', {
        token: op,
        body: { name: 'x', zone: 'zone-a', resourceClass: 'std', tenantId: 'tn-nobody' },
      });
      expect(unknownTenant.status).toBe(404);
      expect(unknownTenant.body.error.field).toBe('tenantId');
      // A tenant cannot create a host for someone else.
      const forOther = await t.call('POST', '/v1/dedicated-hosts', {
        token: a.token,
        body: { name: 'x', zone: 'zone-a', resourceClass: 'std', tenantId: b.id },
      });
      expect(forOther.status).toBe(400);
      expect(forOther.body.error.field).toBe('tenantId');
      expect(await t.counts()).toEqual(before);
    });

    it('400 for malformed fields, 404 for a zone or class the fleet does not have; 409 NO_MATCHING_SERVER when no free server matches; nothing changes', async () => {
      const before = await t.counts();
      for (const [body, field] of [
        [{ name: 'h', zone: 'zone-zz', resourceClass: 'std' }, 'zone'],
        [{ name: 'h', zone: 'zone-a', resourceClass: 'huge' }, 'resourceClass'],
      ] as const) {
        const r = await t.call('POST', '/v1/dedicated-hosts', { token: a.token, body });
        expect([body, r.status, r.body.error.code, r.body.error.field]).toEqual([body, 404, 'NOT_FOUND', field]);
      }
      const cases: Array<[unknown, string]> = [
        [{ name: 'h', zone: 'Zone A', resourceClass: 'std' }, 'zone'],
        [{ zone: 'zone-a', resourceClass: 'std' }, 'name'],
        [{ name: 'h', zone: 'zone-a', resourceClass: 'std', vcpus: 4 }, 'vcpus'],
        [{ name: ['h'], zone: 'zone-a', resourceClass: 'std' }, 'name'],
      ];
      for (const [body, field] of cases) {
        const r = await t.call('POST', '/v1/dedicated-hosts', { token: a.token, body });
        expect([body, r.status, r.body.error.code, r.body.error.field]).toEqual([body, 400, 'INVALID_INPUT', field]);
      }
      expect(await t.counts()).toEqual(before);
      // The fleet has one small server.
      const small = await t.call('POST', '/v1/dedicated-hosts', { token: b.token, body: { name: 'small one', zone: 'zone-a', resourceClass: 'small' } });
      expect(small.status).toBe(201);
      const mid = await t.counts();
      const none = await t.call('POST', '/v1/dedicated-hosts', { token: b.token, body: { name: 'small two', zone: 'zone-a', resourceClass: 'small' } });
      expect(none.status).toBe(409);
      expect(none.body.error.code).toBe('NO_MATCHING_SERVER');
      expect(await t.counts()).toEqual(mid);
    });

    it('Idempotency-Key: a retried create returns the same host and allocates one server', async () => {
      const before = await t.counts();
      const body = { name: 'retried host', zone: 'zone-a', resourceClass: 'std' };
      const first = await t.call('POST', '/v1/dedicated-hosts', { token: a.token, body, idempotencyKey: 'host-1' });
      const again = await t.call('POST', '/v1/dedicated-hosts', { token: a.token, body, idempotencyKey: 'host-1' });
      expect(first.status).toBe(201);
      expect(again).toMatchObject({ status: 201, body: first.body });
      expect(Number((await t.counts()).hosts)).toBe(Number(before.hosts) + 1);
      // The same key of another principal is another request.
      const otherTenant = await t.call('POST', '/v1/dedicated-hosts', { token: b.token, body, idempotencyKey: 'host-1' });
      expect(otherTenant.status).toBe(201);
      expect(otherTenant.body.id).not.toBe(first.body.id);
      const reused = await t.call('POST', '/v1/dedicated-hosts', { token: a.token, body: { ...body, name: 'another' }, idempotencyKey: 'host-1' });
      expect(reused.status).toBe(422);
      expect(Number((await t.counts()).hosts)).toBe(Number(before.hosts) + 2);
    });

    it('GET lists and reads only the caller’s hosts; another tenant’s host answers 404 exactly like a missing one', async () => {
      const listA = await t.call('GET', '/v1/dedicated-hosts', { token: a.token });
      expect(listA.status).toBe(200);
      expect(listA.body.hosts.length).toBeGreaterThan(0);
      expect(listA.body.hosts.map((h: any) => h.id)).toContain(hostA.id);
      expect(listA.body.hosts.map((h: any) => h.id)).not.toContain(hostB.id);
      for (const h of listA.body.hosts) expect(Object.keys(h).sort()).toEqual(TENANT_HOST_KEYS);
      const all = await t.call('GET', '/v1/dedicated-hosts', { token: op });
      expect(all.body.hosts.map((h: any) => h.id)).toEqual(expect.arrayContaining([hostA.id, hostB.id]));
      for (const h of all.body.hosts) expect(h.physicalServerId).toMatch(/^zone-a-/);

      const own = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}`, { token: a.token });
      expect(own).toMatchObject({ status: 200, body: { id: hostA.id, name: 'host of A' } });
      expect(Object.keys(own.body).sort()).toEqual(TENANT_HOST_KEYS);
      const other = await t.call('GET', `/v1/dedicated-hosts/${hostB.id}`, { token: a.token });
      const missing = await t.call('GET', `/v1/dedicated-hosts/${missingHost}`, { token: a.token });
      expectSameAsMissing(other, missing, hostB.id, missingHost);
      expect(other.body.error.code).toBe('NOT_FOUND');
      const malformed = await t.call('GET', '/v1/dedicated-hosts/NOT%20AN%20ID', { token: a.token });
      expect(malformed.status).toBe(400);
      expect(malformed.body.error.field).toBe('params.id');
      const extra = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}?verbose=1`, { token: a.token });
      expect(extra.status).toBe(400);
      expect(extra.body.error.field).toBe('query.verbose');
      const extraList = await t.call('GET', '/v1/dedicated-hosts?tenantId=x', { token: a.token });
      expect(extraList.status).toBe(400);
    });
  });

  describe('VMs', () => {
    it('POST /v1/dedicated-hosts/:id/vms: 201, the VM carries the logical host id; tenants see no placement, operators do', async () => {
      const r = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, {
        token: a.token,
        body: { name: 'web-1', vcpus: 2, memoryMiB: 2048, diskGiB: 20, workload: { dirtyRateMiBps: 5, workingSetMiB: 128 } },
      });
      expect(r.status).toBe(201);
      expect(Object.keys(r.body).sort()).toEqual(TENANT_VM_KEYS);
      expect(r.body).toMatchObject({ name: 'web-1', dedicatedHostId: hostA.id, vcpus: 2, memoryMiB: 2048, diskGiB: 20, state: 'running', deletedAt: null });
      const asOp = await t.call('GET', `/v1/vms/${r.body.id}`, { token: op });
      expect(asOp.status).toBe(200);
      expect(asOp.body).toMatchObject({ id: r.body.id, tenantId: a.id, dedicatedHostId: hostA.id });
      expect(asOp.body.physicalServerId).toMatch(/^zone-a-std-/);
      // It really runs on the host's server.
      const agentVm = await t.sys.agent(asOp.body.physicalServerId).getVm(r.body.id);
      expect(agentVm?.state).toBe('running');
      const host = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}`, { token: a.token });
      expect(host.body.vmCount).toBeGreaterThanOrEqual(1);
      expect(host.body.available.vcpus).toBeLessThanOrEqual(hostA.capacity.vcpus - 2);
    });

    it('400 naming the field for bad specs (negative, absurd 10^12 MiB, fractional, wrong type, missing, unknown); nothing created', async () => {
      const before = await t.counts();
      const ok = { name: 'v', vcpus: 1, memoryMiB: 512, diskGiB: 10 };
      const cases: Array<[unknown, string]> = [
        [{ ...ok, vcpus: -1 }, 'vcpus'],
        [{ ...ok, vcpus: 0 }, 'vcpus'],
        [{ ...ok, memoryMiB: 1e12 }, 'memoryMiB'],
        [{ ...ok, diskGiB: 1.5 }, 'diskGiB'],
        [{ ...ok, vcpus: '2' }, 'vcpus'],
        [{ ...ok, memoryMiB: null }, 'memoryMiB'],
        [{ name: 'v', vcpus: 1, memoryMiB: 512 }, 'diskGiB'],
        [{ ...ok, gpu: 1 }, 'gpu'],
        [{ ...ok, workload: { dirtyRateMiBps: -5, workingSetMiB: 1 } }, 'workload.dirtyRateMiBps'],
        [{ ...ok, workload: { dirtyRateMiBps: 1, workingSetMiB: 1, evil: true } }, 'workload.evil'],
        [{ ...ok, name: 'n'.repeat(129) }, 'name'],
      ];
      for (const [body, field] of cases) {
        const r = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token, body });
        expect([body, r.status, r.body.error.code, r.body.error.field]).toEqual([body, 400, 'INVALID_INPUT', field]);
      }
      // JSON numbers beyond doubles parse as Infinity: still a 400 naming the field.
      const infinite = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, {
        token: a.token,
        rawBody: '{"name":"v","vcpus":1e309,"memoryMiB":512,"diskGiB":10}',
      });
      expect([infinite.status, infinite.body.error.field]).toEqual([400, 'vcpus']);
      expect(await t.counts()).toEqual(before);
    });

    it('409 INSUFFICIENT_CAPACITY naming the resource when the host is full; 404 for another tenant’s host; nothing created', async () => {
      const before = await t.counts();
      const full = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, {
        token: a.token,
        body: { name: 'too big', vcpus: 32, memoryMiB: 1024, diskGiB: 10 },
      });
      expect(full.status).toBe(409);
      expect(full.body.error).toMatchObject({ code: 'INSUFFICIENT_CAPACITY', field: 'vcpus' });
      expect(full.body.error.details).toMatchObject({ resource: 'vcpus', needed: 32 });
      const intoOther = await t.call('POST', `/v1/dedicated-hosts/${hostB.id}/vms`, {
        token: a.token,
        body: { name: 'intruder', vcpus: 1, memoryMiB: 512, diskGiB: 10 },
      });
      const intoMissing = await t.call('POST', `/v1/dedicated-hosts/${missingHost}/vms`, {
        token: a.token,
        body: { name: 'intruder', vcpus: 1, memoryMiB: 512, diskGiB: 10 },
      });
      expectSameAsMissing(intoOther, intoMissing, hostB.id, missingHost);
      expect(await t.counts()).toEqual(before);
    });

    it('Idempotency-Key: a retried create returns the same VM and creates one; another body under the key is refused', async () => {
      const before = await t.counts();
      const body = { name: 'idem-vm', vcpus: 1, memoryMiB: 256, diskGiB: 5 };
      const first = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token, body, idempotencyKey: 'vm-key-1' });
      const [again, again2] = await Promise.all([
        t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token, body, idempotencyKey: 'vm-key-1' }),
        t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token, body, idempotencyKey: 'vm-key-1' }),
      ]);
      expect(first.status).toBe(201);
      for (const r of [again, again2]) expect(r).toMatchObject({ status: 201, body: first.body });
      expect(Number((await t.counts()).vms)).toBe(Number(before.vms) + 1);
      const reused = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token, body: { ...body, vcpus: 2 }, idempotencyKey: 'vm-key-1' });
      expect(reused.status).toBe(422);
      // A refusal is an answer too: its retry gets the same refusal and changes nothing.
      const big = { name: 'big', vcpus: 32, memoryMiB: 256, diskGiB: 5 };
      const refused = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token, body: big, idempotencyKey: 'vm-key-2' });
      const refusedAgain = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token, body: big, idempotencyKey: 'vm-key-2' });
      expect(refused.status).toBe(409);
      expect(refusedAgain).toMatchObject({ status: 409, body: refused.body });
      expect(Number((await t.counts()).vms)).toBe(Number(before.vms) + 1);
    });

    it('GET /v1/dedicated-hosts/:id/vms and /v1/vms/:id: own 200, another tenant’s 404 like a missing one; includeDeleted', async () => {
      const vmA = await t.vm(a.token, hostA.id, { name: 'listed' });
      const vmB = await t.vm(b.token, hostB.id, { name: 'secret of B' });
      const list = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token });
      expect(list.status).toBe(200);
      expect(list.body.vms.map((v: any) => v.id)).toContain(vmA.id);
      for (const v of list.body.vms) {
        expect(Object.keys(v).sort()).toEqual(TENANT_VM_KEYS);
        expect(v.dedicatedHostId).toBe(hostA.id);
      }
      const otherList = await t.call('GET', `/v1/dedicated-hosts/${hostB.id}/vms`, { token: a.token });
      const missingList = await t.call('GET', `/v1/dedicated-hosts/${missingHost}/vms`, { token: a.token });
      expectSameAsMissing(otherList, missingList, hostB.id, missingHost);
      const badQuery = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}/vms?includeDeleted=yes`, { token: a.token });
      expect(badQuery.status).toBe(400);
      expect(badQuery.body.error.field).toBe('query.includeDeleted');

      const one = await t.call('GET', `/v1/vms/${vmA.id}`, { token: a.token });
      expect(one).toMatchObject({ status: 200, body: { id: vmA.id, name: 'listed', dedicatedHostId: hostA.id } });
      const otherVm = await t.call('GET', `/v1/vms/${vmB.id}`, { token: a.token });
      const missingVm = await t.call('GET', '/v1/vms/vm-missing', { token: a.token });
      expectSameAsMissing(otherVm, missingVm, vmB.id, 'vm-missing');
      const malformed = await t.call('GET', '/v1/vms/..%2F..%2Fetc', { token: a.token });
      expect(malformed.status).toBe(400);
      // Operators see every VM, with placement.
      const opList = await t.call('GET', `/v1/dedicated-hosts/${hostB.id}/vms`, { token: op });
      expect(opList.body.vms.find((v: any) => v.id === vmB.id)).toMatchObject({ tenantId: b.id, physicalServerId: expect.stringMatching(/^zone-a-/) });
    });

    it('DELETE /v1/vms/:id: own 200 and idempotent; another tenant’s 404 and still running; the VM leaves its agent', async () => {
      const vmA = await t.vm(a.token, hostA.id, { name: 'doomed' });
      const vmB = await t.vm(b.token, hostB.id, { name: 'safe' });
      const before = await t.counts();
      const other = await t.call('DELETE', `/v1/vms/${vmB.id}`, { token: a.token });
      const missing = await t.call('DELETE', '/v1/vms/vm-missing', { token: a.token });
      expectSameAsMissing(other, missing, vmB.id, 'vm-missing');
      expect(await t.counts()).toEqual(before);
      expect((await t.call('GET', `/v1/vms/${vmB.id}`, { token: b.token })).body.state).toBe('running');

      const placement = await t.call('GET', `/v1/vms/${vmA.id}`, { token: op });
      const del = await t.call('DELETE', `/v1/vms/${vmA.id}`, { token: a.token });
      expect(del).toMatchObject({ status: 200, body: { id: vmA.id, state: 'deleted', dedicatedHostId: hostA.id } });
      expect(del.body.deletedAt).toEqual(expect.any(String));
      expect(await t.sys.agent(placement.body.physicalServerId).getVm(vmA.id)).toBeNull();
      const again = await t.call('DELETE', `/v1/vms/${vmA.id}`, { token: a.token });
      expect(again).toMatchObject({ status: 200, body: { id: vmA.id, state: 'deleted' } });
      const withDeleted = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}/vms?includeDeleted=true`, { token: a.token });
      expect(withDeleted.body.vms.find((v: any) => v.id === vmA.id)?.state).toBe('deleted');
      const without = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token });
      expect(without.body.vms.map((v: any) => v.id)).not.toContain(vmA.id);
      // With a key, a retried delete replays its first answer.
      const vm2 = await t.vm(a.token, hostA.id, { name: 'doomed-2' });
      const d1 = await t.call('DELETE', `/v1/vms/${vm2.id}`, { token: a.token, idempotencyKey: 'del-1' });
      const d2 = await t.call('DELETE', `/v1/vms/${vm2.id}`, { token: a.token, idempotencyKey: 'del-1' });
      expect(d2).toMatchObject({ status: 200, body: d1.body });
      expect(d2.headers.get('idempotent-replayed')).toBe('true');
    });
  });

  describe('GET /v1/dedicated-hosts/:id/events', () => {
    it('the audit log: tenants without physical details or physical events; operators with; another tenant’s 404; paging', async () => {
      await t.vm(a.token, hostA.id, { name: 'audited' });
      const mine = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}/events`, { token: a.token });
      expect(mine.status).toBe(200);
      const actions = mine.body.events.map((e: any) => e.action);
      expect(actions).toEqual(expect.arrayContaining(['host.created', 'vm.placed']));
      for (const e of mine.body.events) {
        expect(e).not.toHaveProperty('physical');
        expect(['physical_server', 'host_incarnation', 'deprovision_job']).not.toContain(e.entityType);
        expect(JSON.stringify(e)).not.toMatch(/zone-a-std-\d/);
      }
      const ops = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}/events`, { token: op });
      expect(ops.body.events.length).toBeGreaterThan(mine.body.events.length);
      expect(ops.body.events.some((e: any) => JSON.stringify(e.physical).match(/zone-a-std-\d/))).toBe(true);
      // Paging: afterId and limit.
      const page1 = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}/events?limit=2`, { token: op });
      expect(page1.body.events).toHaveLength(2);
      const page2 = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}/events?limit=2&afterId=${page1.body.nextAfterId}`, { token: op });
      expect(page2.body.events[0].id).toBeGreaterThan(page1.body.events[1].id);
      const other = await t.call('GET', `/v1/dedicated-hosts/${hostB.id}/events`, { token: a.token });
      const missing = await t.call('GET', `/v1/dedicated-hosts/${missingHost}/events`, { token: a.token });
      expectSameAsMissing(other, missing, hostB.id, missingHost);
      for (const q of ['limit=0', 'limit=1001', 'limit=-1', 'afterId=abc', 'limit=1.5', 'x=1']) {
        const bad = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}/events?${q}`, { token: a.token });
        expect([q, bad.status]).toEqual([q, 400]);
      }
    });
  });

  describe('migrations (operators)', () => {
    it('POST …/migrations: 404 unknown host or target, 400 bad body, 409 target that does not match / not available / no matching server; nothing starts', async () => {
      const before = await t.counts();
      const unknown = await t.call('POST', `/v1/dedicated-hosts/${missingHost}/migrations`, { token: op, body: {} });
      expect(unknown.status).toBe(404);
      const cases: Array<[unknown, string]> = [
        [{ policy: { maxParallel: 0 } }, 'policy.maxParallel'],
        [{ policy: { maxParallel: 'many' } }, 'policy.maxParallel'],
        [{ policy: { order: 'random' } }, 'policy.order'],
        [{ policy: { nope: 1 } }, 'policy.nope'],
        [{ target: 'x' }, 'target'],
        [{ targetServerId: 'Bad Id' }, 'targetServerId'],
      ];
      for (const [body, field] of cases) {
        const r = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/migrations`, { token: op, body });
        expect([body, r.status, r.body.error.code, r.body.error.field]).toEqual([body, 400, 'INVALID_INPUT', field]);
      }
      // Well-formed ids the fleet refuses: no such server (404), a server of another class (409): the document states
      // neither as a schema rule, so neither may be a 400.
      const noServer = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/migrations`, { token: op, body: { targetServerId: 'no-such-server' } });
      expect([noServer.status, noServer.body.error.code, noServer.body.error.field]).toEqual([404, 'NOT_FOUND', 'targetServerId']);
      const mismatch = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/migrations`, { token: op, body: { targetServerId: 'zone-a-small-1' } });
      expect([mismatch.status, mismatch.body.error.code, mismatch.body.error.field]).toEqual([409, 'TARGET_MISMATCH', 'targetServerId']);
      const hostBOp = await t.call('GET', `/v1/dedicated-hosts/${hostB.id}`, { token: op });
      const busyTarget = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/migrations`, {
        token: op,
        body: { targetServerId: hostBOp.body.physicalServerId },
      });
      expect(busyTarget.status).toBe(409);
      expect(busyTarget.body.error).toMatchObject({ code: 'WRONG_STATE', field: 'targetServerId' });
      // The only small server is taken by the small host: nowhere to go.
      const smallHost = (await t.call('GET', '/v1/dedicated-hosts', { token: b.token })).body.hosts.find((h: any) => h.resourceClass === 'small');
      const nowhere = await t.call('POST', `/v1/dedicated-hosts/${smallHost.id}/migrations`, { token: op });
      expect(nowhere.status).toBe(409);
      expect(nowhere.body.error.code).toBe('NO_MATCHING_SERVER');
      expect(await t.counts()).toEqual(before);
      await expect(t.sys.temporal.client.workflow.getHandle(`migration-${hostA.id}`).describe()).rejects.toThrow(/not found/i);
    });

    it('202, then 409 ALREADY_MIGRATING; an Idempotency-Key retry gets the first 202; GET shows the object after completion; cancel after the end is 409', async () => {
      const tenant = await t.tenant('migrating tenant');
      const host = await t.host(tenant.token, { name: 'to move' });
      await t.vm(tenant.token, host.id, { name: 'small', memoryMiB: 256 });
      const start = await t.call('POST', `/v1/dedicated-hosts/${host.id}/migrations`, {
        token: op,
        body: { policy: { maxParallel: 2 } },
        idempotencyKey: `mig-${host.id}`,
      });
      expect(start.status).toBe(202);
      expect(start.body).toEqual({ id: `migration-${host.id}`, dedicatedHostId: host.id, phase: 'validating' });
      const retry = await t.call('POST', `/v1/dedicated-hosts/${host.id}/migrations`, {
        token: op,
        body: { policy: { maxParallel: 2 } },
        idempotencyKey: `mig-${host.id}`,
      });
      expect(retry).toMatchObject({ status: 202, body: start.body });
      const second = await t.call('POST', `/v1/dedicated-hosts/${host.id}/migrations`, { token: op, body: {} });
      expect(second.status).toBe(409);
      expect(second.body.error.code).toBe('ALREADY_MIGRATING');

      const done = await eventually(
        'migration completed',
        async () => {
          const r = await t.call('GET', `/v1/migrations/${start.body.id}`, { token: op });
          // The phase says completed a moment before the workflow execution itself closes: wait for both.
          return r.status === 200 && r.body.phase === 'completed' && r.body.workflowStatus === 'COMPLETED' ? r : null;
        },
        60_000,
        100,
      );
      expect(done.body).toMatchObject({ id: start.body.id, dedicatedHostId: host.id, workflowStatus: 'COMPLETED', run: 1 });
      expect(done.body.vms).toHaveLength(1);
      expect(done.body.vms[0].state).toBe('moved');
      const runs = await t.sys.temporal.client.workflow.list({ query: `WorkflowId = '${start.body.id}'` });
      let n = 0;
      for await (const _ of runs) n++;
      expect(n).toBe(1); // the retry started nothing

      const lateCancel = await t.call('POST', `/v1/migrations/${start.body.id}/cancel`, { token: op });
      expect(lateCancel.status).toBe(409);
      expect(lateCancel.body.error.code).toBe('WRONG_STATE');

      const listed = await eventually('listed by visibility', async () => {
        const r = await t.call('GET', `/v1/migrations?dedicatedHostId=${host.id}`, { token: op });
        return r.body.migrations?.find((m: any) => m.id === start.body.id && m.workflowStatus === 'COMPLETED') ? r : null;
      });
      expect(listed.body.migrations[0]).toMatchObject({ dedicatedHostId: host.id, phase: 'completed' });
      const all = await t.call('GET', '/v1/migrations?phase=completed&limit=5', { token: op });
      expect(all.status).toBe(200);
      expect(all.body.migrations.length).toBeGreaterThan(0);
      for (const q of ['phase=bogus', 'limit=0', 'dedicatedHostId=BAD%27%20OR%201%3D1', 'x=1']) {
        const bad = await t.call('GET', `/v1/migrations?${q}`, { token: op });
        expect([q, bad.status]).toEqual([q, 400]);
      }
    });

    it('GET/cancel of an unknown migration → 404, a malformed id → 400', async () => {
      for (const [method, suffix] of [
        ['GET', ''],
        ['POST', '/cancel'],
      ]) {
        const unknown = await t.call(method, `/v1/migrations/migration-${missingHost}${suffix}`, { token: op });
        expect([method, unknown.status, unknown.body.error.code]).toEqual([method, 404, 'NOT_FOUND']);
        const malformed = await t.call(method, `/v1/migrations/not-a-migration${suffix}`, { token: op });
        expect([method, malformed.status, malformed.body.error.field]).toEqual([method, 400, 'params.id']);
      }
      const withBody = await t.call('POST', `/v1/migrations/migration-${missingHost}/cancel`, { token: op, body: { force: true } });
      expect(withBody.status).toBe(400);
      expect(withBody.body.error.field).toBe('force');
    });

    it('cancel: 202, the migration rolls back, the host is active again with migration null; tenants cannot cancel', async () => {
      const tenant = await t.tenant('cancel tenant');
      const host = await t.host(tenant.token, { name: 'to cancel' });
      await t.vm(tenant.token, host.id, { name: 'big-1', memoryMiB: 8192, workload: { dirtyRateMiBps: 1, workingSetMiB: 64 } });
      await t.vm(tenant.token, host.id, { name: 'big-2', memoryMiB: 8192, workload: { dirtyRateMiBps: 1, workingSetMiB: 64 } });
      const start = await t.call('POST', `/v1/dedicated-hosts/${host.id}/migrations`, {
        token: op,
        body: { policy: { maxParallel: 1, bandwidthCapBps: 2e6 } },
      });
      expect(start.status).toBe(202);
      const moving = await eventually('a VM moving', async () => {
        const r = await t.call('GET', `/v1/migrations/${start.body.id}`, { token: op });
        return r.body.vms?.some((v: any) => v.state === 'moving') ? r : null;
      });
      expect(moving.body.phase).toBe('migrating-vms');
      const seen = await t.call('GET', `/v1/dedicated-hosts/${host.id}`, { token: tenant.token });
      expect(seen.body).toMatchObject({ state: 'migrating', migration: { id: start.body.id, phase: 'migrating-vms' } });
      const byTenant = await t.call('POST', `/v1/migrations/${start.body.id}/cancel`, { token: tenant.token });
      expect(byTenant.status).toBe(403);
      const cancel = await t.call('POST', `/v1/migrations/${start.body.id}/cancel`, { token: op });
      expect(cancel.status).toBe(202);
      expect(cancel.body).toMatchObject({ id: start.body.id, dedicatedHostId: host.id, cancelRequested: true });
      const rolled = await eventually(
        'rolled back',
        async () => {
          const r = await t.call('GET', `/v1/migrations/${start.body.id}`, { token: op });
          return r.body.phase === 'rolled-back' && r.body.workflowStatus !== 'RUNNING' ? r : null;
        },
        60_000,
        100,
      );
      expect(rolled.body.workflowStatus).toBe('FAILED');
      const after = await eventually('host active again', async () => {
        const r = await t.call('GET', `/v1/dedicated-hosts/${host.id}`, { token: tenant.token });
        return r.body.state === 'active' ? r : null;
      });
      expect(after.body).toMatchObject({ id: host.id, migration: null, vmCount: 2 });
    });
  });
});

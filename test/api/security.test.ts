import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as os from 'node:os';
import * as path from 'node:path';
import { status as GrpcStatus } from '@grpc/grpc-js';
import { toErrorResponse } from '../../api/errors';
import { startApiServer } from '../../api/server';
import { testFleet } from '../support/fleets';
import { startApiTestSystem, type ApiTestSystem } from './helpers';

/**
 * The API's security answers: tokens rotated and revoked over HTTP, tenants told why a VM is lost without server
 * names, health answered from a cache, Temporal's RESOURCE_EXHAUSTED as 429, and HTTPS when a certificate is given.
 */
describe('API security', () => {
  let t: ApiTestSystem;
  beforeAll(async () => {
    t = await startApiTestSystem({ fleet: testFleet({ servers: 4 }), timeScale: 50 });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('rotate and revoke: the old token stops at once, the new one works, a revoked tenant is 401; tenants may do neither', async () => {
    const tn = await t.tenant('rotates');
    expect((await t.call('GET', '/v1/dedicated-hosts', { token: tn.token })).status).toBe(200);
    expect((await t.call('POST', `/v1/tenants/${tn.id}/token/rotate`, { token: tn.token })).status).toBe(403);
    const rotated = await t.call('POST', `/v1/tenants/${tn.id}/token/rotate`, { token: t.operatorToken, idempotencyKey: 'rot-1' });
    expect(rotated.status).toBe(200);
    expect(rotated.body.token).not.toBe(tn.token);
    // A retry of the rotation with its key gets the first answer (sealed in the key store), not a third token.
    const replay = await t.call('POST', `/v1/tenants/${tn.id}/token/rotate`, { token: t.operatorToken, idempotencyKey: 'rot-1' });
    expect([replay.status, replay.body.token, replay.headers.get('idempotent-replayed')]).toEqual([200, rotated.body.token, 'true']);
    const stored = await t.sys.db.pool.query(`SELECT body::text AS b FROM api_idempotency_keys WHERE key = 'rot-1'`);
    expect(stored.rows[0].b).not.toContain(rotated.body.token);
    expect((await t.call('GET', '/v1/dedicated-hosts', { token: tn.token })).status).toBe(401);
    expect((await t.call('GET', '/v1/dedicated-hosts', { token: rotated.body.token })).status).toBe(200);
    const revoked = await t.call('POST', `/v1/tenants/${tn.id}/token/revoke`, { token: t.operatorToken });
    expect(revoked.body).toMatchObject({ id: tn.id, revoked: true, revokedAt: expect.any(String) });
    expect((await t.call('GET', '/v1/dedicated-hosts', { token: rotated.body.token })).status).toBe(401);
    expect((await t.call('POST', '/v1/tenants/tn-missing/token/revoke', { token: t.operatorToken })).status).toBe(404);
  });

  it('a lost VM: the tenant is told why without any server name, in the VM and in its events; the operator sees the record', async () => {
    const tn = await t.tenant('loses');
    const host = await t.host(tn.token);
    const vm = await t.vm(tn.token, host.id);
    const inc = await t.sys.inventory.getIncarnation((await t.sys.inventory.getHost(host.id)).currentIncarnationId);
    const mig = `mig-scrub-${Date.now()}`;
    await t.sys.inventory.beginMigration({ dedicatedHostId: host.id, migrationId: mig, actor: 'test' });
    await t.sys.inventory.markVmLost({
      vmId: vm.id,
      migrationId: mig,
      reason: `running neither on ${inc.serverId} nor on zone-a-std-9 (its server restarted or failed)`,
      actor: 'test',
    });
    const seen = await t.call('GET', `/v1/vms/${vm.id}`, { token: tn.token });
    expect(seen.body.state).toBe('lost');
    expect(seen.body.lostReason).toEqual(expect.any(String));
    const events = await t.call('GET', `/v1/dedicated-hosts/${host.id}/events`, { token: tn.token });
    expect(events.body.events.map((e: any) => e.action)).toContain('vm.lost');
    for (const text of [seen.text, events.text]) {
      expect(text).not.toContain(inc.serverId);
      expect(text).not.toContain('zone-a-std-9');
    }
    expect((await t.call('GET', `/v1/vms/${vm.id}`, { token: t.operatorToken })).body.lostReason).toContain(inc.serverId);
  });

  it('health checks are answered from a cache: a burst of them costs at most a couple of Postgres queries', async () => {
    const queries: string[] = [];
    const original = t.sys.db.pool.query.bind(t.sys.db.pool);
    (t.sys.db.pool as unknown as { query: unknown }).query = (q: unknown, ...rest: unknown[]) => {
      if (typeof q === 'string') queries.push(q);
      return (original as (...a: unknown[]) => unknown)(q, ...rest);
    };
    try {
      const answers = await Promise.all(Array.from({ length: 100 }, (_, i) => t.call('GET', i % 2 ? '/healthz' : '/readyz')));
      expect(answers.every((r) => r.status === 200)).toBe(true);
    } finally {
      (t.sys.db.pool as unknown as { query: unknown }).query = original;
    }
    expect(queries.filter((q) => q === 'SELECT 1').length).toBeLessThanOrEqual(3);
  });

  it('Temporal’s RESOURCE_EXHAUSTED (too many updates in flight) is a 429 with a retry hint, not a 500', () => {
    const grpc = Object.assign(new Error('8 RESOURCE_EXHAUSTED: limit exceeded'), {
      code: GrpcStatus.RESOURCE_EXHAUSTED,
      details: 'limit exceeded',
      metadata: {},
    });
    const mapped = toErrorResponse(grpc);
    expect(mapped).toMatchObject({ status: 429, body: { error: { code: 'TOO_MANY_REQUESTS', details: { retryAfterSeconds: 1 } } } });
  });

  it('with DHM_API_TLS_CERT/KEY the API speaks HTTPS only', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-api-tls-'));
    try {
      const key = path.join(dir, 'key.pem');
      const cert = path.join(dir, 'cert.pem');
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-keyout',
          key,
          '-out',
          cert,
          '-days',
          '1',
          '-subj',
          '/CN=localhost',
          '-addext',
          'subjectAltName=IP:127.0.0.1',
        ],
        { stdio: 'ignore' },
      );
      const api = await startApiServer({
        inventory: t.sys.inventory,
        hostService: t.hostService,
        temporal: { client: t.sys.temporal.client, taskQueue: t.sys.temporal.taskQueue },
        pool: t.sys.db.pool,
        operatorToken: t.operatorToken,
        logger: (await import('pino')).default({ level: 'silent' }),
        port: 0,
        tls: { cert: fs.readFileSync(cert), key: fs.readFileSync(key) },
      });
      try {
        expect(api.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
        const status = await new Promise<number>((resolve, reject) => {
          https
            .get(`${api.url}/v1/dedicated-hosts`, { ca: fs.readFileSync(cert), headers: { authorization: `Bearer ${t.operatorToken}` } }, (res) => {
              res.resume();
              resolve(res.statusCode ?? 0);
            })
            .on('error', reject);
        });
        expect(status).toBe(200);
        // Plain HTTP to the same port gets no answer from the API.
        const plain = await fetch(api.url.replace('https:', 'http:') + '/healthz').then(
          (r) => r.status,
          () => 'refused',
        );
        expect(plain === 'refused' || plain === 400).toBe(true);
      } finally {
        await api.stop();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

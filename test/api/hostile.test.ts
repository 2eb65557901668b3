import * as http from 'node:http';
import fc from 'fast-check';
import { testFleet } from '../support/fleets';
import { startApiTestSystem, type ApiTestSystem, type CallOptions } from './helpers';
import { eventually } from '../support/system';

/**
 * Hostile input against the real API: SQL injection strings in every text field (stored and returned verbatim,
 * since SQL only ever gets parameters), oversized and deeply nested JSON, a seeded fast-check fuzz of every route
 * (never a 5xx; a 4xx changes nothing), 1,000 concurrent requests, and logs that never carry a token.
 */

const SEED = 20_251_125;

/** Classic injection payloads; every one is a legal name and must come back exactly as sent. */
const INJECTIONS = [
  "'; DROP TABLE vms; --",
  "Robert'); DROP TABLE tenants;--",
  '" OR "1"="1',
  "' OR '1'='1' --",
  '1; SELECT pg_sleep(5)',
  '$1 $2 $$ $$; --',
  "\\'; DELETE FROM audit_events; --",
  "%' UNION SELECT token_hash FROM tenants --",
  "x' AND (SELECT count(*) FROM api_idempotency_keys) > 0 --",
  '<script>alert(1)</script>',
  '{{7*7}} ${7*7} #{7*7}',
  '../../etc/passwd',
  '名前 🚀 émoji ‮evil',
  'null',
  'a'.repeat(128),
];

/** Bytes as %XX: any string (lone surrogates included) or raw bytes (invalid UTF-8) become a valid URL path or query. */
const pct = (s: string | Uint8Array) =>
  Array.from(typeof s === 'string' ? Buffer.from(s, 'utf8') : s)
    .map((b) => `%${b.toString(16).padStart(2, '0')}`)
    .join('');

describe('hostile input', () => {
  let t: ApiTestSystem;
  let op: string;
  let a: { id: string; token: string };
  let b: { id: string; token: string };
  let hostA: any;
  let hostB: any;
  let smallHost: any;
  let vmA: any;
  let volA: any;
  let volB: any;
  const BAD_TOKEN = 'hunter2-not-a-real-token-0123456789';

  beforeAll(async () => {
    // The rates of this block are far above what it sends: it is about input and concurrency; the limits have their
    // own block below.
    t = await startApiTestSystem({
      fleet: testFleet({ servers: 24 }),
      timeScale: 200,
      logLevel: 'info',
      rateLimits: { perAddressPerSecond: 100_000, operatorPerSecond: 100_000 },
    });
    op = t.operatorToken;
    a = await t.tenant('fuzz A');
    b = await t.tenant('fuzz B');
    hostA = await t.host(a.token, { name: 'A' });
    hostB = await t.host(b.token, { name: 'B' });
    // The only small server: migrating this host has nowhere to go, so fuzzed migration bodies never start one.
    smallHost = await t.host(a.token, { name: 'small', resourceClass: 'small' });
    vmA = await t.vm(a.token, hostA.id, { name: 'fuzz target' });
    // Each tenant's volume is attached to a VM of its own: a fuzzed delete is refused and a fuzzed VM cannot take it.
    volA = (await t.call('POST', '/v1/volumes', { token: a.token, body: { name: 'fuzz A', zone: 'zone-a', sizeGiB: 5 } })).body;
    volB = (await t.call('POST', '/v1/volumes', { token: b.token, body: { name: 'fuzz B', zone: 'zone-a', sizeGiB: 5 } })).body;
    await t.vm(a.token, hostA.id, { name: 'has A', disks: [{ name: 'data', kind: 'network', volumeId: volA.id }] });
    await t.vm(b.token, hostB.id, { name: 'has B', disks: [{ name: 'data', kind: 'network', volumeId: volB.id }] });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('injection strings in every text field are stored and returned verbatim (SQL gets parameters only)', async () => {
    for (const [i, s] of INJECTIONS.entries()) {
      const tenant = await t.call('POST', '/v1/tenants', { token: op, body: { name: s }, idempotencyKey: `inj-${i}` });
      expect([s, tenant.status, tenant.body.name]).toEqual([s, 201, s]);
      const { rows } = await t.sys.db.pool.query('SELECT name FROM tenants WHERE id = $1', [tenant.body.id]);
      expect(rows[0].name).toBe(s);
      const host = await t.call('POST', '/v1/dedicated-hosts', { token: tenant.body.token, body: { name: s, zone: 'zone-a', resourceClass: 'std' } });
      expect([s, host.status, host.body.name]).toEqual([s, 201, s]);
      expect((await t.call('GET', `/v1/dedicated-hosts/${host.body.id}`, { token: tenant.body.token })).body.name).toBe(s);
      const vm = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token, body: { name: s, vcpus: 1, memoryMiB: 64, diskGiB: 1 } });
      expect([s, vm.status, vm.body.name]).toEqual([s, 201, s]);
      expect((await t.call('GET', `/v1/vms/${vm.body.id}`, { token: a.token })).body.name).toBe(s);
      // In id positions they are bad input, or ids of nothing.
      for (const path of [`/v1/dedicated-hosts/${pct(s)}`, `/v1/vms/${pct(s)}`, `/v1/migrations/${pct(s)}`]) {
        const r = await t.call('GET', path, { token: op });
        expect([path, r.status === 400 || r.status === 404]).toEqual([path, true]);
      }
      const filtered = await t.call('GET', `/v1/physical-servers?zone=${pct(s)}`, { token: op });
      expect([s, filtered.status === 400 || (filtered.status === 200 && filtered.body.servers.length === 0)]).toEqual([s, true]);
    }
    const names = await t.call('GET', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token });
    expect(names.body.vms.map((v: any) => v.name)).toEqual(expect.arrayContaining(INJECTIONS));
    // The tables are all still there and consistent.
    const { rows } = await t.sys.db.pool.query(`SELECT to_regclass('vms') AS vms, to_regclass('tenants') AS tenants, to_regclass('audit_events') AS audit`);
    expect(rows[0]).toEqual({ vms: 'vms', tenants: 'tenants', audit: 'audit_events' });
    expect((await t.call('GET', '/healthz')).status).toBe(200);
  });

  it('oversized bodies → 413, deeply nested JSON → 400, prototype keys → 400; nothing changes', async () => {
    const before = await t.counts();
    const post = (rawBody: string, path = '/v1/tenants') => t.call('POST', path, { token: op, rawBody });
    expect((await post(JSON.stringify({ name: 'x'.repeat(1024 * 1024) }))).status).toBe(413);
    expect((await post(`{"name":"${'y'.repeat(10 * 1024 * 1024)}"}`)).status).toBe(413);
    for (const deep of [
      `${'['.repeat(20_000)}${']'.repeat(20_000)}`,
      `{"name":${'['.repeat(5_000)}1${']'.repeat(5_000)}}`,
      `${'{"a":'.repeat(5_000)}1${'}'.repeat(5_000)}`,
      `{"name":"x","workload":${'{"w":'.repeat(40)}1${'}'.repeat(40)}}`,
    ]) {
      const r = await post(deep);
      expect([r.status, r.body.error.code, r.body.error.field]).toEqual([400, 'INVALID_INPUT', 'body']);
    }
    const vmDeep = await post(
      `{"name":"v","vcpus":1,"memoryMiB":1,"diskGiB":1,"workload":${'['.repeat(100)}${']'.repeat(100)}}`,
      `/v1/dedicated-hosts/${hostA.id}/vms`,
    );
    expect(vmDeep.status).toBe(400);
    for (const [raw, field] of [
      ['{"name":"x","__proto__":{"admin":true}}', '__proto__'],
      ['{"name":"x","constructor":{"prototype":{"admin":true}}}', 'constructor'],
    ]) {
      const r = await post(raw);
      expect([r.status, r.body.error.field]).toEqual([400, field]);
    }
    // Over the limit without a Content-Length (chunked): still 413, the server reads no further.
    const chunked = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${t.api.url}/v1/tenants`, {
        method: 'POST',
        headers: { authorization: `Bearer ${op}`, 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.write('{"name":"');
      for (let i = 0; i < 40; i++) req.write('z'.repeat(4096));
      req.end('"}');
    });
    expect(chunked).toBe(413);
    // Brackets inside strings are not nesting.
    const bracketName = '['.repeat(150);
    const ok = await post(JSON.stringify({ name: bracketName }));
    expect([ok.status, ok.body.name]).toEqual([201, bracketName]);
    const after = await t.counts();
    expect({ ...after, tenants: before.tenants, audit_events: before.audit_events }).toEqual(before);
    expect(Number(after.tenants)).toBe(Number(before.tenants) + 1);
  });

  it('fast-check: generated requests at every route never get a 5xx, and a 4xx changes nothing', async () => {
    // Mostly principals that get past authentication, so the fuzz reaches validation and the handlers.
    const principal = fc.oneof(
      { weight: 3, arbitrary: fc.constant(() => op) },
      { weight: 3, arbitrary: fc.constant(() => a.token) },
      { weight: 1, arbitrary: fc.constant(() => b.token) },
      { weight: 1, arbitrary: fc.constant(() => null) },
      { weight: 1, arbitrary: fc.constant(() => BAD_TOKEN) },
    );
    const json = fc.jsonValue({ maxDepth: 4 });
    const text = fc.oneof(fc.string({ unit: 'binary', maxLength: 80 }), fc.constantFrom(...INJECTIONS), fc.string({ maxLength: 300 }));
    const num = fc.oneof(fc.integer(), fc.double(), fc.constantFrom(0, -1, 1, 1e12, 2 ** 53, 1.5, 64, 512));
    const anyValue = fc.oneof(text, num, fc.boolean(), fc.constant(null), json);
    /** undefined three times in four. */
    const sometimes = <T>(arb: fc.Arbitrary<T>) => fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: arb });
    const field = <T>(valid: fc.Arbitrary<T>) => fc.oneof({ weight: 4, arbitrary: valid }, { weight: 1, arbitrary: anyValue });
    const extra = fc.dictionary(text, json, { minKeys: 1, maxKeys: 2 });
    /** Every field present and mostly valid; sometimes one dropped, sometimes unknown ones added. */
    const nearValid = (shape: Record<string, fc.Arbitrary<unknown>>) =>
      fc.tuple(fc.record(shape), sometimes(fc.constantFrom(...Object.keys(shape))), sometimes(extra)).map(([o, drop, e]) => {
        const out: Record<string, unknown> = { ...(e ?? {}), ...o };
        if (drop !== undefined) delete out[drop];
        return out;
      });
    const bodyOf = (shape: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<Pick<CallOptions, 'body' | 'rawBody' | 'contentType'>> =>
      fc.oneof(
        { weight: 5, arbitrary: nearValid(shape).map((body) => ({ body })) },
        { weight: 2, arbitrary: json.map((body) => ({ body })) },
        { weight: 1, arbitrary: text.map((rawBody) => ({ rawBody })) },
        {
          weight: 1,
          arbitrary: fc
            .tuple(text, fc.constantFrom('text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=latin1'))
            .map(([rawBody, contentType]) => ({ rawBody, contentType })),
        },
        { weight: 1, arbitrary: fc.constant({}) },
      );
    const segment = (real: string[]) =>
      fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom(...real) },
        { weight: 2, arbitrary: text.map(pct) },
        { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 20 }).map(pct) },
      );
    const query = fc.oneof(
      { weight: 8, arbitrary: fc.constant('') },
      { weight: 2, arbitrary: fc.array(fc.tuple(text, text), { maxLength: 3 }).map((kv) => `?${kv.map(([k, v]) => `${pct(k)}=${pct(v)}`).join('&')}`) },
      {
        weight: 1,
        arbitrary: fc.constantFrom('?limit=5', '?afterId=1', '?includeDeleted=true', '?state=available', '?phase=completed', '?limit=-3', '?limit=1e3'),
      },
    );
    // Header values fetch can send: Latin-1 without controls (DEL included).
    const headerChar = fc.oneof(fc.integer({ min: 0x20, max: 0x7e }), fc.integer({ min: 0x80, max: 0xff })).map((c) => String.fromCharCode(c));
    const idemKey = sometimes(fc.oneof(fc.string({ unit: headerChar, maxLength: 220 }), fc.uuid()));
    const hostIds = [hostA.id, hostB.id, smallHost.id, 'dh-missing'];
    const vmIds = [vmA.id, 'vm-missing'];
    const volumeIds = [volA.id, volB.id, 'vol-missing'];
    const migrationIds = [`migration-${hostA.id}`, `migration-${smallHost.id}`, 'migration-dh-missing'];
    const vmShape = {
      name: field(fc.string({ minLength: 1, maxLength: 20 })),
      vcpus: field(fc.integer({ min: 1, max: 2 })),
      memoryMiB: field(fc.integer({ min: 1, max: 256 })),
      diskGiB: field(fc.integer({ min: 1, max: 5 })),
      workload: field(fc.record({ dirtyRateMiBps: field(fc.integer({ min: 0, max: 10 })), workingSetMiB: field(fc.integer({ min: 0, max: 10 })) })),
      disks: sometimes(
        field(
          fc.array(
            fc.oneof(
              fc.record({
                name: field(fc.constantFrom('root', 'data', 'Bad Name')),
                kind: field(fc.constant('local')),
                sizeGiB: field(fc.integer({ min: 0, max: 6 })),
              }),
              fc.record({
                name: field(fc.constantFrom('vol', 'data')),
                kind: field(fc.constantFrom('network', 'tape')),
                volumeId: field(fc.constantFrom(volA.id, volB.id, 'vol-missing')),
              }),
            ),
            { minLength: 0, maxLength: 9 },
          ),
        ),
      ),
    };
    const policyShape = fc.record(
      {
        maxParallel: field(fc.integer({ min: 1, max: 4 })),
        order: field(fc.constantFrom('largest-first', 'as-listed')),
        maxDowntimeMs: field(fc.integer({ min: 1, max: 1000 })),
        autoConverge: field(fc.boolean()),
      },
      { requiredKeys: [] },
    );

    type Req = { method: string; path: string; opts: CallOptions };
    const route = (method: string, path: fc.Arbitrary<string>, body?: fc.Arbitrary<Pick<CallOptions, 'body' | 'rawBody' | 'contentType'>>) =>
      fc.record({ path, q: query, body: body ?? fc.constant({}), who: principal, key: idemKey }).map(({ path: p, q, body: bd, who, key }): Req => ({
        method,
        path: `${p}${q}`,
        opts: { ...bd, token: who(), ...(key !== undefined ? { idempotencyKey: key } : {}) },
      }));
    const requests = fc.oneof(
      route('GET', fc.constant('/healthz')),
      route('GET', fc.constant('/openapi.json')),
      route('POST', fc.constant('/v1/tenants'), bodyOf({ name: field(fc.string({ minLength: 1, maxLength: 30 })) })),
      route('GET', fc.constant('/v1/physical-servers')),
      route(
        'POST',
        fc.constant('/v1/dedicated-hosts'),
        bodyOf({
          name: field(fc.string({ minLength: 1, maxLength: 30 })),
          zone: field(fc.constantFrom('zone-a', 'zone-b')),
          resourceClass: field(fc.constantFrom('std', 'small')),
          tenantId: field(fc.constantFrom(a.id, b.id)),
        }),
      ),
      route('GET', fc.constant('/v1/dedicated-hosts')),
      route(
        'GET',
        segment(hostIds).map((h) => `/v1/dedicated-hosts/${h}`),
      ),
      route(
        'GET',
        segment(hostIds).map((h) => `/v1/dedicated-hosts/${h}/vms`),
      ),
      route(
        'POST',
        segment(hostIds).map((h) => `/v1/dedicated-hosts/${h}/vms`),
        bodyOf(vmShape),
      ),
      route(
        'GET',
        segment(vmIds).map((v) => `/v1/vms/${v}`),
      ),
      route(
        'DELETE',
        segment(vmIds.slice(1)).map((v) => `/v1/vms/${v}`),
      ),
      route(
        'GET',
        segment(hostIds).map((h) => `/v1/dedicated-hosts/${h}/events`),
      ),
      // Migrations: the small host has no free server to go to, the others are not real hosts or get bad bodies.
      route(
        'POST',
        segment([smallHost.id, 'dh-missing']).map((h) => `/v1/dedicated-hosts/${h}/migrations`),
        bodyOf({ targetServerId: field(fc.constantFrom('zone-a-small-1', 'zone-a-std-1')), policy: field(policyShape) }),
      ),
      route(
        'POST',
        fc.constant('/v1/volumes'),
        bodyOf({
          name: field(fc.string({ minLength: 1, maxLength: 30 })),
          zone: field(fc.constantFrom('zone-a', 'zone-b')),
          sizeGiB: field(fc.integer({ min: 1, max: 50 })),
          tenantId: field(fc.constantFrom(a.id, b.id)),
        }),
      ),
      route('GET', fc.constant('/v1/volumes')),
      route(
        'GET',
        segment(volumeIds).map((v) => `/v1/volumes/${v}`),
      ),
      // The tenants' volumes are attached (so a delete is refused, changing nothing) or missing.
      route(
        'DELETE',
        segment(volumeIds).map((v) => `/v1/volumes/${v}`),
      ),
      route('GET', fc.constant('/v1/migrations')),
      route(
        'GET',
        segment(migrationIds).map((m) => `/v1/migrations/${m}`),
      ),
      route(
        'POST',
        segment(migrationIds).map((m) => `/v1/migrations/${m}/cancel`),
        bodyOf({ force: field(fc.boolean()) }),
      ),
    );

    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(requests, async (req) => {
        const before = await t.counts();
        const r = await t.call(req.method, req.path, req.opts);
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        if (r.status >= 500) throw new Error(`${req.method} ${req.path} → ${r.status} ${r.text}`);
        if (r.status >= 400) {
          expect(r.body?.error?.code).toEqual(expect.any(String));
          expect(await t.counts()).toEqual(before);
        }
      }),
      { seed: SEED, numRuns: 700 },
    );
    // The fuzz reached past validation: successes, refusals of every kind.
    // Each of these answers came back at least once (the list names any that never did).
    expect([200, 201, 400, 401, 403, 404].filter((s) => !((statuses.get(s) ?? 0) > 0))).toEqual([]);
    expect([...statuses.keys()].every((s) => s < 500)).toBe(true);
    expect(statuses.get(201) ?? 0).toBeGreaterThan(0);
    expect(statuses.get(400) ?? 0).toBeGreaterThan(50);
  });

  it('1,000 concurrent requests (reads and bad writes): no 5xx, each gets its answer, nothing changes, the service answers afterwards', async () => {
    const before = await t.counts();
    const kinds: Array<[number, () => ReturnType<ApiTestSystem['call']>]> = [
      [200, () => t.call('GET', '/healthz')],
      [200, () => t.call('GET', '/openapi.json')],
      [200, () => t.call('GET', '/v1/dedicated-hosts', { token: a.token })],
      [200, () => t.call('GET', `/v1/dedicated-hosts/${hostA.id}`, { token: a.token })],
      [200, () => t.call('GET', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token })],
      [200, () => t.call('GET', `/v1/vms/${vmA.id}`, { token: a.token })],
      [200, () => t.call('GET', `/v1/dedicated-hosts/${hostA.id}/events?limit=50`, { token: a.token })],
      [200, () => t.call('GET', '/v1/physical-servers', { token: op })],
      [200, () => t.call('GET', '/v1/migrations?limit=5', { token: op })],
      [400, () => t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, { token: a.token, body: { name: 'x', vcpus: -1, memoryMiB: 1e12, diskGiB: 1 } })],
      [400, () => t.call('POST', '/v1/tenants', { token: op, rawBody: '{"name":' })],
      [400, () => t.call('POST', '/v1/dedicated-hosts', { token: b.token, body: { name: 'x', zone: 'zone-a', resourceClass: 'std', extra: 1 } })],
      [401, () => t.call('GET', '/v1/dedicated-hosts', { token: BAD_TOKEN })],
      [403, () => t.call('POST', '/v1/tenants', { token: a.token, body: { name: 'x' } })],
      [403, () => t.call('POST', `/v1/dedicated-hosts/${hostA.id}/migrations`, { token: a.token, body: {} })],
      [404, () => t.call('GET', `/v1/dedicated-hosts/${hostB.id}`, { token: a.token })],
      [404, () => t.call('DELETE', '/v1/vms/vm-missing', { token: b.token })],
      [413, () => t.call('POST', '/v1/tenants', { token: op, body: { name: 'x'.repeat(100_000) } })],
    ];
    const started = Date.now();
    const results = await Promise.all(
      Array.from({ length: 1000 }, async (_, i) => {
        const [expected, send] = kinds[i % kinds.length]!;
        const r = await send();
        return { expected, status: r.status };
      }),
    );
    const elapsedMs = Date.now() - started;
    expect(results.filter((r) => r.status >= 500)).toEqual([]);
    expect(results.filter((r) => r.status !== r.expected)).toEqual([]);
    expect(elapsedMs).toBeLessThan(60_000);
    expect(await t.counts()).toEqual(before);
    expect((await t.call('GET', '/healthz')).status).toBe(200);
    const vm = await t.call('POST', `/v1/dedicated-hosts/${hostA.id}/vms`, {
      token: a.token,
      body: { name: 'after the storm', vcpus: 1, memoryMiB: 64, diskGiB: 1 },
    });
    expect(vm.status).toBe(201);
  });

  it('logs never carry a token (valid, wrong or operator), though every request was logged', () => {
    const all = t.logs.join('\n');
    expect(t.logs.length).toBeGreaterThan(1000);
    expect(all).toContain('incoming request');
    for (const secret of [op, a.token, b.token, BAD_TOKEN]) expect(all).not.toContain(secret);
    expect(all.toLowerCase()).not.toContain('bearer');
  });
});

/** One request from a chosen loopback address (each "client" of the load tests has its own), with its latency. */
function fromAddress(base: string, localAddress: string, method: string, path: string, o: { token?: string; body?: unknown } = {}) {
  return new Promise<{ status: number; body: any; headers: http.IncomingHttpHeaders; ms: number }>((resolve, reject) => {
    const started = performance.now();
    const body = o.body === undefined ? undefined : JSON.stringify(o.body);
    const req = http.request(`${base}${path}`, {
      method,
      localAddress,
      agent: false,
      headers: { ...(o.token ? { authorization: `Bearer ${o.token}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) },
    });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => {
        let parsed: unknown;
        try {
          parsed = text ? JSON.parse(text) : undefined;
        } catch {
          parsed = undefined;
        }
        resolve({ status: res.statusCode ?? 0, body: parsed, headers: res.headers, ms: performance.now() - started });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;

describe('hostile load: quotas, rate limits and update floods', () => {
  let t: ApiTestSystem;
  let op: string;
  let victim: { id: string; token: string };
  let victimHost: any;
  const VICTIM_ADDR = '127.0.0.3';

  /** The victim's latency: 15 reads one after the other, from its own address. */
  const victimReads = async () => {
    const ms: number[] = [];
    for (let i = 0; i < 15; i++) {
      const r = await fromAddress(t.api.url, VICTIM_ADDR, 'GET', `/v1/dedicated-hosts/${victimHost.id}`, { token: victim.token });
      expect(r.status).toBe(200);
      ms.push(r.ms);
    }
    return median(ms);
  };

  beforeAll(async () => {
    // 100 requests/s per address (the default is 200: this machine cannot send much faster than that from one
    // address), 50 per tenant token (the default quota).
    t = await startApiTestSystem({ fleet: testFleet({ servers: 12 }), timeScale: 5, rateLimits: { perAddressPerSecond: 100 }, tenantQuotas: 'default' });
    op = t.operatorToken;
    victim = await t.tenant('victim');
    victimHost = await t.host(victim.token, { name: 'victim host' });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('hosts beyond the quota are refused 409 QUOTA_EXCEEDED naming it, nothing changes; the operator raises it; a tenant cannot; others unaffected', async () => {
    const greedy = await t.tenant('greedy');
    await t.host(greedy.token);
    await t.host(greedy.token);
    const before = await t.counts();
    const r = await t.call('POST', '/v1/dedicated-hosts', { token: greedy.token, body: { name: 'third', zone: 'zone-a', resourceClass: 'std' } });
    expect([r.status, r.body.error.code, r.body.error.field]).toEqual([409, 'QUOTA_EXCEEDED', 'hostsPerZoneClass']);
    expect(r.body.error.details).toMatchObject({ quota: 'hostsPerZoneClass', limit: 2, used: 2 });
    expect(await t.counts()).toEqual(before);
    // Its own quota is the operator's to raise; another tenant's is not even visible.
    expect((await t.call('POST', `/v1/tenants/${greedy.id}/quotas`, { token: greedy.token, body: { hostsPerZoneClass: 50 } })).status).toBe(403);
    expect((await t.call('GET', `/v1/tenants/${victim.id}/quotas`, { token: greedy.token })).status).toBe(404);
    expect((await t.call('GET', `/v1/tenants/${greedy.id}/quotas`, { token: greedy.token })).body).toMatchObject({
      hostsPerZoneClass: 2,
      requestsPerSecond: 50,
    });
    const bad = await t.call('POST', `/v1/tenants/${greedy.id}/quotas`, { token: op, body: { hostsPerZoneClass: -1 } });
    expect([bad.status, bad.body.error.field]).toEqual([400, 'hostsPerZoneClass']);
    expect(await t.counts()).toEqual(before);
    const raised = await t.call('POST', `/v1/tenants/${greedy.id}/quotas`, { token: op, body: { hostsPerZoneClass: 3 } });
    expect([raised.status, raised.body.hostsPerZoneClass]).toEqual([200, 3]);
    await t.host(greedy.token);
    // The other tenant still gets its hosts (the fleet has room; the quota kept the greedy one from taking it all).
    await t.host(victim.token, { name: 'second' });
  });

  it('a tenant flooding the API gets 429 with Retry-After past its rate, never a 5xx; another tenant is served within its normal latency', async () => {
    const attacker = await t.tenant('flooder');
    const attackerHost = await t.host(attacker.token);
    const baseline = await victimReads();
    const before = await t.counts();
    const flood = Promise.all(
      Array.from({ length: 400 }, (_, i) =>
        fromAddress(
          t.api.url,
          `127.0.1.${1 + (i % 10)}`,
          i % 5 === 0 ? 'POST' : 'GET',
          i % 5 === 0 ? `/v1/dedicated-hosts/${attackerHost.id}/vms` : `/v1/dedicated-hosts/${attackerHost.id}`,
          {
            token: attacker.token,
            ...(i % 5 === 0 ? { body: { name: 'x', vcpus: 1e6, memoryMiB: 1, diskGiB: 1 } } : {}),
          },
        ),
      ),
    );
    const during = await victimReads();
    const answers = await flood;
    expect(answers.filter((r) => r.status >= 500)).toEqual([]);
    const limited = answers.filter((r) => r.status === 429);
    expect(limited.length).toBeGreaterThan(100);
    for (const r of limited) {
      expect(r.body.error.code).toBe('RATE_LIMITED');
      expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    }
    expect(answers.every((r) => [200, 400, 429].includes(r.status))).toBe(true);
    expect(await t.counts()).toEqual(before);
    // The victim's reads stayed near their own baseline (same machine, same moment: a generous but real bound).
    expect(during).toBeLessThan(Math.max(baseline * 5, baseline + 150));
  });

  it('a flood from one address (bad tokens, health checks) is limited per address before any token lookup; other addresses are served', async () => {
    const baseline = await victimReads();
    const answers = await Promise.all(
      Array.from({ length: 600 }, (_, i) =>
        i % 2
          ? fromAddress(t.api.url, '127.0.2.1', 'GET', '/v1/dedicated-hosts', { token: `dhm_guess_${i}_0123456789abcdef` })
          : fromAddress(t.api.url, '127.0.2.1', 'GET', '/healthz'),
      ),
    );
    const during = await victimReads();
    expect(answers.filter((r) => r.status >= 500)).toEqual([]);
    expect(answers.filter((r) => r.status === 429).length).toBeGreaterThan(100);
    expect(answers.every((r) => [200, 401, 429].includes(r.status))).toBe(true);
    expect(during).toBeLessThan(Math.max(baseline * 5, baseline + 150));
  });

  it('an update flood on a migrating host: requests past the in-flight cap get 429, never a 5xx, and a refused one creates nothing', async () => {
    const tenant = await t.tenant('updater');
    await t.call('POST', `/v1/tenants/${tenant.id}/quotas`, { token: op, body: { requestsPerSecond: 1000 } });
    const host = await t.host(tenant.token, { resourceClass: 'large' });
    for (let i = 0; i < 4; i++) await t.vm(tenant.token, host.id, { memoryMiB: 2048, workload: { dirtyRateMiBps: 1, workingSetMiB: 64 } });
    const started = await t.call('POST', `/v1/dedicated-hosts/${host.id}/migrations`, {
      token: op,
      body: { policy: { maxParallel: 1, bandwidthCapBps: 2e6 } },
    });
    expect(started.status).toBe(202);
    await eventually('migrating', async () => (await t.call('GET', `/v1/dedicated-hosts/${host.id}`, { token: tenant.token })).body.state === 'migrating');
    const answers = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        fromAddress(t.api.url, '127.0.3.1', 'POST', `/v1/dedicated-hosts/${host.id}/vms`, {
          token: tenant.token,
          body: { name: `flood-${i}`, vcpus: 1, memoryMiB: 64, diskGiB: 1 },
        }),
      ),
    );
    expect(answers.filter((r) => r.status >= 500).map((r) => [r.status, r.body])).toEqual([]);
    const created = answers.filter((r) => r.status === 201);
    const refused = answers.filter((r) => r.status === 429);
    expect(created.length + refused.length).toBe(40);
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) {
      expect(r.body.error.code).toBe('TOO_MANY_REQUESTS');
      expect(r.headers['retry-after']).toBe('1');
    }
    // Nothing of a refused request exists; every accepted one does.
    const vms = (await t.call('GET', `/v1/dedicated-hosts/${host.id}/vms`, { token: tenant.token })).body.vms.map((v: any) => v.name);
    expect(vms.filter((n: string) => n.startsWith('flood-')).sort()).toEqual(created.map((r) => r.body.name).sort());
    await t.call('POST', `/v1/migrations/migration-${host.id}/cancel`, { token: op, body: {} });
  });
});

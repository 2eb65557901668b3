import Ajv2020 from 'ajv/dist/2020';
import fc from 'fast-check';
import { arbitraryOf, sampleOne, type JsonSchema } from '../support/schema-arbitrary';
import { startApiTestSystem, type ApiTestSystem } from './helpers';

/**
 * The OpenAPI document is the truth about the API: requests generated from the document alone (not from the zod
 * schemas behind it) are never refused for a rule the document does not state (no 400), never break the server (no
 * 5xx), and every answer is one the document declares for that route, with a body that matches its schema.
 */

const SEED = Number(process.env.DHM_TEST_SEED ?? 20261201);
const PER_OPERATION = 30;
const METHODS = ['get', 'post', 'put', 'patch', 'delete'] as const;

interface Operation {
  method: string;
  path: string;
  op: JsonSchema;
}

let t: ApiTestSystem;
let doc: JsonSchema;
let ajv: Ajv2020;
const known = {
  hosts: [] as string[],
  vms: [] as string[],
  servers: [] as string[],
  tenants: [] as string[],
  tenantTokens: [] as string[],
  /** Tenants whose tokens the generated rotate/revoke requests may change (not the ones the other requests use). */
  tokenTargets: [] as string[],
  volumes: [] as string[],
};

beforeAll(async () => {
  t = await startApiTestSystem({ timeScale: 2000 });
  doc = (await t.call('GET', '/openapi.json')).body;
  ajv = new Ajv2020({ strict: false, allErrors: false, validateFormats: false });
  for (let i = 0; i < 2; i++) {
    const tenant = await t.tenant(`contract tenant ${i}`);
    known.tenants.push(tenant.id);
    known.tenantTokens.push(tenant.token);
    for (let v = 0; v < 2; v++) {
      const vol = await t.call('POST', '/v1/volumes', { token: tenant.token, body: { name: `contract volume ${i}.${v}`, zone: 'zone-a', sizeGiB: 10 } });
      known.volumes.push(vol.body.id);
    }
    for (let h = 0; h < 2; h++) {
      const host = await t.host(tenant.token, { name: `contract host ${i}.${h}` });
      known.hosts.push(host.id);
      for (let v = 0; v < 2; v++) known.vms.push((await t.vm(tenant.token, host.id, { memoryMiB: 256 })).id);
    }
  }
  for (let i = 0; i < 2; i++) known.tokenTargets.push((await t.tenant(`contract token target ${i}`)).id);
  known.servers = (await t.call('GET', '/v1/physical-servers', { token: t.operatorToken })).body.servers.map((s: { id: string }) => s.id);
});

afterAll(async () => {
  await t?.stop();
});

function operations(): Operation[] {
  const out: Operation[] = [];
  for (const [path, item] of Object.entries<JsonSchema>(doc.paths))
    for (const m of METHODS) if (item[m]) out.push({ method: m.toUpperCase(), path, op: item[m] });
  return out;
}

/** `$ref`s inlined, so each response schema compiles on its own. */
function deref(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(deref);
  if (!node || typeof node !== 'object') return node;
  const o = node as JsonSchema;
  if (typeof o.$ref === 'string')
    return deref(
      o.$ref
        .replace(/^#\//, '')
        .split('/')
        .reduce((n: any, p: string) => n?.[p], doc),
    );
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, deref(v)]));
}

/** Ids a caller could know: a pattern for migration ids gets migrations of existing hosts, other ids get real ones. */
function knownFor(schema: JsonSchema): string[] {
  if (typeof schema.pattern !== 'string') return [];
  if (schema.pattern.includes('migration')) return known.hosts.map((h) => `migration-${h}`);
  return [...known.hosts, ...known.vms, ...known.servers, ...known.tenants, ...known.volumes, 'zone-a', 'zone-b', 'std', 'small'];
}

type Principal = 'operator' | 'tenant' | 'none';

interface GeneratedRequest {
  principal: Principal;
  url: string;
  body: unknown;
  hasBody: boolean;
  idempotencyKey?: string;
}

/** For an id in a route's path, the ids of the collection the path names (a caller asks for its own tenant's quotas, not a VM's). */
function knownInPath(path: string): string[] | null {
  const collection = path.split('/')[2];
  if (collection === 'tenants') return path.includes('/token/') ? known.tokenTargets : known.tenants;
  if (collection === 'dedicated-hosts') return known.hosts;
  if (collection === 'vms') return known.vms;
  if (collection === 'volumes') return known.volumes;
  if (collection === 'physical-servers') return known.servers;
  return null;
}

function generate(o: Operation, seed: number): GeneratedRequest {
  const ctx = { root: doc, known: knownFor };
  const secured = (o.op.security ?? []).length > 0;
  const principal: Principal = secured ? sampleOne(fc.constantFrom<Principal>('operator', 'operator', 'tenant', 'tenant', 'none'), seed) : 'none';
  let url = o.path;
  const query: string[] = [];
  let idempotencyKey: string | undefined;
  for (const [i, p] of (o.op.parameters ?? []).entries()) {
    const include = p.required || sampleOne(fc.boolean(), seed + 101 * (i + 1));
    if (!include) continue;
    const inPath = p.in === 'path' ? knownInPath(o.path) : null;
    const value = String(
      sampleOne(
        arbitraryOf(
          p.schema,
          inPath ? { ...ctx, known: (sc: JsonSchema) => (typeof sc.pattern === 'string' && !sc.pattern.includes('migration') ? inPath : knownFor(sc)) } : ctx,
        ),
        seed + 7 * (i + 1),
      ),
    );
    if (p.in === 'path') url = url.replace(`{${p.name}}`, encodeURIComponent(value));
    else if (p.in === 'query') query.push(`${encodeURIComponent(p.name)}=${encodeURIComponent(value)}`);
    else if (p.in === 'header' && p.name === 'Idempotency-Key') idempotencyKey = value;
  }
  if (query.length) url += `?${query.join('&')}`;
  const rb = o.op.requestBody;
  let hasBody = false;
  let body: unknown;
  if (rb && (rb.required || sampleOne(fc.boolean(), seed + 13))) {
    hasBody = true;
    body = sampleOne(arbitraryOf(rb.content['application/json'].schema, ctx), seed + 17);
    // The rules the document states for who asks.
    for (const r of o.op['x-dhm-rules'] ?? []) {
      const b = body as Record<string, unknown>;
      if (r.rule === 'forbiddenFor' && r.principal === principal) delete b[r.field];
      if (r.rule === 'requiredFor' && r.principal === principal && b[r.field] === undefined) {
        const fieldSchema = rb.content['application/json'].schema.properties[r.field];
        b[r.field] = sampleOne(arbitraryOf(fieldSchema, ctx), seed + 19);
      }
    }
  }
  return { principal, url, body, hasBody, idempotencyKey };
}

describe('the OpenAPI document is the truth', () => {
  it('at least 500 requests generated from the document, across every route: none refused for an unstated rule, none a 5xx, every answer declared and matching its schema', async () => {
    const ops = operations();
    expect(ops.length).toBeGreaterThanOrEqual(19);
    const failures: string[] = [];
    const perOperation = new Map<string, number>();
    const statuses = new Map<number, number>();
    const succeeded = new Set<string>();
    let sent = 0;
    for (let round = 0; round < PER_OPERATION; round++) {
      for (const [k, o] of ops.entries()) {
        const seed = SEED + round * 1000 + k;
        const req = generate(o, seed);
        const token = req.principal === 'operator' ? t.operatorToken : req.principal === 'tenant' ? known.tenantTokens[seed % known.tenantTokens.length] : null;
        const r = await t.call(o.method, req.url, {
          token,
          ...(req.hasBody ? { body: req.body } : {}),
          ...(req.idempotencyKey !== undefined ? { idempotencyKey: req.idempotencyKey } : {}),
        });
        sent++;
        const name = `${o.method} ${o.path}`;
        perOperation.set(name, (perOperation.get(name) ?? 0) + 1);
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        if (r.status < 300) succeeded.add(name);
        const where = `${o.method} ${req.url} as ${req.principal} (seed ${seed}) body ${JSON.stringify(req.body)?.slice(0, 300)}`;
        const declared = o.op.responses[String(r.status)];
        if (r.status === 400) failures.push(`${where}: 400 for a request the document allows: ${r.text.slice(0, 300)}`);
        else if (r.status >= 500) failures.push(`${where}: ${r.status} ${r.text.slice(0, 300)}`);
        if (!declared) {
          failures.push(`${where}: status ${r.status} is not declared for this route: ${r.text.slice(0, 200)}`);
          continue;
        }
        const [type, media] = Object.entries<JsonSchema>(declared.content ?? {})[0] ?? [];
        if (!type) continue;
        if (type === 'application/json') {
          const validate = ajv.compile(deref(media!.schema) as object);
          if (!validate(r.body))
            failures.push(`${where}: ${r.status} body does not match the document: ${ajv.errorsText(validate.errors)} in ${r.text.slice(0, 200)}`);
        } else if (!(r.headers.get('content-type') ?? '').startsWith(type))
          failures.push(`${where}: content type ${r.headers.get('content-type')} instead of ${type}`);
      }
    }
    expect(failures.slice(0, 20)).toEqual([]);
    expect(sent).toBeGreaterThanOrEqual(500);
    for (const o of ops) expect([`${o.method} ${o.path}`, perOperation.get(`${o.method} ${o.path}`)]).toEqual([`${o.method} ${o.path}`, PER_OPERATION]);
    // The generated requests reached the routes' real work, not only their refusals: most routes answered a success.
    process.stderr.write(
      `[openapi contract] ${sent} requests over ${ops.length} routes; statuses ${JSON.stringify(Object.fromEntries(statuses))}; a success on ${succeeded.size}: ${[...succeeded].join(', ')}\n`,
    );
    expect(succeeded.size).toBeGreaterThanOrEqual(Math.ceil((ops.length * 2) / 3));
    expect(statuses.get(404) ?? 0).toBeGreaterThan(0);
  });

  it('a method a path does not serve answers 405 with the Allow header it does serve; an unknown path stays 404', async () => {
    let checked = 0;
    for (const [path, item] of Object.entries<JsonSchema>(doc.paths)) {
      const served = METHODS.filter((m) => item[m]).map((m) => m.toUpperCase());
      const concrete = path.replace(/\{[^}]+\}/g, known.hosts[0]!);
      for (const m of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].filter((x) => !served.includes(x))) {
        const r = await t.call(m, concrete, { token: t.operatorToken });
        expect([m, path, r.status, r.body?.error?.code]).toEqual([m, path, 405, 'METHOD_NOT_ALLOWED']);
        const allow = (r.headers.get('allow') ?? '').split(/,\s*/).sort();
        expect([path, allow]).toEqual([path, [...served, ...(served.includes('GET') ? ['HEAD'] : [])].sort()]);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(40);
    const unknown = await t.call('PUT', '/v1/no-such-thing', { token: t.operatorToken });
    expect([unknown.status, unknown.body.error.code]).toEqual([404, 'NOT_FOUND']);
  });

  it('the document states the rules behind its constraints: bounds, patterns, lengths, enums and the VM spec rule', () => {
    const vmBody = doc.paths['/v1/dedicated-hosts/{id}/vms'].post.requestBody.content['application/json'].schema;
    expect(vmBody['x-dhm-rules']).toEqual([
      expect.objectContaining({ rule: 'lessOrEqual', field: 'workload.workingSetMiB', than: 'memoryMiB' }),
      expect.objectContaining({ rule: 'lessOrEqual', field: 'workload.diskUsedGiB', than: 'diskGiB' }),
      expect.objectContaining({ rule: 'sumLessOrEqual', items: 'disks', where: { kind: 'local' }, field: 'sizeGiB', than: 'diskGiB' }),
      expect.objectContaining({ rule: 'unique', items: 'disks', field: 'name' }),
    ]);
    expect(vmBody.properties.disks).toMatchObject({ type: 'array', minItems: 1, maxItems: 8 });
    expect(vmBody.properties.name).toMatchObject({ minLength: 1, maxLength: 128, pattern: expect.any(String) });
    const limit = doc.paths['/v1/dedicated-hosts/{id}/events'].get.parameters.find((p: JsonSchema) => p.name === 'limit');
    expect(limit.schema).toMatchObject({ type: 'integer', minimum: 1, maximum: 1000 });
    const includeDeleted = doc.paths['/v1/dedicated-hosts/{id}/vms'].get.parameters.find((p: JsonSchema) => p.name === 'includeDeleted');
    expect(includeDeleted.schema).toMatchObject({ enum: ['true', 'false'] });
    for (const [path, item] of Object.entries<JsonSchema>(doc.paths))
      for (const m of METHODS)
        if (item[m]?.requestBody || item[m]?.parameters?.some((p: JsonSchema) => p.name === 'Idempotency-Key'))
          expect([path, m, Object.keys(item[m].responses)]).toEqual([path, m, expect.arrayContaining(['400'])]);
  });
});

import { createIdempotencyStore } from '../../api/idempotency';
import { openTestDatabase } from '../inventory/helpers';
import type { TestDatabase } from '../support/database';

/**
 * The idempotency table does not grow for ever: keys older than the retention are swept, and each principal holds at
 * most its bound (its oldest answered keys are evicted first; others' keys are untouched). Sealed answers are sealed
 * with the sealing key, not the operator token.
 */
let db: TestDatabase;
beforeAll(async () => {
  db = await openTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const SEALING = 'a-sealing-key-of-at-least-32-characters-0001';
const keysOf = async (principal: string) =>
  (await db.pool.query<{ key: string }>('SELECT key FROM api_idempotency_keys WHERE principal = $1 ORDER BY created_at, key', [principal])).rows.map(
    (r) => r.key,
  );

async function answered(store: ReturnType<typeof createIdempotencyStore>, principal: string, key: string) {
  const begun = await store.begin(principal, key, 'POST /v1/x', 'a'.repeat(64));
  expect(begun.kind).toBe('new');
  await store.complete(principal, key, { status: 201, body: { key } }, { sealed: false });
}

test('a principal holds at most its bound: the oldest answered keys go, in-flight ones and other principals’ stay', async () => {
  const store = createIdempotencyStore(db.pool, { sealingKey: SEALING, maxKeysPerPrincipal: 5 });
  for (let i = 0; i < 3; i++) await answered(store, 'tenant:b', `b-${i}`);
  // One reservation in flight, the oldest of all: never evicted.
  expect((await store.begin('tenant:a', 'a-inflight', 'POST /v1/x', 'a'.repeat(64))).kind).toBe('new');
  for (let i = 0; i < 12; i++) await answered(store, 'tenant:a', `a-${String(i).padStart(2, '0')}`);
  expect(await keysOf('tenant:a')).toEqual(['a-inflight', 'a-07', 'a-08', 'a-09', 'a-10', 'a-11']);
  expect(await keysOf('tenant:b')).toEqual(['b-0', 'b-1', 'b-2']);
});

test('the sweep deletes keys older than the retention and keeps the others', async () => {
  const store = createIdempotencyStore(db.pool, { sealingKey: SEALING });
  for (let i = 0; i < 4; i++) await answered(store, 'tenant:sweep', `s-${i}`);
  await db.pool.query(
    `UPDATE api_idempotency_keys SET created_at = now() - interval '25 hours', completed_at = now() - interval '25 hours' WHERE principal = 'tenant:sweep' AND key IN ('s-0', 's-1')`,
  );
  expect(await store.sweep()).toBeGreaterThanOrEqual(2);
  expect(await keysOf('tenant:sweep')).toEqual(['s-2', 's-3']);
  expect(await store.sweep()).toBe(0);
});

test('sealed answers open with the sealing key only: another sealing key cannot show them (the operator token plays no part)', async () => {
  const store = createIdempotencyStore(db.pool, { sealingKey: SEALING });
  expect((await store.begin('operator', 'seal-1', 'POST /v1/tenants', 'b'.repeat(64))).kind).toBe('new');
  await store.complete('operator', 'seal-1', { status: 201, body: { token: 'dhm_secret_token_value' } }, { sealed: true });
  const raw = await db.pool.query(`SELECT body::text AS body FROM api_idempotency_keys WHERE key = 'seal-1'`);
  expect(raw.rows[0].body).not.toContain('dhm_secret_token_value');
  expect(await store.begin('operator', 'seal-1', 'POST /v1/tenants', 'b'.repeat(64))).toEqual({
    kind: 'replay',
    answer: { status: 201, body: { token: 'dhm_secret_token_value' } },
  });
  const other = createIdempotencyStore(db.pool, { sealingKey: 'another-sealing-key-of-at-least-32-chars-02' });
  await expect(other.begin('operator', 'seal-1', 'POST /v1/tenants', 'b'.repeat(64))).rejects.toMatchObject({ status: 409, code: 'IDEMPOTENCY_KEY_REUSED' });
  expect(() => createIdempotencyStore(db.pool, { sealingKey: 'short' })).toThrow(/DHM_API_SEALING_KEY/);
});

import { loadEnv } from '../../common/config';
import { databaseLimitsFrom, openInventoryStore, type InventoryStore } from '../../stack/control-plane';
import { logger } from '../compute/helpers';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * The inventory's pool holds under a flood and a stuck client: a query runs at most DATABASE_STATEMENT_TIMEOUT_MS, a
 * caller waits at most DATABASE_CONNECT_TIMEOUT_MS for a connection of a full pool, and a session left idle inside a
 * transaction is ended by Postgres (its locks released). Real Postgres; the limits come through loadEnv.
 */
let db: TestDatabase;
let store: InventoryStore;
const env = loadEnv({
  DATABASE_POOL_SIZE: '2',
  DATABASE_STATEMENT_TIMEOUT_MS: '300',
  DATABASE_CONNECT_TIMEOUT_MS: '2000',
  DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: '300',
  DATABASE_IDLE_TIMEOUT_MS: '5000',
});

beforeAll(async () => {
  db = await createTestDatabase();
  store = await openInventoryStore({ databaseUrl: db.url, poolSize: env.DATABASE_POOL_SIZE, limits: databaseLimitsFrom(env), logger });
});
afterAll(async () => {
  await store.close();
  await db.drop();
});

test('every session carries the limits', async () => {
  const r = await store.pool.query<{ s: string; i: string }>(
    "SELECT current_setting('statement_timeout') AS s, current_setting('idle_in_transaction_session_timeout') AS i",
  );
  expect(r.rows[0]).toEqual({ s: '300ms', i: '300ms' });
});

test('a statement longer than the timeout is cancelled by Postgres, and the pool serves the next one', async () => {
  const t0 = Date.now();
  await expect(store.pool.query('SELECT pg_sleep(5)')).rejects.toMatchObject({ code: '57014' }); // query_canceled
  expect(Date.now() - t0).toBeLessThan(3_000);
  expect((await store.pool.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one).toBe(1);
});

test('a full pool makes a caller wait at most the connect timeout, then fail; nothing more is opened', async () => {
  const held = await Promise.all([store.pool.connect(), store.pool.connect()]);
  try {
    const t0 = Date.now();
    await expect(store.pool.connect()).rejects.toThrow(/timeout/i);
    const waited = Date.now() - t0;
    expect(waited).toBeGreaterThanOrEqual(1_900);
    expect(waited).toBeLessThan(8_000);
    expect(store.pool.totalCount).toBe(2);
  } finally {
    for (const c of held) c.release();
  }
});

test('a session idle in a transaction is ended by Postgres and its row lock released', async () => {
  const stuck = await store.pool.connect();
  const ended = new Promise<Error>((resolve) => stuck.once('error', resolve));
  await stuck.query('BEGIN');
  await stuck.query('SELECT pg_advisory_xact_lock(4242)');
  const err = await Promise.race([ended, new Promise<null>((r) => setTimeout(() => r(null), 5_000))]); // deadline
  expect(err).not.toBeNull();
  stuck.release(err!);
  // The lock went with the session: another one takes it (transaction-scoped, so it goes again at COMMIT).
  const other = await store.pool.connect();
  try {
    await other.query('BEGIN');
    const r = await other.query<{ got: boolean }>('SELECT pg_try_advisory_xact_lock(4242) AS got');
    expect(r.rows[0]!.got).toBe(true);
    await other.query('COMMIT');
  } finally {
    other.release();
  }
});

import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes, randomUUID } from 'node:crypto';
import type { Pool } from 'pg';
import { UserFacingError } from '../common/errors';
import { ApiError } from './errors';

/**
 * Idempotency keys (table api_idempotency_keys, inventory/migrations/002_idempotency.sql).
 *
 * A request with an `Idempotency-Key` first reserves (principal, key) with the hash of the request; then it acts and
 * stores its answer. A retry finds the row: the same request gets the stored answer (nothing is done twice), another
 * request under the same key is refused (IDEMPOTENCY_KEY_REUSED), and a retry that arrives while the first is still
 * running waits for its answer. Validation failures are answered before the reservation (fix the body, keep the key);
 * 5xx answers are not stored (the reservation is released so a retry runs again). Ids a request creates (host id, VM
 * id, the migration update's request id) are derived from the key, so even a retry that runs again after a crash, or
 * after a release, lands on the same objects: the inventory and the workflow deduplicate by those ids.
 */

export const IDEMPOTENCY_HEADER = 'idempotency-key';
/** A retry later than this is a new request. */
export const RETENTION_HOURS = 24;
/** A reservation without an answer this old belongs to a request that died with its process: a retry takes it over. */
const STALE_RESERVATION_MS = 5 * 60_000;
/** How long a retry waits for the answer of the first request still in flight before answering 409. */
const WAIT_FOR_FIRST_MS = 30_000;

export interface StoredAnswer {
  status: number;
  body: unknown;
}

type Begin = { kind: 'new' } | { kind: 'replay'; answer: StoredAnswer } | { kind: 'mismatch'; route: string } | { kind: 'in-progress' };

/** The key must be printable ASCII, 1..200 characters (any client's UUID or ULID fits). */
export function parseIdempotencyKey(raw: string | string[] | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (Array.isArray(raw) || !/^[\x21-\x7e]{1,200}$/.test(raw))
    throw new ApiError(400, 'INVALID_INPUT', 'Idempotency-Key: must be 1 to 200 printable ASCII characters, sent once', 'Idempotency-Key');
  return raw;
}

/** JSON with object keys sorted, so the same body in another key order hashes the same. */
function canonicalJson(v: unknown): string {
  if (v === undefined) return 'null';
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
    .join(',')}}`;
}

export function requestHash(route: string, body: unknown): string {
  return createHash('sha256')
    .update(`${route}\n${canonicalJson(body)}`)
    .digest('hex');
}

/**
 * Ids that follow from the key: a retry creates the same host, the same VM, sends the same update id. Without a key
 * they are random (each request is a new one).
 */
export function idsFor(principal: string, route: string, key: string | undefined) {
  const digest = key === undefined ? undefined : createHash('sha256').update(`${principal}\n${route}\n${key}`).digest('hex').slice(0, 40);
  return (prefix: string) => (digest ? `${prefix}-${digest}` : `${prefix}-${randomUUID()}`);
}

/** Keys a principal may hold at once; beyond it the oldest answered ones are evicted (a retry of those runs again, on the same ids). */
export const MAX_KEYS_PER_PRINCIPAL = 10_000;
/** How often the API sweeps keys older than the retention. */
export const SWEEP_INTERVAL_MS = 10 * 60_000;
/** Rows one sweep statement deletes at most (a long backlog goes in several statements, not one long lock). */
const SWEEP_BATCH = 5_000;

export interface IdempotencyStoreOptions {
  /**
   * The secret that seals stored answers carrying a secret (a tenant's token): its own key, not the operator token,
   * so rotating the operator token neither exposes nor loses them, and knowing the operator token does not open them.
   */
  sealingKey: string;
  maxKeysPerPrincipal?: number;
  retentionHours?: number;
}

export function createIdempotencyStore(pool: Pool, opts: IdempotencyStoreOptions) {
  if (typeof opts.sealingKey !== 'string' || opts.sealingKey.length < 32)
    throw new UserFacingError('DHM_API_SEALING_KEY: the sealing key of stored answers must have at least 32 characters', 'DHM_API_SEALING_KEY');
  const sealingKey = opts.sealingKey;
  const maxKeys = opts.maxKeysPerPrincipal ?? MAX_KEYS_PER_PRINCIPAL;
  const retentionHours = opts.retentionHours ?? RETENTION_HOURS;
  /** Answers that carry a secret are sealed with a key only the server (sealing key) and the caller (key) know. */
  const sealKey = (principal: string, key: string) => Buffer.from(hkdfSync('sha256', sealingKey, `${principal}\n${key}`, 'dhm-api-idempotency-v2', 32));
  const seal = (principal: string, key: string, value: unknown) => {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', sealKey(principal, key), iv);
    const ct = Buffer.concat([cipher.update(JSON.stringify(value), 'utf8'), cipher.final()]);
    return { sealed: Buffer.concat([iv, cipher.getAuthTag(), ct]).toString('base64') };
  };
  const unseal = (principal: string, key: string, stored: unknown): unknown => {
    const s = (stored as { sealed?: unknown } | null)?.sealed;
    if (typeof s !== 'string') return stored;
    const raw = Buffer.from(s, 'base64');
    const decipher = createDecipheriv('aes-256-gcm', sealKey(principal, key), raw.subarray(0, 12));
    decipher.setAuthTag(raw.subarray(12, 28));
    try {
      return JSON.parse(Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8'));
    } catch {
      // The sealing key changed since: the first answer can no longer be shown.
      throw new ApiError(
        409,
        'IDEMPOTENCY_KEY_REUSED',
        'Idempotency-Key: the first answer to this key can no longer be shown; use a new key',
        'Idempotency-Key',
      );
    }
  };

  async function tryBegin(principal: string, key: string, route: string, hash: string): Promise<Begin> {
    await pool.query(`DELETE FROM api_idempotency_keys WHERE principal = $1 AND key = $2 AND created_at < now() - make_interval(hours => $3)`, [
      principal,
      key,
      retentionHours,
    ]);
    const inserted = await pool.query(
      `INSERT INTO api_idempotency_keys (principal, key, route, request_hash) VALUES ($1, $2, $3, $4)
       ON CONFLICT (principal, key) DO NOTHING`,
      [principal, key, route, hash],
    );
    if (inserted.rowCount === 1) {
      await evictBeyondBound(principal);
      return { kind: 'new' };
    }
    const { rows } = await pool.query<{ route: string; request_hash: string; status: number | null; body: unknown; age_ms: number }>(
      `SELECT route, request_hash, status, body, (extract(epoch FROM now() - created_at) * 1000)::float8 AS age_ms
         FROM api_idempotency_keys WHERE principal = $1 AND key = $2`,
      [principal, key],
    );
    const row = rows[0];
    if (!row) return tryBegin(principal, key, route, hash); // released in between: reserve again
    if (row.route !== route || row.request_hash !== hash) return { kind: 'mismatch', route: row.route };
    if (row.status !== null) return { kind: 'replay', answer: { status: row.status, body: unseal(principal, key, row.body) } };
    if (row.age_ms > STALE_RESERVATION_MS) {
      const taken = await pool.query(
        `UPDATE api_idempotency_keys SET created_at = now()
          WHERE principal = $1 AND key = $2 AND status IS NULL AND created_at < now() - make_interval(secs => $3)`,
        [principal, key, STALE_RESERVATION_MS / 1000],
      );
      if (taken.rowCount === 1) return { kind: 'new' };
    }
    return { kind: 'in-progress' };
  }

  /**
   * The principal's bound: its answered keys beyond the newest `maxKeys` go (oldest first). Reservations in flight are
   * never evicted; the rate limits bound how many of those there can be.
   */
  async function evictBeyondBound(principal: string): Promise<void> {
    await pool.query(
      `DELETE FROM api_idempotency_keys WHERE principal = $1 AND status IS NOT NULL AND key IN (
         SELECT key FROM api_idempotency_keys WHERE principal = $1 ORDER BY created_at DESC, key DESC OFFSET $2)`,
      [principal, maxKeys],
    );
  }

  return {
    /** Deletes keys older than the retention, in batches; returns how many went. */
    async sweep(): Promise<number> {
      let total = 0;
      for (;;) {
        const r = await pool.query(
          `DELETE FROM api_idempotency_keys WHERE ctid IN (
             SELECT ctid FROM api_idempotency_keys WHERE created_at < now() - make_interval(hours => $1) LIMIT $2)`,
          [retentionHours, SWEEP_BATCH],
        );
        total += r.rowCount ?? 0;
        if ((r.rowCount ?? 0) < SWEEP_BATCH) return total;
      }
    },

    /** Reserves the key for this request, or returns what a retry should answer. */
    async begin(principal: string, key: string, route: string, hash: string): Promise<Exclude<Begin, { kind: 'in-progress' }>> {
      const deadline = Date.now() + WAIT_FOR_FIRST_MS;
      for (let delay = 25; ; delay = Math.min(delay * 2, 500)) {
        const r = await tryBegin(principal, key, route, hash);
        if (r.kind !== 'in-progress') return r;
        if (Date.now() > deadline)
          throw new ApiError(
            409,
            'IDEMPOTENCY_KEY_IN_USE',
            'Idempotency-Key: the first request with this key is still running; retry later',
            'Idempotency-Key',
          );
        await new Promise((resolve) => setTimeout(resolve, delay)); // bounded by the deadline above
      }
    },

    async complete(principal: string, key: string, answer: StoredAnswer, opts: { sealed: boolean }): Promise<void> {
      const stored = opts.sealed ? seal(principal, key, answer.body) : answer.body;
      await pool.query(`UPDATE api_idempotency_keys SET status = $3, body = $4, completed_at = now() WHERE principal = $1 AND key = $2 AND status IS NULL`, [
        principal,
        key,
        answer.status,
        JSON.stringify(stored),
      ]);
    },

    /** Gives the key back after an answer that must not be replayed (5xx): a retry runs the request again. */
    async release(principal: string, key: string): Promise<void> {
      await pool.query('DELETE FROM api_idempotency_keys WHERE principal = $1 AND key = $2 AND status IS NULL', [principal, key]);
    },
  };
}

export type IdempotencyStore = ReturnType<typeof createIdempotencyStore>;

import { randomUUID } from 'node:crypto';
import type { Pool, PoolClient } from 'pg';
import type { Resources } from '../common/resources';

/**
 * What every repository module of the inventory shares: transactions, pg error codes, and the small conversions
 * from rows (snake_case columns, Date timestamps) to the inventory's JSON-safe values.
 */

/** Postgres errors worth one more try of the whole (idempotent) transaction. */
const RETRYABLE = new Set(['40P01' /* deadlock_detected */, '40001' /* serialization_failure */]);

/**
 * Runs `fn` in one transaction. A connection that broke mid-way (terminated, network) is destroyed, never returned to
 * the pool. Deadlocks are retried: every operation is idempotent, so running it again is safe.
 */
export async function withTransaction<T>(pool: Pool, fn: (c: PoolClient) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect();
    let broken: Error | undefined;
    const onError = (err: Error) => {
      broken = err;
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      try {
        await client.query('ROLLBACK');
      } catch (rollbackErr) {
        broken = rollbackErr as Error;
      }
      if (!broken && isRetryable(err) && attempt < 3) continue;
      throw err;
    } finally {
      client.off('error', onError);
      client.release(broken);
    }
  }
}

/** A deadlock or serialization failure: the whole (idempotent) operation may simply run again. */
export function isRetryable(err: unknown): boolean {
  return RETRYABLE.has(pgErrorCode(err) ?? '');
}

export function pgErrorCode(err: unknown): string | undefined {
  return (err as { code?: string } | null)?.code;
}

export function pgConstraint(err: unknown): string | undefined {
  return (err as { constraint?: string } | null)?.constraint;
}

/** `fn` on one pooled connection outside a transaction (reads, and one-statement writes that are their own). */
export async function withClient<T>(pool: Pool, fn: (c: PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect();
  try {
    return await fn(c);
  } finally {
    c.release();
  }
}

export const iso = (d: Date | null): string | null => (d ? d.toISOString() : null);
export const isoNN = (d: Date): string => d.toISOString();

/** The amounts of a row with `vcpus, memory_mib, disk_gib` columns (servers, classes, hosts, incarnations, VMs). */
export const resOf = (r: { vcpus: number; memory_mib: number; disk_gib: number }): Resources => ({
  vcpus: r.vcpus,
  memoryMiB: r.memory_mib,
  diskGiB: r.disk_gib,
});

/** A generated id: `<prefix>-<uuid>` (`dh-`, `inc-`, `vm-`, `tn-`). */
export const newId = (prefix: string): string => `${prefix}-${randomUUID()}`;

/** `FOR NO KEY UPDATE` when locking: the row lock every writer of the inventory takes. */
export const forUpdate = (lock: boolean): string => (lock ? ' FOR NO KEY UPDATE' : '');

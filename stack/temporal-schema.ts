import { execFile } from 'node:child_process';
import { Client } from 'pg';
import type { Logger } from '../common/logger';
import { UserFacingError } from '../common/errors';
import { TEMPORAL_SCHEMA_VERSIONS, TEMPORAL_SERVER_VERSION } from './tools/temporal-server';

/** Where the cluster's two databases live: one Postgres server, credentials for both. */
export interface TemporalDatabases {
  host: string;
  port: number;
  user: string;
  password: string;
  /** The main store's database; visibility's is `<name>_visibility`. */
  name: string;
}

export const visibilityDatabaseName = (name: string) => `${name}_visibility`;

type Store = 'temporal' | 'visibility';
export type SchemaState = { kind: 'absent' } | { kind: 'empty' } | { kind: 'foreign'; tables: number } | { kind: 'versioned'; version: string };

/** 1.9 < 1.18: schema versions compare by number, part by part. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

function connect(db: TemporalDatabases, database: string): Client {
  return new Client({ host: db.host, port: db.port, user: db.user, password: db.password, database, connectionTimeoutMillis: 5000 });
}

/** What a database holds: nothing yet, an empty database, tables that are not Temporal's, or a versioned Temporal schema. */
export async function inspectSchema(db: TemporalDatabases, database: string, anyDatabase: string): Promise<SchemaState> {
  const server = connect(db, anyDatabase);
  await server.connect();
  try {
    const { rowCount } = await server.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (!rowCount) return { kind: 'absent' };
  } finally {
    await server.end();
  }
  const client = connect(db, database);
  await client.connect();
  try {
    const tables = Number((await client.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public'")).rows[0].n);
    if (tables === 0) return { kind: 'empty' };
    const hasVersion = (await client.query("SELECT to_regclass('public.schema_version') IS NOT NULL AS ok")).rows[0].ok as boolean;
    if (!hasVersion) return { kind: 'foreign', tables };
    const row = (await client.query('SELECT curr_version FROM schema_version WHERE version_partition = 0 AND db_name = $1', [database])).rows[0];
    // setup-schema writes 0.0 first: a set-up killed half-way reads as 0.0 and is carried on by update-schema.
    return row ? { kind: 'versioned', version: String(row.curr_version) } : { kind: 'foreign', tables };
  } finally {
    await client.end();
  }
}

/** The SQL tool with the password in its environment (SQL_PASSWORD), never in argv. */
export function sqlTool(sqlToolPath: string, db: TemporalDatabases, database: string, args: string[]): Promise<void> {
  const argv = ['--plugin', 'postgres12', '--ep', db.host, '--port', String(db.port), '--user', db.user, '--db', database, ...args];
  return new Promise((resolve, reject) => {
    execFile(sqlToolPath, argv, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', SQL_PASSWORD: db.password }, timeout: 120_000 }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      const last = stderr.trim().split('\n').filter(Boolean).pop() ?? err.message;
      reject(new Error(`temporal-sql-tool ${args[0]} on ${database} failed: ${last}`));
    });
  });
}

/**
 * Temporal's two databases at the schema versions the pinned server needs, set up with its SQL tool from the
 * schemas embedded in it: created and set up when absent or empty; left alone when current. Anything else is
 * refused with the fix: tables that are not Temporal's, an older schema (upgraded only when `upgrade` is set,
 * because it is a one-way step an operator takes after a backup), or a newer one (an older server would corrupt it).
 */
export async function prepareTemporalDatabases(opts: {
  sqlTool: string;
  db: TemporalDatabases;
  anyDatabase: string;
  upgrade: boolean;
  logger: Logger;
}): Promise<void> {
  const { db, logger } = opts;
  const stores: Array<[Store, string]> = [
    ['temporal', db.name],
    ['visibility', visibilityDatabaseName(db.name)],
  ];
  for (const [store, database] of stores) {
    const want = TEMPORAL_SCHEMA_VERSIONS[store];
    const schemaName = `postgresql/v12/${store}`;
    let state: SchemaState;
    try {
      state = await inspectSchema(db, database, opts.anyDatabase);
    } catch (err) {
      throw new UserFacingError(
        `Temporal database ${database} on ${db.host}:${db.port}: cannot read it as ${db.user} (${(err as Error).message}); grant that user access or use DHM_TEMPORAL_DATABASE for another`,
        'DHM_TEMPORAL_DATABASE',
      );
    }
    const where = `Temporal database ${database} on ${db.host}:${db.port}`;
    if (state.kind === 'foreign') {
      throw new UserFacingError(
        `${where} holds ${state.tables} tables but no Temporal schema (no schema_version row); give the cluster an empty database with DHM_TEMPORAL_DATABASE, or drop this one`,
        'DHM_TEMPORAL_DATABASE',
      );
    }
    if (state.kind === 'versioned' && compareVersions(state.version, want) > 0) {
      throw new UserFacingError(
        `${where} has schema ${state.version}, newer than the ${want} server ${TEMPORAL_SERVER_VERSION} runs on; run the server version that upgraded it, or use DHM_TEMPORAL_DATABASE for another database`,
        'DHM_TEMPORAL_DATABASE',
      );
    }
    if (state.kind === 'versioned' && compareVersions(state.version, want) === 0) continue;
    if (state.kind === 'versioned' && compareVersions(state.version, '0.0') > 0 && !opts.upgrade) {
      throw new UserFacingError(
        `${where} has schema ${state.version}; server ${TEMPORAL_SERVER_VERSION} needs ${want}: back it up, then run \`dhm up --temporal cluster --upgrade-temporal-schema\` once`,
        'DHM_TEMPORAL_DATABASE',
      );
    }
    const started = Date.now();
    if (state.kind === 'absent') await sqlTool(opts.sqlTool, db, database, ['create']);
    if (state.kind === 'absent' || state.kind === 'empty') await sqlTool(opts.sqlTool, db, database, ['setup-schema', '-v', '0.0']);
    await sqlTool(opts.sqlTool, db, database, ['update-schema', '--schema-name', schemaName]);
    const after = await inspectSchema(db, database, opts.anyDatabase);
    if (after.kind !== 'versioned' || compareVersions(after.version, want) !== 0) {
      throw new Error(`${where}: update-schema left it at ${after.kind === 'versioned' ? after.version : after.kind}, not ${want}`);
    }
    logger.info({ database, from: state.kind === 'versioned' ? state.version : state.kind, to: want, ms: Date.now() - started }, 'Temporal schema ready');
  }
}

import * as fs from 'node:fs';
import * as path from 'node:path';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { loadEnv, type Env } from '../common/config';
import type { Logger } from '../common/logger';
import { CUSTOM_SEARCH_ATTRIBUTES } from '../common/search-attributes';
import { resolveTemporalServer } from './tools/temporal-cli';
import { ensureDatabase, startEmbeddedPostgres } from './embedded-postgres';
import { startTemporalDevServer, waitForTemporal } from './temporal-dev-server';
import { Client } from 'pg';
import { UserFacingError } from '../common/errors';
import { isAlive } from './pidfile';
import { stopInReverse } from '../common/stop-in-reverse';
import { connectTemporalClient } from '../common/temporal-connection';
import { ensureClusterTools } from './tools/temporal-server';
import { startTemporalCluster, type TemporalClusterHandle } from './temporal-cluster';
import { ensureSearchAttributes } from './temporal-namespace';
import type { TemporalDatabases } from './temporal-schema';

export interface DevStack {
  databaseUrl: string;
  /** Superuser URL of the embedded server (null when DATABASE_URL points elsewhere). */
  adminDatabaseUrl: string | null;
  temporalAddress: string;
  namespace: string;
  uiUrl: string | null;
  /** Which Temporal runs: the dev server, the cluster (its processes in `cluster`), or an external one. */
  temporalMode: 'dev' | 'cluster' | 'external';
  cluster?: TemporalClusterHandle;
  stop(): Promise<void>;
}

export interface DevStackOptions {
  env?: Env;
  logger: Logger;
  /** Where the SQLite file, Postgres data and pid files live (default: DHM_HOME). */
  stateDir?: string;
  /** Override ports (tests pass free ones); default from the environment. */
  ports?: { postgres?: number; temporal?: number; ui?: number | null };
  databaseName?: string;
  /** Cluster mode only: upgrade an older Temporal schema (`dhm up --upgrade-temporal-schema`); readiness deadline. */
  cluster?: { upgradeSchema?: boolean; readyTimeoutMs?: number };
}

/**
 * The embedded defaults: a real Postgres and a real Temporal dev server on this machine, each replaced by an external
 * one when DATABASE_URL / TEMPORAL_ADDRESS is set. Stops what it started, in reverse order, exactly once.
 */
export async function startDevStack(opts: DevStackOptions): Promise<DevStack> {
  const env = opts.env ?? loadEnv();
  const logger = opts.logger;
  const stateDir = opts.stateDir ?? env.DHM_HOME;
  ensureStateDir(stateDir);
  claimStateDir(stateDir);
  const stops: Array<() => Promise<void>> = [async () => fs.rmSync(path.join(stateDir, 'stack.pid'), { force: true })];
  const stopAll = () => stopInReverse(stops, logger, 'part of the dev stack');
  try {
    // Postgres
    let databaseUrl: string;
    let adminDatabaseUrl: string | null = null;
    if (env.DATABASE_URL) {
      databaseUrl = env.DATABASE_URL;
      await checkDatabase(databaseUrl);
    } else {
      const pg = await startEmbeddedPostgres({
        dataDir: path.join(stateDir, 'postgres'),
        port: opts.ports?.postgres ?? env.DHM_PG_PORT,
        logger,
      });
      stops.push(pg.stop);
      const dbName = opts.databaseName ?? 'dhm';
      await ensureDatabase(pg.adminUrl, dbName);
      databaseUrl = pg.urlFor(dbName);
      adminDatabaseUrl = pg.adminUrl;
    }

    // Temporal
    if (env.DHM_TEMPORAL_MODE === 'cluster') {
      if (env.TEMPORAL_ADDRESS) {
        throw new UserFacingError('DHM_TEMPORAL_MODE: cluster starts its own Temporal, but TEMPORAL_ADDRESS is set; unset one of them', 'DHM_TEMPORAL_MODE');
      }
      const tools = await ensureClusterTools({ toolsDir: env.DHM_TOOLS_DIR, log: (l) => logger.info(l) });
      const uiPort = opts.ports?.ui === undefined ? env.DHM_TEMPORAL_UI_PORT : opts.ports.ui;
      const cluster = await startTemporalCluster({
        tools,
        stateDir,
        db: { ...serverOf(adminDatabaseUrl ?? databaseUrl), name: env.DHM_TEMPORAL_DATABASE },
        anyDatabase: new URL(adminDatabaseUrl ?? databaseUrl).pathname.slice(1) || 'postgres',
        port: opts.ports?.temporal ?? env.DHM_TEMPORAL_PORT,
        uiPort,
        shards: env.DHM_TEMPORAL_SHARDS,
        historyProcesses: env.DHM_TEMPORAL_HISTORY_PROCESSES,
        namespace: env.TEMPORAL_NAMESPACE,
        upgradeSchema: opts.cluster?.upgradeSchema,
        readyTimeoutMs: opts.cluster?.readyTimeoutMs,
        logger,
      });
      stops.push(cluster.stop);
      return {
        databaseUrl,
        adminDatabaseUrl,
        temporalAddress: cluster.address,
        namespace: env.TEMPORAL_NAMESPACE,
        uiUrl: cluster.uiUrl,
        temporalMode: 'cluster',
        cluster,
        stop: stopAll,
      };
    }
    const source = await resolveTemporalServer({ log: (l) => logger.info(l) });
    let temporalAddress: string;
    let uiUrl: string | null = null;
    if (source.kind === 'external') {
      temporalAddress = source.address;
      try {
        await waitForTemporal(temporalAddress, 10_000);
      } catch (err) {
        throw new Error(`TEMPORAL_ADDRESS: ${temporalAddress} does not answer (${(err as Error).message})`);
      }
      // Workflows cannot start without dhm's search attributes: add the missing ones, or say who must.
      const connection = await connectTemporalClient(env);
      try {
        const added = await ensureSearchAttributes(connection, env.TEMPORAL_NAMESPACE);
        if (added.length) logger.info({ added, namespace: env.TEMPORAL_NAMESPACE }, 'registered dhm search attributes');
      } finally {
        await connection.close();
      }
    } else if (source.kind === 'existing-path') {
      const uiPort = opts.ports?.ui === undefined ? env.DHM_TEMPORAL_UI_PORT : opts.ports.ui;
      const server = await startTemporalDevServer({
        cliPath: source.path,
        stateDir,
        port: opts.ports?.temporal ?? env.DHM_TEMPORAL_PORT,
        uiPort,
        namespace: env.TEMPORAL_NAMESPACE,
        logger,
      });
      stops.push(server.stop);
      temporalAddress = server.address;
      uiUrl = server.uiUrl;
    } else {
      // No CLI and no Go: let the SDK download its dev server (machines with internet only).
      const testEnv = await TestWorkflowEnvironment.createLocal({
        server: {
          executable: { type: 'cached-download' },
          dbFilename: path.join(stateDir, 'temporal.db'),
          ip: '127.0.0.1',
          port: opts.ports?.temporal ?? env.DHM_TEMPORAL_PORT,
          ui: opts.ports?.ui !== null,
          uiPort: opts.ports?.ui ?? env.DHM_TEMPORAL_UI_PORT,
          namespace: env.TEMPORAL_NAMESPACE,
          searchAttributes: Object.keys(CUSTOM_SEARCH_ATTRIBUTES).map((name) => ({ name, type: 'KEYWORD' as const })) as never,
        },
      });
      stops.push(() => testEnv.teardown());
      temporalAddress = testEnv.address;
      uiUrl = opts.ports?.ui === null ? null : `http://127.0.0.1:${opts.ports?.ui ?? env.DHM_TEMPORAL_UI_PORT}`;
    }
    const temporalMode = source.kind === 'external' ? 'external' : 'dev';
    return { databaseUrl, adminDatabaseUrl, temporalAddress, namespace: env.TEMPORAL_NAMESPACE, uiUrl, temporalMode, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/**
 * DHM_HOME must be a folder this user can write. dhm creates it private: 0700, or as root 0711, so that the `postgres`
 * user the embedded Postgres runs as can pass through to its own data folder inside without listing the rest.
 */
function ensureStateDir(stateDir: string): void {
  try {
    const mode = process.getuid?.() === 0 ? 0o711 : 0o700;
    fs.mkdirSync(stateDir, { recursive: true, mode });
    fs.accessSync(stateDir, fs.constants.W_OK | fs.constants.X_OK);
    // Private whatever the umask or whoever made it before: nobody else lists it or reads what it holds (credentials,
    // the Postgres password, the Temporal store). Only a folder of our own is changed.
    const st = fs.statSync(stateDir);
    if (st.uid === process.getuid?.() && (st.mode & 0o777 & ~mode) !== 0) fs.chmodSync(stateDir, mode);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    const why =
      code === 'EACCES' || code === 'EPERM'
        ? 'permission denied'
        : code === 'ENOSPC'
          ? 'no space left on the disk'
          : code === 'ENOTDIR' || code === 'EEXIST'
            ? 'not a folder'
            : (err as Error).message;
    throw new UserFacingError(`DHM_HOME: cannot use ${path.resolve(stateDir)} (${why}); set DHM_HOME to a folder you can write to`, 'DHM_HOME');
  }
}

/**
 * One stack per state folder. A live owner means another `dhm up` is running: refuse rather than "clean up" its
 * servers. A dead owner (killed with SIGKILL) leaves its servers for the stale-process checks to stop.
 */
function claimStateDir(stateDir: string): void {
  const lock = path.join(stateDir, 'stack.pid');
  try {
    const owner = Number(fs.readFileSync(lock, 'utf8').trim());
    if (Number.isInteger(owner) && owner > 1 && owner !== process.pid && isAlive(owner)) {
      throw new UserFacingError(
        `DHM_HOME: ${stateDir} is in use by another dhm stack (pid ${owner}); stop it first or set DHM_HOME to another folder`,
        'DHM_HOME',
      );
    }
  } catch (err) {
    if (err instanceof UserFacingError) throw err;
  }
  fs.writeFileSync(lock, `${process.pid}\n`);
}

/** Host, port and credentials of the Postgres server a URL points at (the cluster's databases go on the same server). */
function serverOf(url: string): Omit<TemporalDatabases, 'name'> {
  const u = new URL(url);
  return { host: u.hostname || '127.0.0.1', port: Number(u.port || 5432), user: decodeURIComponent(u.username), password: decodeURIComponent(u.password) };
}

async function checkDatabase(url: string): Promise<void> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
  } catch (err) {
    const safe = url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
    throw new Error(`DATABASE_URL: cannot connect to ${safe} (${(err as Error).message})`);
  } finally {
    await client.end().catch(() => undefined);
  }
}

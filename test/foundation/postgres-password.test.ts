import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client } from 'pg';
import { PASSWORD_FILE, startEmbeddedPostgres } from '../../stack/embedded-postgres';
import { freePort } from '../../stack/ports';
import { createLogger } from '../../common/logger';

/**
 * The embedded Postgres's superuser has a generated password, kept in DHM_HOME (0600), not a fixed one; a data
 * directory made by an older dhm with the fixed password is migrated to a generated one on its first start.
 */
const logger = createLogger('pg-password-test', 'warn');
const canLogIn = async (port: number, password: string) => {
  const c = new Client({ host: '127.0.0.1', port, user: 'dhm', password, database: 'postgres', connectionTimeoutMillis: 5_000 });
  try {
    await c.connect();
    return true;
  } catch (err) {
    if ((err as { code?: string }).code === '28P01') return false;
    throw err;
  } finally {
    await c.end().catch(() => undefined);
  }
};

let home: string;
beforeAll(() => {
  home = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-pgpw-'));
  fs.chmodSync(home, 0o711); // as root, the postgres user passes through to its data folder
});
afterAll(() => fs.rmSync(home, { recursive: true, force: true }));

test('a new data directory gets a generated password, kept 0600 in DHM_HOME; the old fixed one does not log in', async () => {
  const port = await freePort();
  const pg = await startEmbeddedPostgres({ dataDir: path.join(home, 'postgres'), port, logger });
  try {
    const file = path.join(home, PASSWORD_FILE);
    const password = fs.readFileSync(file, 'utf8').trim();
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(password.length).toBeGreaterThanOrEqual(32);
    expect(password).not.toBe('dhm-local');
    expect(new URL(pg.adminUrl).password).toBe(encodeURIComponent(password));
    expect(await canLogIn(port, password)).toBe(true);
    expect(await canLogIn(port, 'dhm-local')).toBe(false);
  } finally {
    await pg.stop();
  }
});

test('a data directory with the old fixed password is migrated on its first start, and the new password survives restarts', async () => {
  const port = await freePort();
  const file = path.join(home, PASSWORD_FILE);
  // Make the directory look like an older dhm's: the fixed password, no password file.
  let pg = await startEmbeddedPostgres({ dataDir: path.join(home, 'postgres'), port, logger });
  const c = new Client({ connectionString: pg.adminUrl });
  await c.connect();
  await c.query(`ALTER ROLE dhm PASSWORD 'dhm-local'`);
  await c.end();
  await pg.stop();
  fs.rmSync(file);

  pg = await startEmbeddedPostgres({ dataDir: path.join(home, 'postgres'), port, logger });
  let password: string;
  try {
    password = fs.readFileSync(file, 'utf8').trim();
    expect(password).not.toBe('dhm-local');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.existsSync(`${file}.pending`)).toBe(false);
    expect(await canLogIn(port, 'dhm-local')).toBe(false);
    expect(await canLogIn(port, password)).toBe(true);
  } finally {
    await pg.stop();
  }
  // The next start uses the kept password as it is.
  fs.chmodSync(file, 0o644); // even if something widened it
  pg = await startEmbeddedPostgres({ dataDir: path.join(home, 'postgres'), port, logger });
  try {
    expect(fs.readFileSync(file, 'utf8').trim()).toBe(password);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(await canLogIn(port, password)).toBe(true);
  } finally {
    await pg.stop();
  }
});

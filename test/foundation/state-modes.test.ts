import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startDevStack } from '../../stack';
import { freePort } from '../../stack/ports';
import { loadEnv } from '../../common/config';
import { createLogger } from '../../common/logger';

/**
 * DHM_HOME and what the stack keeps in it are private whatever the umask: the folder 0700 (0711 as root, for the
 * postgres user to pass through), the Temporal SQLite store and the Postgres password 0600.
 */
test('with umask 000 and a world-writable DHM_HOME, the stack leaves DHM_HOME private and its store and password 0600', async () => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-modes-'));
  fs.chmodSync(home, 0o777);
  const env = { ...process.env };
  delete env.DATABASE_URL;
  delete env.TEMPORAL_ADDRESS;
  const oldUmask = process.umask(0);
  let stack: Awaited<ReturnType<typeof startDevStack>> | undefined;
  try {
    stack = await startDevStack({
      env: loadEnv({ ...env, DHM_TEMPORAL_MODE: 'dev' }),
      logger: createLogger('modes-test', 'warn'),
      stateDir: home,
      ports: { postgres: await freePort(), temporal: await freePort(), ui: null },
    });
    const mode = (f: string) => fs.statSync(path.join(home, f)).mode & 0o777;
    expect(mode('.')).toBe(process.getuid?.() === 0 ? 0o711 : 0o700);
    expect(mode('temporal.db')).toBe(0o600);
    expect(mode('postgres.password')).toBe(0o600);
    for (const f of fs.readdirSync(home).filter((n) => n.startsWith('temporal.db-'))) expect([f, mode(f)]).toEqual([f, 0o600]);
  } finally {
    process.umask(oldUmask);
    await stack?.stop();
    fs.rmSync(home, { recursive: true, force: true });
  }
});

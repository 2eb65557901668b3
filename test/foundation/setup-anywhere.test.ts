import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { freePort } from '../../stack/ports';
import { isAlive } from '../../stack/pidfile';
import { ROOT_PLACEMENT_DIR } from '../../stack/embedded-postgres';
import { isolatedDhmEnv, spawnDhm, waitForOutput, type DhmRun } from '../support/dhm-process';

/**
 * `dhm up` from wherever a newcomer puts dhm: a private folder as root (root's home and `mktemp -d` are 0700, which the
 * `postgres` user Postgres runs as cannot traverse), and as an unprivileged user. And when it cannot start, one line
 * that names the path or variable and the fix, a non-zero exit, and nothing left running.
 */

const isRoot = process.getuid?.() === 0;
const PROJECT = path.resolve(__dirname, '..', '..');

function uidOf(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^Uid:\s+(\d+)/m.exec(status)![1]);
}

/** Live processes of a user (what a stopped stack run as a throwaway user must not leave). */
function processesOfUid(uid: number): string[] {
  const out: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (uidOf(Number(pid)) === uid) out.push(`${pid} ${fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').slice(0, 120)}`);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function postgresPid(output: string, dataDir: string): number {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!fs.existsSync(pidFile)) throw new Error(`no ${pidFile}; dhm said: ${output.slice(-1000)}`);
  return Number(fs.readFileSync(pidFile, 'utf8').split('\n')[0]);
}

async function stop(run: DhmRun | { child: ChildProcess; exited: Promise<number | null> }): Promise<number | null> {
  run.child.kill('SIGTERM');
  return run.exited;
}

describe('dhm up starts from any folder a user can write to', () => {
  it(`from a private (0700) folder${isRoot ? ' as root: Postgres runs as its own user, the folder keeps its mode' : ''}`, async () => {
    const privateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-private-'));
    expect(fs.statSync(privateDir).mode & 0o777).toBe(0o700);
    const { env } = await isolatedDhmEnv('dhm-unused-');
    const home = path.join(privateDir, 'home', '.dhm');
    const run = spawnDhm(['up'], { ...env, DHM_HOME: home });
    try {
      await waitForOutput(run, /Press Ctrl-C to stop/, 120_000);
      const creds = JSON.parse(fs.readFileSync(path.join(home, 'credentials.json'), 'utf8'));
      expect((await fetch(`${creds.apiUrl}/healthz`)).status).toBe(200);
      // The user's own folders are untouched: never "fixed" by opening them up.
      expect(fs.statSync(privateDir).mode & 0o777).toBe(0o700);
      const dataDir = isRoot ? fs.readFileSync(path.join(home, 'postgres.location'), 'utf8').trim() : path.join(home, 'postgres');
      if (isRoot) expect(dataDir.startsWith(ROOT_PLACEMENT_DIR)).toBe(true);
      const pg = postgresPid(run.output(), dataDir);
      expect(uidOf(pg)).not.toBe(0);
      expect(await stop(run)).toBe(0);
      expect(isAlive(pg)).toBe(false);
    } finally {
      if (run.child.exitCode === null) await stop(run);
      const location = path.join(home, 'postgres.location');
      if (fs.existsSync(location)) fs.rmSync(fs.readFileSync(location, 'utf8').trim(), { recursive: true, force: true });
      fs.rmSync(privateDir, { recursive: true, force: true });
    }
  });

  it(`as an unprivileged user${isRoot ? ' (a throwaway one, since the suite runs as root)' : ''}, in their own home, with no sudo`, async () => {
    const name = `dhmt${randomBytes(3).toString('hex')}`;
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-user-'));
    const home = path.join(base, name);
    let uid = process.getuid!();
    let gid = process.getgid!();
    if (isRoot) {
      execFileSync('useradd', ['--home-dir', home, '--create-home', '--shell', '/bin/sh', '--user-group', name]);
      uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
      gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
      fs.chmodSync(base, 0o755);
    } else fs.mkdirSync(home, { mode: 0o700 });
    // The project as that user would have cloned it: a copy in their home (hard links: fast, and read-only to them).
    const checkout = path.join(home, 'dhm');
    fs.mkdirSync(checkout);
    for (const entry of fs.readdirSync(PROJECT).filter((e) => !['.git', '.dhm', '.scratch', 'coverage', 'test-artifacts'].includes(e))) {
      try {
        execFileSync('cp', ['-al', path.join(PROJECT, entry), checkout]);
      } catch {
        execFileSync('cp', ['-a', path.join(PROJECT, entry), checkout]);
      }
    }
    if (isRoot) execFileSync('chown', [`${uid}:${gid}`, checkout]);
    const ports = { pg: await freePort(), temporal: await freePort(), ui: await freePort(), api: await freePort() };
    const child = spawn(process.execPath, [path.join(checkout, 'bin', 'dhm.js'), 'up'], {
      cwd: checkout,
      uid,
      gid,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        PATH: process.env.PATH,
        HOME: home,
        DHM_HOME: path.join(home, '.dhm'),
        DHM_TOOLS_DIR: path.join(checkout, '.tools'),
        DHM_PG_PORT: String(ports.pg),
        DHM_TEMPORAL_PORT: String(ports.temporal),
        DHM_TEMPORAL_UI_PORT: String(ports.ui),
        DHM_API_PORT: String(ports.api),
        LOG_LEVEL: 'warn',
      },
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await waitForOutput({ child, output: () => out, exited }, /Press Ctrl-C to stop/, 120_000);
      expect((await fetch(`http://127.0.0.1:${ports.api}/healthz`)).status).toBe(200);
      const pg = postgresPid(out, path.join(home, '.dhm', 'postgres'));
      expect(uidOf(pg)).toBe(uid);
      expect(await stop({ child, exited })).toBe(0);
      if (isRoot) expect(processesOfUid(uid)).toEqual([]);
      expect(isAlive(pg)).toBe(false);
    } finally {
      if (child.exitCode === null) await stop({ child, exited });
      if (isRoot) execFileSync('userdel', ['--remove', name], { stdio: 'ignore' });
      fs.rmSync(base, { recursive: true, force: true });
    }
  });

  describe('when it cannot start: one line naming the path or variable and the fix, exit ≠ 0, nothing left running', () => {
    const expectOneLineRefusal = async (run: DhmRun, pattern: RegExp) => {
      expect(await run.exited).not.toBe(0);
      const dhmLines = run
        .output()
        .split('\n')
        .filter((l) => l.startsWith('dhm: '));
      expect(dhmLines).toEqual([expect.stringMatching(pattern)]);
      expect(run.output()).not.toMatch(/^\s+at /m); // no stack trace
    };

    it('DHM_HOME is a file, or a folder this user cannot write', async () => {
      const { stateDir, env } = await isolatedDhmEnv('dhm-badhome-');
      try {
        const file = path.join(stateDir, 'a-file');
        fs.writeFileSync(file, 'x');
        await expectOneLineRefusal(
          spawnDhm(['up'], { ...env, DHM_HOME: path.join(file, 'home') }),
          /^dhm: DHM_HOME: cannot use .*a-file\/home \(not a folder\); set DHM_HOME to a folder you can write to$/,
        );
        if (!isRoot) {
          const locked = path.join(stateDir, 'locked');
          fs.mkdirSync(locked, { mode: 0o500 });
          await expectOneLineRefusal(spawnDhm(['up'], { ...env, DHM_HOME: path.join(locked, 'home') }), /^dhm: DHM_HOME: cannot use .* \(permission denied\)/);
        }
        expect(fs.readdirSync(stateDir).sort()).toEqual(isRoot ? ['a-file'] : ['a-file', 'locked']);
      } finally {
        fs.rmSync(stateDir, { recursive: true, force: true });
      }
    });

    it(
      isRoot
        ? 'a full disk (DHM_HOME on a 4 MiB tmpfs): named, and the half-made data directory is not left to break the next start'
        : 'DATABASE_URL is named when the embedded Postgres is not wanted',
      async () => {
        if (!isRoot) {
          const { env } = await isolatedDhmEnv('dhm-nodisk-');
          await expectOneLineRefusal(spawnDhm(['up'], { ...env, DATABASE_URL: 'postgres://u:p@127.0.0.1:1/db' }), /^dhm: DATABASE_URL: cannot connect/);
          return;
        }
        const mount = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-full-'));
        fs.chmodSync(mount, 0o755);
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0755', 'tmpfs', mount]);
        try {
          const { env } = await isolatedDhmEnv('dhm-unused-');
          const run = spawnDhm(['up'], { ...env, DHM_HOME: path.join(mount, '.dhm') });
          await expectOneLineRefusal(run, /^dhm: DHM_HOME: no space left on the disk of .*; free some space or set DHM_HOME to a folder on another disk$/);
          expect(fs.readdirSync(path.join(mount, '.dhm', 'postgres'))).toEqual([]);
          const pids = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p));
          const leftovers = pids.filter((p) => {
            try {
              return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(mount);
            } catch {
              return false;
            }
          });
          expect(leftovers).toEqual([]);
        } finally {
          execFileSync('umount', [mount]);
          fs.rmSync(mount, { recursive: true, force: true });
        }
      },
    );
  });
});

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { isAlive } from '../../stack/pidfile';
import { cachedCliPath } from '../../stack/tools/temporal-cli';
import { isolatedDhmEnv, spawnDhm, waitForOutput } from '../support/dhm-process';

function pidsOf(stateDir: string): number[] {
  const pids: number[] = [];
  const pg = path.join(stateDir, 'postgres', 'postmaster.pid');
  const tmp = path.join(stateDir, 'temporal.pid');
  for (const f of [pg, tmp]) if (fs.existsSync(f)) pids.push(Number(fs.readFileSync(f, 'utf8').split('\n')[0]));
  return pids;
}

/** Processes whose command line mentions this state folder: what a stopped stack must not leave behind. */
function processesUsing(stateDir: string): string[] {
  const out: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(stateDir) && !cmd.includes('jest')) out.push(`${pid} ${cmd.slice(0, 120)}`);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

describe('dhm up: the embedded stack as a user runs it', () => {
  let stateDir: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    ({ stateDir, env } = await isolatedDhmEnv('dhm-up-'));
  });
  afterAll(() => {
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it('comes up, answers `temporal workflow list`, stops on SIGTERM leaving no process, and starts again', async () => {
    for (let round = 1; round <= 2; round++) {
      const run = spawnDhm(['up'], env);
      await waitForOutput(run, /Press Ctrl-C to stop/, 90_000);
      expect(run.output()).toMatch(/Postgres: +postgres:\/\/dhm:\*\*\*@127\.0\.0\.1:\d+\/dhm/);
      expect(run.output()).toMatch(new RegExp(`Temporal: +127\\.0\\.0\\.1:${env.DHM_TEMPORAL_PORT}`));
      expect(run.output()).toMatch(new RegExp(`Web UI: +http://127\\.0\\.0\\.1:${env.DHM_TEMPORAL_UI_PORT}`));
      const creds = JSON.parse(fs.readFileSync(path.join(stateDir, 'credentials.json'), 'utf8'));
      expect(fs.statSync(path.join(stateDir, 'credentials.json')).mode & 0o777).toBe(0o600);
      expect((await fetch(`${creds.apiUrl}/healthz`)).status).toBe(200);
      // A second terminal can use the real Temporal CLI against it.
      const list = execFileSync(cachedCliPath(), ['workflow', 'list', '--address', `127.0.0.1:${env.DHM_TEMPORAL_PORT}`], { encoding: 'utf8' });
      expect(typeof list).toBe('string');
      const pids = pidsOf(stateDir);
      expect(pids.length).toBe(2);
      run.child.kill('SIGTERM');
      expect(await run.exited).toBe(0);
      for (const pid of pids) expect(isAlive(pid)).toBe(false);
      expect(processesUsing(stateDir)).toEqual([]);
    }
  });

  it('after a SIGKILL the next start stops the leftovers and comes up; a second stack on the same folder is refused', async () => {
    const first = spawnDhm(['up'], env);
    await waitForOutput(first, /Press Ctrl-C to stop/, 90_000);
    const second = spawnDhm(['up'], env);
    expect(await second.exited).toBe(2);
    expect(second.output()).toMatch(/^dhm: DHM_HOME: .* is in use by another dhm stack/m);
    const leftovers = pidsOf(stateDir);
    first.child.kill('SIGKILL');
    await first.exited;
    expect(leftovers.every(isAlive)).toBe(true);
    const again = spawnDhm(['up'], env);
    await waitForOutput(again, /Press Ctrl-C to stop/, 90_000);
    for (const pid of leftovers) expect(isAlive(pid)).toBe(false);
    again.child.kill('SIGINT');
    expect(await again.exited).toBe(0);
    expect(processesUsing(stateDir)).toEqual([]);
  });

  it.each([
    ['DATABASE_URL', { DATABASE_URL: 'mysql://nope' }, /^dhm: DATABASE_URL: must be a URL starting with postgres:\/\/ or postgresql:\/\//m],
    [
      'DATABASE_URL unreachable',
      { DATABASE_URL: 'postgres://u:secret@127.0.0.1:1/db' },
      /^dhm: DATABASE_URL: cannot connect to postgres:\/\/u:\*\*\*@127\.0\.0\.1:1\/db/m,
    ],
    ['TEMPORAL_ADDRESS', { TEMPORAL_ADDRESS: 'not an address' }, /^dhm: TEMPORAL_ADDRESS: must be host:port/m],
    ['DHM_PG_PORT', { DHM_PG_PORT: '99999' }, /^dhm: DHM_PG_PORT: /m],
    ['DHM_TYPO', { DHM_TYPO: '1' }, /^dhm: DHM_TYPO: unknown setting/m],
  ])('bad configuration (%s) ends with one line naming the variable and a non-zero exit', async (_name, bad, pattern) => {
    const run = spawnDhm(['up'], { ...env, ...bad });
    const code = await run.exited;
    expect(code).not.toBe(0);
    expect(run.output()).toMatch(pattern);
    expect(run.output()).not.toMatch(/secret/);
    expect(run.output()).not.toMatch(/^\s+at /m); // no stack trace
    expect(processesUsing(stateDir)).toEqual([]);
  });

  it('an unreachable TEMPORAL_ADDRESS and a port in use are named, without a hang', async () => {
    const unreachable = spawnDhm(['up'], { ...env, TEMPORAL_ADDRESS: '127.0.0.1:1' });
    expect(await unreachable.exited).not.toBe(0);
    expect(unreachable.output()).toMatch(/^dhm: TEMPORAL_ADDRESS: 127\.0\.0\.1:1 does not answer/m);
    const blocker = net.createServer().listen(Number(env.DHM_PG_PORT), '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
    try {
      const busy = spawnDhm(['up'], env);
      expect(await busy.exited).not.toBe(0);
      expect(busy.output()).toMatch(new RegExp(`^dhm: DHM_PG_PORT: port ${env.DHM_PG_PORT} is already in use`, 'm'));
    } finally {
      blocker.close();
    }
    expect(processesUsing(stateDir)).toEqual([]);
  });
});

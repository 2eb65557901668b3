import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { freePort } from '../../stack/ports';

export const DHM_BIN = path.resolve(__dirname, '..', '..', 'bin', 'dhm.js');

export interface DhmRun {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

/** `dhm <args>` as a user runs it, output captured. */
export function spawnDhm(args: string[], env: NodeJS.ProcessEnv): DhmRun {
  const child = spawn(process.execPath, [DHM_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, output: () => out, exited };
}

export async function waitForOutput(run: DhmRun, pattern: RegExp, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pattern.test(run.output())) {
    if (run.child.exitCode !== null) throw new Error(`dhm exited (${run.child.exitCode}) before ${pattern}: ${run.output().slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`no ${pattern} within ${timeoutMs} ms: ${run.output().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100)); // poll interval within the deadline
  }
}

/**
 * A state folder and free ports of its own, so a `dhm up` under test never meets the suite's stack or a developer's.
 * The folder must be reachable by the `postgres` system user that embedded Postgres runs as under root.
 */
export async function isolatedDhmEnv(prefix: string, extra: NodeJS.ProcessEnv = {}): Promise<{ stateDir: string; env: NodeJS.ProcessEnv }> {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(stateDir, 0o755);
  return {
    stateDir,
    env: {
      DHM_HOME: stateDir,
      DHM_PG_PORT: String(await freePort()),
      DHM_TEMPORAL_PORT: String(await freePort()),
      DHM_TEMPORAL_UI_PORT: String(await freePort()),
      DHM_API_PORT: String(await freePort()),
      LOG_LEVEL: 'warn',
      DATABASE_URL: '',
      TEMPORAL_ADDRESS: '',
      ...extra,
    },
  };
}

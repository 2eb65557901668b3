import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { freePort } from '../../stack/ports';

const DHM = path.resolve(__dirname, '..', '..', 'bin', 'dhm.js');

/**
 * `dhm demo …` run as a user runs it, for the demo tests: a folder of its own (DHM_HOME inside; 0755, since the
 * postgres system user must reach its data folder), free ports, no DATABASE_URL or TEMPORAL_ADDRESS of the caller's.
 * `stop()` (afterAll) ends a demo still running — only if the test failed half-way: its process group gets a Ctrl-C,
 * then SIGKILL — and removes the folder.
 */
export function demoSandbox(prefix: string) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const home = path.join(root, 'home');
  const tmp = path.join(root, 'tmp');
  for (const d of [root, home, tmp]) {
    fs.mkdirSync(d, { recursive: true });
    fs.chmodSync(d, 0o755);
  }
  let child: ChildProcess | null = null;

  async function run(args: string[], extraEnv: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const env = {
      ...process.env,
      DHM_HOME: home,
      DHM_PG_PORT: String(await freePort()),
      DHM_TEMPORAL_PORT: String(await freePort()),
      DHM_TEMPORAL_UI_PORT: String(await freePort()),
      DHM_API_PORT: String(await freePort()),
      LOG_LEVEL: 'error',
      DATABASE_URL: '',
      TEMPORAL_ADDRESS: '',
      ...extraEnv,
    };
    const t0 = Date.now();
    const proc = spawn(process.execPath, [DHM, 'demo', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    child = proc;
    let stdout = '';
    let stderr = '';
    proc.stdout!.on('data', (d) => (stdout += d));
    proc.stderr!.on('data', (d) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => proc.on('exit', (c) => resolve(c)));
    process.stderr.write(
      `\n[dhm demo ${args.join(' ')}] exit ${code} after ${((Date.now() - t0) / 1000).toFixed(1)} s\n${stdout}\n${stderr ? `stderr:\n${stderr.slice(-3000)}\n` : ''}`,
    );
    return { code, stdout, stderr };
  }

  async function stop(): Promise<void> {
    if (child && child.exitCode === null && child.signalCode === null) {
      const c = child;
      const gone = new Promise((r) => c.once('exit', r));
      process.kill(-c.pid!, 'SIGINT');
      await Promise.race([gone, new Promise((r) => setTimeout(r, 15_000).unref())]);
      if (c.exitCode === null && c.signalCode === null) process.kill(-c.pid!, 'SIGKILL');
    }
    fs.rmSync(root, { recursive: true, force: true });
  }

  return { root, home, tmp, run, stop };
}

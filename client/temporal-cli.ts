import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadEnv } from '../common/config';

/** The newest CLI tag whose go.mod has no `replace` directive, which `go install pkg@version` requires. */
export const TEMPORAL_CLI_VERSION = 'v1.5.1';
const MODULE = `github.com/temporalio/cli/cmd/temporal@${TEMPORAL_CLI_VERSION}`;

export type TemporalServerSource =
  | { kind: 'external'; address: string }
  | { kind: 'existing-path'; path: string; origin: 'TEMPORAL_CLI' | 'PATH' | 'tools-cache' | 'built' }
  | { kind: 'download' };

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

function onPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && isExecutable(path.join(dir, name))) return path.join(dir, name);
  }
  return null;
}

export function cachedCliPath(toolsDir = loadEnv().DHM_TOOLS_DIR): string {
  return path.join(toolsDir, 'bin', 'temporal');
}

/**
 * Where the Temporal server comes from, in the order the README documents: an external cluster; an explicit or
 * installed CLI; one built earlier into the tools folder; a fresh build with Go; the SDK's own download.
 */
export async function resolveTemporalServer(
  opts: { env?: NodeJS.ProcessEnv; log?: (line: string) => void; build?: boolean } = {},
): Promise<TemporalServerSource> {
  const env = loadEnv(opts.env ?? process.env);
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  if (env.TEMPORAL_ADDRESS) return { kind: 'external', address: env.TEMPORAL_ADDRESS };
  if (env.TEMPORAL_CLI) {
    if (!isExecutable(env.TEMPORAL_CLI)) throw new Error(`TEMPORAL_CLI: ${env.TEMPORAL_CLI} is not an executable file`);
    return { kind: 'existing-path', path: env.TEMPORAL_CLI, origin: 'TEMPORAL_CLI' };
  }
  const installed = onPath('temporal');
  if (installed) return { kind: 'existing-path', path: installed, origin: 'PATH' };
  const cached = cachedCliPath(env.DHM_TOOLS_DIR);
  if (isExecutable(cached)) return { kind: 'existing-path', path: cached, origin: 'tools-cache' };
  if (opts.build !== false && onPath('go')) {
    await buildWithGo(env.DHM_TOOLS_DIR, log);
    return { kind: 'existing-path', path: cached, origin: 'built' };
  }
  return { kind: 'download' };
}

/**
 * `go install` into a temporary GOBIN, then an atomic rename: a build killed half-way never leaves a broken binary,
 * and two builds racing both end with a good one.
 */
async function buildWithGo(toolsDir: string, log: (line: string) => void): Promise<void> {
  const binDir = path.join(toolsDir, 'bin');
  const tmpBin = path.join(toolsDir, `build-${process.pid}`);
  fs.mkdirSync(binDir, { recursive: true });
  fs.mkdirSync(tmpBin, { recursive: true });
  const goVersion = execFileSync('go', ['version'], { encoding: 'utf8' }).trim();
  log(`Building the Temporal CLI ${TEMPORAL_CLI_VERSION} with ${goVersion} into ${binDir} (first time only; about 3-6 minutes on 2 cores)...`);
  const started = Date.now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn('go', ['install', MODULE], {
      env: { ...process.env, GOBIN: tmpBin, GOFLAGS: '-trimpath' },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`go install ${MODULE} exited with ${code}`))));
  });
  fs.renameSync(path.join(tmpBin, 'temporal'), path.join(binDir, 'temporal'));
  fs.rmSync(tmpBin, { recursive: true, force: true });
  log(`Built the Temporal CLI in ${Math.round((Date.now() - started) / 1000)} s.`);
}

import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface GoInstallOptions {
  toolsDir: string;
  /** `module/path/cmd@version` packages, installed by one `go install`. */
  packages: string[];
  /** Name `go install` gives a binary → its name in `<toolsDir>/bin`. */
  binaries: Record<string, string>;
  /** What is built, for the log lines. */
  what: string;
  /** Rough duration on 2 cores, for the first log line. */
  expected: string;
  log: (line: string) => void;
}

/**
 * `go install` into a temporary GOBIN, then an atomic rename of each binary into `<toolsDir>/bin`: a build killed
 * half-way never leaves a broken binary, and two builds racing both end with good ones.
 */
export async function goInstallAtomic(opts: GoInstallOptions): Promise<void> {
  const binDir = path.join(opts.toolsDir, 'bin');
  const tmpBin = path.join(opts.toolsDir, `build-${process.pid}-${randomBytes(3).toString('hex')}`);
  fs.mkdirSync(binDir, { recursive: true });
  fs.mkdirSync(tmpBin, { recursive: true });
  try {
    const goVersion = execFileSync('go', ['version'], { encoding: 'utf8' }).trim();
    opts.log(`Building ${opts.what} with ${goVersion} into ${binDir} (first time only; about ${opts.expected} on 2 cores)...`);
    const started = Date.now();
    await new Promise<void>((resolve, reject) => {
      const child = spawn('go', ['install', ...opts.packages], {
        env: { ...process.env, GOBIN: tmpBin, GOFLAGS: '-trimpath' },
        stdio: ['ignore', 'inherit', 'inherit'],
      });
      child.on('error', reject);
      child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`go install ${opts.packages.join(' ')} exited with ${code}`))));
    });
    for (const [built, name] of Object.entries(opts.binaries)) fs.renameSync(path.join(tmpBin, built), path.join(binDir, name));
    opts.log(`Built ${opts.what} in ${Math.round((Date.now() - started) / 1000)} s.`);
  } finally {
    fs.rmSync(tmpBin, { recursive: true, force: true });
  }
}

export function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

export function onPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && isExecutable(path.join(dir, name))) return path.join(dir, name);
  }
  return null;
}

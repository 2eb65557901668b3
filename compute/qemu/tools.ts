import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';

/**
 * Where the `qemu` backend finds QEMU and the guest: `scripts/qemu/setup.sh` fills `<tools>/qemu` and writes its
 * manifest. Nothing is downloaded at run time; a missing set-up is an error that says how to fix it.
 */

const PROJECT_ROOT = path.resolve(__dirname, '..', '..');
export const SETUP_SCRIPT = path.join(PROJECT_ROOT, 'scripts', 'qemu', 'setup.sh');

/** `$DHM_TOOLS_DIR/qemu`, else `<project>/.tools/qemu`: the same rule as the set-up script. */
export function defaultQemuToolsDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(env.DHM_TOOLS_DIR ? path.resolve(env.DHM_TOOLS_DIR) : path.join(PROJECT_ROOT, '.tools'), 'qemu');
}

const manifestSchema = z.object({
  qemuVersion: z.string(),
  kernelPackage: z.string(),
  qemu: z.string(),
  libraryPath: z.array(z.string()),
  moduleDir: z.string(),
  dataDirs: z.array(z.string()),
  kernel: z.string(),
  initrd: z.string(),
  /** Set-ups from before network storage have none. */
  storageDaemon: z.string().optional(),
});

/** Absolute paths of everything a QEMU process of ours needs. */
export interface QemuTools {
  dir: string;
  qemuVersion: string;
  qemuBinary: string;
  /** LD_LIBRARY_PATH entries: shared libraries this host lacks, unpacked from debs. */
  libraryPath: string[];
  moduleDir: string;
  /** `-L` folders (firmware, option ROMs). */
  dataDirs: string[];
  kernel: string;
  initrd: string;
  /** qemu-storage-daemon (the testbed's storage service), when the set-up has it. */
  storageDaemon?: string;
}

export function loadQemuTools(dir = defaultQemuToolsDir()): QemuTools {
  const manifestPath = path.join(dir, 'manifest.json');
  let raw: string;
  try {
    raw = fs.readFileSync(manifestPath, 'utf8');
  } catch {
    throw new Error(`QEMU tools are not set up in ${dir}: run scripts/qemu/setup.sh (no downloads happen at run time)`);
  }
  const m = manifestSchema.parse(JSON.parse(raw));
  const abs = (p: string) => path.resolve(dir, p);
  const tools: QemuTools = {
    dir,
    qemuVersion: m.qemuVersion,
    qemuBinary: abs(m.qemu),
    libraryPath: m.libraryPath.map(abs),
    moduleDir: abs(m.moduleDir),
    dataDirs: m.dataDirs.map(abs),
    kernel: abs(m.kernel),
    initrd: abs(m.initrd),
    ...(m.storageDaemon ? { storageDaemon: abs(m.storageDaemon) } : {}),
  };
  for (const f of [tools.qemuBinary, tools.kernel, tools.initrd])
    if (!fs.existsSync(f)) throw new Error(`QEMU tools in ${dir} are incomplete (${f} is missing): run scripts/qemu/setup.sh`);
  return tools;
}

/** Runs the (cached, idempotent) set-up script; for tests and `dhm`, which may start before anyone ran it. */
export function runQemuSetup(opts: { toolsRoot?: string; timeoutMs?: number } = {}): Promise<string> {
  const env = { ...process.env, ...(opts.toolsRoot ? { DHM_TOOLS_DIR: opts.toolsRoot } : {}) };
  return new Promise((resolve, reject) => {
    execFile('bash', [SETUP_SCRIPT], { env, timeout: opts.timeoutMs ?? 600_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`scripts/qemu/setup.sh failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

import * as path from 'node:path';
import { loadEnv } from '../../common/config';
import { goInstallAtomic, isExecutable, onPath } from './go-install';

/** The newest CLI tag whose go.mod has no `replace` directive, which `go install pkg@version` requires. */
export const TEMPORAL_CLI_VERSION = 'v1.5.1';
const MODULE = `github.com/temporalio/cli/cmd/temporal@${TEMPORAL_CLI_VERSION}`;

export type TemporalServerSource =
  | { kind: 'external'; address: string }
  | { kind: 'existing-path'; path: string; origin: 'TEMPORAL_CLI' | 'PATH' | 'tools-cache' | 'built' }
  | { kind: 'download' };

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

async function buildWithGo(toolsDir: string, log: (line: string) => void): Promise<void> {
  await goInstallAtomic({
    toolsDir,
    packages: [MODULE],
    binaries: { temporal: 'temporal' },
    what: `the Temporal CLI ${TEMPORAL_CLI_VERSION}`,
    expected: '3-6 minutes',
    log,
  });
}

import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { UserFacingError } from '../../common/errors';
import { goInstallAtomic, isExecutable, onPath } from './go-install';

/** The server the CLI v1.5.1's dev server embeds: the cluster runs the same engine as the default dev stack. */
export const TEMPORAL_SERVER_VERSION = 'v1.29.1';
/** The Web UI server the CLI v1.5.1 embeds (its go.mod: github.com/temporalio/ui-server/v2 v2.42.1). */
export const TEMPORAL_UI_SERVER_VERSION = 'v2.42.1';
/** The SQL schema versions server v1.29.1 requires (schema/postgresql/v12/version.go in its module). */
export const TEMPORAL_SCHEMA_VERSIONS = { temporal: '1.18', visibility: '1.9' } as const;

export interface ClusterTools {
  server: string;
  sqlTool: string;
  uiServer: string;
}

export function clusterToolPaths(toolsDir: string): ClusterTools {
  const bin = path.join(toolsDir, 'bin');
  return { server: path.join(bin, 'temporal-server'), sqlTool: path.join(bin, 'temporal-sql-tool'), uiServer: path.join(bin, 'temporal-ui-server') };
}

/** `<binary> --version` names the version it was built from; a binary of another pin is rebuilt. */
function versionOf(binary: string): string {
  try {
    return execFileSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
}
const hasVersion = (binary: string, version: string) => isExecutable(binary) && versionOf(binary).includes(version.replace(/^v/, ''));

/**
 * The Temporal server, its SQL tool and the Web UI server in the tools folder, at the pinned versions; built with Go
 * (from the Go module proxy, like the CLI) the first time they are needed. Only the cluster mode needs them.
 */
export async function ensureClusterTools(opts: { toolsDir: string; log: (line: string) => void; build?: boolean }): Promise<ClusterTools> {
  const tools = clusterToolPaths(opts.toolsDir);
  const serverOk = hasVersion(tools.server, TEMPORAL_SERVER_VERSION) && hasVersion(tools.sqlTool, TEMPORAL_SERVER_VERSION);
  const uiOk = hasVersion(tools.uiServer, TEMPORAL_UI_SERVER_VERSION);
  if (serverOk && uiOk) return tools;
  if (opts.build === false || !onPath('go')) {
    const missing = [!serverOk && `temporal-server/temporal-sql-tool ${TEMPORAL_SERVER_VERSION}`, !uiOk && `temporal-ui-server ${TEMPORAL_UI_SERVER_VERSION}`]
      .filter(Boolean)
      .join(' and ');
    throw new UserFacingError(
      `DHM_TEMPORAL_MODE: the cluster needs ${missing} in ${path.dirname(tools.server)}; install Go and run \`npm run tools -- --cluster\``,
      'DHM_TEMPORAL_MODE',
    );
  }
  if (!serverOk) {
    await goInstallAtomic({
      toolsDir: opts.toolsDir,
      packages: [`go.temporal.io/server/cmd/server@${TEMPORAL_SERVER_VERSION}`, `go.temporal.io/server/cmd/tools/sql@${TEMPORAL_SERVER_VERSION}`],
      binaries: { server: 'temporal-server', sql: 'temporal-sql-tool' },
      what: `the Temporal server and SQL tool ${TEMPORAL_SERVER_VERSION}`,
      expected: '3-7 minutes',
      log: opts.log,
    });
  }
  if (!uiOk) {
    // Its own `go install`: its binary is named `server` too.
    await goInstallAtomic({
      toolsDir: opts.toolsDir,
      packages: [`github.com/temporalio/ui-server/v2/cmd/server@${TEMPORAL_UI_SERVER_VERSION}`],
      binaries: { server: 'temporal-ui-server' },
      what: `the Temporal Web UI server ${TEMPORAL_UI_SERVER_VERSION}`,
      expected: '1-2 minutes',
      log: opts.log,
    });
  }
  return tools;
}

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UserFacingError } from '../../common/errors';
import { ensureClusterTools, TEMPORAL_SERVER_VERSION, TEMPORAL_UI_SERVER_VERSION } from '../../stack/tools/temporal-server';

/** The tools folder's pinning: binaries answer `--version`; one of another version counts as missing. */
describe('cluster tools in the tools folder', () => {
  let dir: string;
  const fake = (name: string, says: string) => {
    fs.mkdirSync(path.join(dir, 'bin'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'bin', name), `#!/bin/sh\necho "${says}"\n`, { mode: 0o755 });
  };
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-tools-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('the pinned versions are found and used without building', async () => {
    fake('temporal-server', `temporal version ${TEMPORAL_SERVER_VERSION.slice(1)}`);
    fake('temporal-sql-tool', `temporal-sql-tool version ${TEMPORAL_SERVER_VERSION.slice(1)}`);
    fake('temporal-ui-server', `Temporal UI version ${TEMPORAL_UI_SERVER_VERSION.slice(1)}`);
    const tools = await ensureClusterTools({ toolsDir: dir, log: () => undefined, build: false });
    expect(tools).toEqual({
      server: path.join(dir, 'bin', 'temporal-server'),
      sqlTool: path.join(dir, 'bin', 'temporal-sql-tool'),
      uiServer: path.join(dir, 'bin', 'temporal-ui-server'),
    });
  });

  test('a server of another version, or none, is named with the command that builds the pinned one', async () => {
    fake('temporal-server', 'temporal version 1.28.0');
    fake('temporal-sql-tool', `temporal-sql-tool version ${TEMPORAL_SERVER_VERSION.slice(1)}`);
    const err = await ensureClusterTools({ toolsDir: dir, log: () => undefined, build: false }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(UserFacingError);
    expect((err as Error).message).toBe(
      `DHM_TEMPORAL_MODE: the cluster needs temporal-server/temporal-sql-tool ${TEMPORAL_SERVER_VERSION} and temporal-ui-server ${TEMPORAL_UI_SERVER_VERSION} in ${path.join(dir, 'bin')}; install Go and run \`npm run tools -- --cluster\``,
    );
  });
});

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bundleWorkflowCode } from '@temporalio/worker';
import { startDevStack } from '../../stack';
import { freePort } from '../../stack/ports';
import { createLogger } from '../../common/logger';

/**
 * One real Postgres and one real Temporal dev server for the whole suite, on free ports under a temporary folder,
 * and the workflow code bundled once. Test files find them through DHM_TEST_* variables.
 */
export default async function globalSetup(): Promise<void> {
  const started = Date.now();
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-test-'));
  fs.chmodSync(stateDir, 0o755); // the postgres system user must reach its data folder
  const logger = createLogger('test-stack', process.env.DHM_TEST_LOG_LEVEL ?? 'warn');
  const env = { ...process.env };
  delete env.DATABASE_URL;
  delete env.TEMPORAL_ADDRESS;
  const { loadEnv } = await import('../../common/config');
  const stack = await startDevStack({
    env: loadEnv(env),
    logger,
    stateDir,
    ports: { postgres: await freePort(), temporal: await freePort(), ui: await freePort() },
  });
  const bundle = await bundleWorkflowCode({
    workflowsPath: require.resolve('./workflows'),
    logger: { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error: (m: string) => logger.error(m) } as never,
  });
  const bundlePath = path.join(stateDir, 'workflow-bundle.js');
  fs.writeFileSync(bundlePath, bundle.code);
  process.env.DHM_TEST_STATE_DIR = stateDir;
  process.env.DHM_TEST_DATABASE_URL = stack.adminDatabaseUrl ?? stack.databaseUrl;
  process.env.DHM_TEST_TEMPORAL_ADDRESS = stack.temporalAddress;
  process.env.DHM_TEST_UI_URL = stack.uiUrl ?? '';
  process.env.DHM_TEST_WORKFLOW_BUNDLE = bundlePath;
  (globalThis as { __dhmStack?: { stop(): Promise<void>; stateDir: string } }).__dhmStack = { stop: stack.stop, stateDir };
  process.stderr.write(`\n[dhm test stack] Postgres + Temporal ${stack.temporalMode} ${stack.temporalAddress} up in ${Date.now() - started} ms\n`);
}

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { loadEnv } from '../../common/config';
import { temporalConnectionOptions } from '../../common/temporal-connection';
import { ensureTemporalPki, temporalClientTls, type TemporalPki } from '../../stack/temporal-tls';
import { startTestCluster, type TestCluster } from './support';

/**
 * Temporal's frontend with mutual TLS (deploy/temporal/config/base.yaml with TEMPORAL_TLS_DIR, certificates from
 * stack/temporal-tls.ts, as `dhm pki` makes them): the real multi-process cluster refuses a plain-text client, a TLS
 * client without a certificate and one whose certificate another CA signed; dhm's client, configured the way every
 * role is (TEMPORAL_TLS_CA / _CERT / _KEY / _SERVER_NAME: file paths), starts a workflow and reads it back; a worker
 * connection (NativeConnection) gets in the same way; the Web UI server reaches the frontend with its own certificate.
 */
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-temporal-mtls-'));
let tc: TestCluster;
let pki: TemporalPki;
let foreign: TemporalPki;

beforeAll(async () => {
  [pki, foreign] = await Promise.all([ensureTemporalPki(path.join(root, 'pki')), ensureTemporalPki(path.join(root, 'other-ca'))]);
  tc = await startTestCluster({ tls: pki, shards: 4, historyProcesses: 1 });
}, 120_000);
afterAll(async () => {
  await tc?.stop();
  fs.rmSync(root, { recursive: true, force: true });
}, 60_000);

/** Why a connection and one call were refused (the SDK connects lazily on some paths: a call makes sure). */
async function refusal(opts: Parameters<typeof Connection.connect>[0]): Promise<string> {
  let conn: Connection | undefined;
  try {
    conn = await Connection.connect({ connectTimeout: 1_000, ...opts });
    await conn.workflowService.getSystemInfo({});
  } catch (err) {
    return (err as Error).message;
  } finally {
    await conn?.close().catch(() => undefined);
  }
  throw new Error('the frontend accepted the connection');
}

test('a client without a certificate, or with one of another CA, is refused; plain text too', async () => {
  const address = tc.cluster.address;
  const caOnly = { serverNameOverride: pki.serverName, serverRootCACertificate: fs.readFileSync(path.join(pki.clientDir, 'ca-cert.pem')) };
  expect(await refusal({ address })).toBeTruthy();
  expect(await refusal({ address, tls: caOnly })).toBeTruthy();
  const otherCa = temporalClientTls(foreign, foreign.clientDir);
  // Another CA's client certificate, trusting our frontend's CA: the frontend refuses the certificate.
  expect(await refusal({ address, tls: { ...caOnly, clientCertPair: otherCa.clientCertPair } })).toBeTruthy();
});

test("dhm's client, configured by file paths, starts a workflow and reads it; a worker connection gets in; the Web UI reads through its own certificate", async () => {
  const env = loadEnv({
    TEMPORAL_ADDRESS: tc.cluster.address,
    TEMPORAL_TLS_CA: path.join(pki.clientDir, 'ca-cert.pem'),
    TEMPORAL_TLS_CERT: path.join(pki.clientDir, 'client-cert.pem'),
    TEMPORAL_TLS_KEY: path.join(pki.clientDir, 'client-key.pem'),
    TEMPORAL_TLS_SERVER_NAME: pki.serverName,
  });
  const connection = await Connection.connect(temporalConnectionOptions(env));
  try {
    const client = new Client({ connection, namespace: 'default' });
    const workflowId = `mtls-${Date.now()}`;
    const handle = await client.workflow.start('noSuchWorkflowType', { taskQueue: 'mtls-test', workflowId, args: [] });
    const desc = await handle.describe();
    expect(desc.workflowId).toBe(workflowId);
    expect(desc.status.name).toBe('RUNNING');
    await handle.terminate('test over');
  } finally {
    await connection.close();
  }
  const worker = await NativeConnection.connect(temporalConnectionOptions(env));
  await worker.close();
  const ui = await fetch(`${tc.cluster.uiUrl}/api/v1/namespaces/default`, { signal: AbortSignal.timeout(5_000) });
  expect(ui.status).toBe(200);
  expect(((await ui.json()) as { namespaceInfo?: { name?: string } }).namespaceInfo?.name).toBe('default');
});

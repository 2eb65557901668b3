import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as https from 'node:https';
import { ensureAgentPki, type AgentClientTls, type AgentPki } from '../../compute/agent-tls';

let root: string | undefined;

/**
 * The agent plane's PKI of this test process (a fleet CA, the control plane's certificate, one pair per server id
 * asked for so far), in a temporary folder removed at exit. Certificates are issued once per id and reused.
 */
export async function testAgentPki(serverIds: string[] = []): Promise<AgentPki> {
  if (!root) {
    const made = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-test-pki-'));
    root = made;
    process.once('exit', () => fs.rmSync(made, { recursive: true, force: true }));
  }
  return ensureAgentPki(path.join(root, 'pki'), serverIds, { field: 'test pki' });
}

/**
 * A raw HTTPS request to an agent, for what the typed client would never send: with `tls` (default: the control
 * plane's certificate), or with no client certificate at all (`null`). Rejects when the handshake is refused.
 */
export async function agentFetch(
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
  tls: AgentClientTls | null | undefined = undefined,
): Promise<{ status: number; text: string; json(): Promise<unknown> }> {
  const pki = await testAgentPki();
  const creds = tls === undefined ? pki.controlPlane : tls;
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method: init.method ?? 'GET',
        headers: init.headers,
        ca: creds?.ca ?? pki.controlPlane.ca,
        ...(creds ? { cert: creds.cert, key: creds.key } : {}),
        checkServerIdentity: () => undefined,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, text, json: async () => JSON.parse(text) as unknown });
        });
      },
    );
    req.on('error', reject);
    req.end(init.body);
  });
}

import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as os from 'node:os';
import * as path from 'node:path';
import { createAgentClient } from '../../compute/agent-client';
import { startAgent, type RunningAgent } from '../../compute/agent-service';
import { agentHttpsAgent, ensureAgentPki, loadServerTls, peerClientTls, revokeServer, rotateServer, type AgentPki } from '../../compute/agent-tls';
import { UserFacingError } from '../../common/errors';
import { normalSerial } from '../../compute/cert-revocation';
import { agentFetch } from '../support/agent-pki';
import { logger, SERVER_CAPACITY } from './helpers';

/**
 * Revoking and rotating a server's agent-plane certificates (`dhm pki --revoke / --rotate`): a revoked certificate is
 * refused by the agents (403) and by the control plane (no connection to an agent that shows one), from the next call,
 * with no agent restarted; after a rotation only that server's agent restarts, with new certificates the other agents
 * accept at once, and the old ones stay refused. Real agents (sim backend) over real mTLS, a PKI of this test's own.
 */
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-revocation-'));
const IDS = ['srv-r1', 'srv-r2', 'srv-r3'];
let pki: AgentPki;
const running: RunningAgent[] = [];

const start = async (id: string) => {
  const agent = await startAgent({
    serverId: id,
    tls: loadServerTls(pki.serverDir(id), id, 'test'),
    capacity: SERVER_CAPACITY,
    nicBandwidthBps: 1e9,
    timeScale: 1000,
    logger,
  });
  running.push(agent);
  return agent;
};

beforeAll(async () => {
  pki = await ensureAgentPki(path.join(root, 'pki'), IDS, { field: 'test pki' });
});
afterAll(async () => {
  await Promise.all(running.map((a) => a.stop()));
  fs.rmSync(root, { recursive: true, force: true });
});

/** What an agent answers a call made with `id`'s client certificate (as of now). */
const asServer = async (url: string, tls: ReturnType<typeof peerClientTls>) => {
  const res = await agentFetch(`${url}/healthz`, {}, tls);
  return { status: res.status, text: res.text };
};

const failure = async (p: Promise<unknown>): Promise<Error> => {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the call to fail');
};

test("a revoked server's certificates are refused by the other agents and the control plane; a rotated server is back without restarting the others", async () => {
  const r1 = await start('srv-r1');
  let r2 = await start('srv-r2');
  const oldR2 = peerClientTls(pki.server('srv-r2'));
  const r3Tls = peerClientTls(pki.server('srv-r3'));
  const cp = (id: string, url: string) => createAgentClient({ baseUrl: url, tls: pki.controlPlane, serverId: id, timeoutMs: 5_000 });
  expect(await asServer(r1.url, oldR2)).toMatchObject({ status: 200 });
  expect((await cp('srv-r2', r2.url).info()).serverId).toBe('srv-r2');

  const revoked = revokeServer(pki.root, 'srv-r2', '--revoke');
  expect(revoked).toHaveLength(2); // its server and its client certificate
  // srv-r1 was not restarted: the next call with srv-r2's certificate is refused, naming the revoked serial.
  const refused = await asServer(r1.url, oldR2);
  expect(refused.status).toBe(403);
  expect(refused.text).toMatch(/revoked/);
  expect(revoked.some((s) => refused.text.includes(s))).toBe(true);
  expect(await asServer(r1.url, r3Tls)).toMatchObject({ status: 200 }); // others unaffected
  // The control plane does not talk to an agent that shows a revoked certificate (a new connection is refused).
  const err = await failure(cp('srv-r2', r2.url).info());
  expect(err.message).toMatch(/revoked/);
  expect((await cp('srv-r1', r1.url).info()).serverId).toBe('srv-r1');

  // Rotation: new keys and certificates for srv-r2; only its agent restarts.
  await r2.stop();
  running.splice(running.indexOf(r2), 1);
  await rotateServer(pki.root, 'srv-r2', '--rotate');
  r2 = await start('srv-r2');
  const newR2 = peerClientTls(pki.server('srv-r2'));
  expect(newR2.cert).not.toBe(oldR2.cert);
  expect(await asServer(r1.url, newR2)).toMatchObject({ status: 200 }); // srv-r1 still the same process
  expect((await asServer(r1.url, oldR2)).status).toBe(403); // the old certificate stays refused
  expect((await cp('srv-r2', r2.url).info()).serverId).toBe('srv-r2');
});

test('rotating or revoking a server the PKI has no certificates for is refused naming the option; nothing is written', async () => {
  const listBefore = fs.existsSync(path.join(pki.root, 'servers', 'revoked.json'))
    ? fs.readFileSync(path.join(pki.root, 'servers', 'revoked.json'), 'utf8')
    : null;
  for (const [f, field] of [
    [() => revokeServer(pki.root, 'srv-none', '--revoke'), '--revoke'],
    [() => rotateServer(pki.root, 'srv-none', '--rotate'), '--rotate'],
  ] as const) {
    const err = await failure(Promise.resolve().then((): unknown => f()));
    expect(err).toBeInstanceOf(UserFacingError);
    expect(err.message).toMatch(new RegExp(`^${field}: no certificates of server srv-none`));
  }
  const listAfter = fs.existsSync(path.join(pki.root, 'servers', 'revoked.json'))
    ? fs.readFileSync(path.join(pki.root, 'servers', 'revoked.json'), 'utf8')
    : null;
  expect(listAfter).toBe(listBefore);
  expect(fs.existsSync(path.join(pki.root, 'servers', 'srv-none'))).toBe(false);
});

/** Waits for `cond` with a deadline (no fixed sleep). */
async function until(what: string, cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 25)); // polling a condition, bounded by the deadline
  }
}

test('connections kept alive across a revocation are cut: the control plane to the revoked agent, the revoked server to another agent', async () => {
  const r1 = await start('srv-r1');
  const r3 = await start('srv-r3');
  // The control plane's pool to srv-r3's agent, kept alive after a call.
  const pool = agentHttpsAgent(pki.controlPlane);
  const client = createAgentClient({ baseUrl: r3.url, tls: pool, serverId: 'srv-r3', timeoutMs: 5_000 });
  expect((await client.info()).serverId).toBe('srv-r3');
  const pooled = Object.values(pool.freeSockets).flat();
  expect(pooled).toHaveLength(1);
  const cpSocket = pooled[0]!;
  // srv-r3 calling srv-r1 with its own client certificate, on a kept-alive connection of its own.
  const r3Tls = peerClientTls(pki.server('srv-r3'));
  const peerPool = new https.Agent({ keepAlive: true, ca: r3Tls.ca, cert: r3Tls.cert, key: r3Tls.key, checkServerIdentity: () => undefined });
  const peerStatus = await new Promise<number>((resolve, reject) => {
    https
      .get(`${r1.url}/healthz`, { agent: peerPool }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      })
      .on('error', reject);
  });
  expect(peerStatus).toBe(200);
  const peerSocket = Object.values(peerPool.freeSockets).flat()[0]!;
  expect(peerSocket.destroyed).toBe(false);

  revokeServer(pki.root, 'srv-r3', '--revoke');
  // Neither side makes a call: both connections end, the pool's and srv-r1's (srv-r3's socket sees the close).
  await until("the control plane's kept-alive connection to srv-r3", () => cpSocket.destroyed);
  await until("srv-r3's kept-alive connection to srv-r1", () => peerSocket.destroyed);
  // And the next call over the same client is refused (a new connection: the handshake's check).
  const err = await failure(client.info());
  expect(err.message).toMatch(/revoked/);
  peerPool.destroy();
  pool.destroy();
});

test("--revoke writes the fleet CA's CRL (QEMU's ca-crl.pem) into every server's folder: openssl's check refuses the revoked certificates, accepts the others", async () => {
  // srv-r2 and srv-r3 are revoked by the tests above (srv-r2's first certificates; srv-r2 was rotated since).
  const crl = path.join(pki.root, 'servers', 'ca-crl.pem');
  const verify = (cert: string) =>
    spawnSync('openssl', ['verify', '-crl_check', '-CAfile', path.join(pki.caDir, 'ca-cert.pem'), '-CRLfile', crl, cert], { encoding: 'utf8' });
  const text = execFileSync('openssl', ['crl', '-in', crl, '-noout', '-text'], { encoding: 'utf8' });
  expect(text).toMatch(/Issuer: CN ?= ?dhm fleet CA/);
  const listed = [...text.matchAll(/Serial Number: ([0-9A-F]+)/gi)].map((m) => normalSerial(m[1]!));
  const revokedSerials = JSON.parse(fs.readFileSync(path.join(pki.root, 'servers', 'revoked.json'), 'utf8')) as { serials: Array<{ serial: string }> };
  expect(listed.sort()).toEqual(revokedSerials.serials.map((s) => s.serial).sort());
  for (const id of IDS) expect(fs.readFileSync(path.join(pki.serverDir(id), 'ca-crl.pem'), 'utf8')).toBe(fs.readFileSync(crl, 'utf8'));
  for (const role of ['server', 'client']) {
    const r3 = verify(path.join(pki.serverDir('srv-r3'), `${role}-cert.pem`));
    expect(r3.status).not.toBe(0);
    expect(r3.stdout + r3.stderr).toMatch(/certificate revoked/);
    expect(verify(path.join(pki.serverDir('srv-r1'), `${role}-cert.pem`)).status).toBe(0);
    expect(verify(path.join(pki.serverDir('srv-r2'), `${role}-cert.pem`)).status).toBe(0); // rotated: its new certificates
  }
  // No key in the folder the CRL was made in, nothing left next to the CA key.
  expect(fs.readdirSync(pki.caDir).sort()).toEqual(['ca-cert.pem', 'ca-key.pem']);
});

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fleetSchema } from '../../common/fleet';
import { AgentError, createAgentClient } from '../../compute/agent-client';
import { ensureAgentPki, peerClientTls } from '../../compute/agent-tls';
import { startFleetAgents } from '../../compute/fleet-agents';
import { createPeerClient } from '../../compute/peer-client';
import { agentFetch, testAgentPki } from '../support/agent-pki';
import { Agents, finished, HOST_CAPACITY, logger, SERVER_CAPACITY, spec } from './helpers';

const servers: Array<http.Server> = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
});

/** Listens on a free loopback port; closed after the file. */
async function listen(server: http.Server): Promise<number> {
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as { port: number }).port;
}

/** A self-signed certificate: a server outside the fleet. */
function selfSigned(): { key: string; cert: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-outsider-'));
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      path.join(dir, 'k.pem'),
      '-out',
      path.join(dir, 'c.pem'),
      '-days',
      '1',
      '-subj',
      '/CN=srv-outsider',
    ],
    { stdio: 'ignore' },
  );
  const out = { key: fs.readFileSync(path.join(dir, 'k.pem'), 'utf8'), cert: fs.readFileSync(path.join(dir, 'c.pem'), 'utf8') };
  fs.rmSync(dir, { recursive: true, force: true });
  return out;
}

async function rejected(p: Promise<unknown>): Promise<AgentError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected the agent to refuse');
}

describe('host agent lifecycle, auth and reachability', () => {
  const agents = new Agents();
  afterEach(() => agents.stopAll());

  test('info and healthz', async () => {
    const a = await agents.start('srv-1', { nicBandwidthBps: 25e9 });
    expect(await a.client.info()).toEqual({
      serverId: 'srv-1',
      bootId: a.agent.bootId,
      backend: 'sim',
      capacity: SERVER_CAPACITY,
      nicBandwidthBps: 25e9, // bits/s, as configured
      incarnations: [],
      diskKinds: ['local', 'network'],
      localStorage: { diskBytes: 0, wipedBytes: 0 },
    });
    expect((await agentFetch(`${a.url}/healthz`)).status).toBe(200);
  });

  test('mTLS: a client without a certificate of the fleet CA gets no HTTP at all; nothing changes', async () => {
    const a = await agents.start('srv-1');
    // No client certificate: the handshake is refused, whatever the route (probes included).
    for (const path of ['/v1/info', '/healthz', '/v1/incarnations/i'])
      await expect(
        agentFetch(
          `${a.url}${path}`,
          {
            method: path.includes('incarnations') ? 'PUT' : 'GET',
            headers: { 'content-type': 'application/json' },
            body: path.includes('incarnations') ? JSON.stringify({ capacity: HOST_CAPACITY }) : undefined,
          },
          null,
        ),
      ).rejects.toThrow();
    // A certificate of another CA (a self-made "control plane"): refused the same way.
    const other = await ensureAgentPki(fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-other-ca-')), []);
    await expect(agentFetch(`${a.url}/v1/info`, {}, other.controlPlane)).rejects.toThrow();
    const err = await rejected(
      createAgentClient({ baseUrl: a.url, tls: other.controlPlane }).prepareIncarnation({ incarnationId: 'i', capacity: HOST_CAPACITY }),
    );
    expect(err).toMatchObject({ status: 0, code: 'NETWORK_ERROR' });
    // Plain HTTP to the same port: not an agent URL (refused by the client before connecting), and not spoken.
    expect(await rejected(createAgentClient({ baseUrl: a.url.replace('https:', 'http:'), tls: (await testAgentPki()).controlPlane }).info())).toMatchObject({
      code: 'INSECURE_URL',
      retryable: false,
    });
    const plain = await fetch(`${a.url.replace('https:', 'http:')}/v1/info`).then(
      (r) => r.status,
      (e: Error) => e.name,
    );
    expect(plain).not.toBe(200);
    expect((await a.client.info()).incarnations).toEqual([]); // the control plane's certificate works, and nothing was created
    expect((await agentFetch(`${a.url}/healthz`)).status).toBe(200);
  });

  test("a peer server's certificate is refused on control-plane routes, and on incoming routes of jobs not expected from it", async () => {
    const a = await agents.start('srv-a', { timeScale: 1000 });
    const b = await agents.start('srv-b', { timeScale: 1000 });
    const pki = await testAgentPki(['srv-c']);
    await b.client.prepareIncarnation({ incarnationId: 'i-b', capacity: HOST_CAPACITY });
    const asPeerA = peerClientTls(pki.server('srv-a'));
    // Control-plane routes, with a (valid) server certificate: 403, nothing done.
    for (const [method, route, body] of [
      ['GET', '/v1/info', undefined],
      ['PUT', '/v1/incarnations/evil', { capacity: HOST_CAPACITY }],
      ['DELETE', '/v1/incarnations/i-b', undefined],
      ['PUT', '/v1/vms/evil', { incarnationId: 'i-b', spec: spec(1024) }],
      ['PUT', '/v1/expected-migrations/j1', { vmId: 'v', incarnationId: 'i-b', sourceServerId: 'srv-a' }],
      ['PUT', '/v1/faults', { unreachable: true }],
    ] as const) {
      const res = await agentFetch(
        `${b.url}${route}`,
        { method, headers: body ? { 'content-type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined },
        asPeerA,
      );
      expect([method, route, res.status, ((await res.json()) as { error: { code: string } }).error.code]).toEqual([method, route, 403, 'FORBIDDEN']);
    }
    // An incoming migration nobody announced: refused.
    const peerA = createPeerClient({ tls: asPeerA });
    const incoming = { vmId: 'v', incarnationId: 'i-b', spec: spec(1024), sourceServerId: 'srv-a' };
    expect(await rejected(peerA.accept(b.url, 'j1', incoming))).toMatchObject({ status: 403, code: 'FORBIDDEN' });
    // Announced from srv-a: another server (srv-c) may not use the job; srv-a may not change its VM or incarnation.
    await b.client.expectIncoming({ jobId: 'j1', vmId: 'v', incarnationId: 'i-b', sourceServerId: 'srv-a' });
    const peerC = createPeerClient({ tls: peerClientTls(pki.server('srv-c')) });
    expect(await rejected(peerC.accept(b.url, 'j1', { ...incoming, sourceServerId: 'srv-c' }))).toMatchObject({ status: 403, code: 'FORBIDDEN' });
    expect(await rejected(peerC.commit(b.url, 'j1', { vmId: 'v', spec: spec(1024), counter: 0 }))).toMatchObject({ status: 403, code: 'FORBIDDEN' });
    expect(await rejected(peerA.accept(b.url, 'j1', { ...incoming, vmId: 'other' }))).toMatchObject({ status: 403, code: 'FORBIDDEN' });
    // The control plane has no business on the peers' routes either.
    expect((await agentFetch(`${b.url}/v1/incoming-migrations/j1`, { method: 'DELETE' })).status).toBe(403);
    expect(await b.client.getIncarnation('i-b')).toMatchObject({ vmIds: [], used: { vcpus: 0, memoryMiB: 0, diskGiB: 0 } });
    expect((await b.client.info()).incarnations).toEqual(['i-b']);
    // The announced job from its source is taken.
    expect(await peerA.accept(b.url, 'j1', incoming)).toMatchObject({ jobId: 'j1', state: 'reserved' });
    await peerA.release(b.url, 'j1');
    void a;
  });

  test('migrations between agents work over mTLS: the client announces the job to the target, the source calls it with its own certificate', async () => {
    const a = await agents.start('srv-a', { timeScale: 1000 });
    const b = await agents.start('srv-b', { timeScale: 1000 });
    await a.client.prepareIncarnation({ incarnationId: 'i-a', capacity: HOST_CAPACITY });
    await b.client.prepareIncarnation({ incarnationId: 'i-b', capacity: HOST_CAPACITY });
    await a.client.createVm({ vmId: 'v', incarnationId: 'i-a', spec: spec(2048) });
    await a.client.startMigration({ jobId: 'j', vmId: 'v', target: { agentUrl: b.url, incarnationId: 'i-b' }, maxDowntimeMs: 300, autoConverge: false });
    expect((await finished(a.client, 'j')).state).toBe('completed');
    expect(await a.client.guestOp('v', { kind: 'read' })).toMatchObject({ servedBy: 'srv-b' });
  });

  test("a VM_MOVED redirect is followed only to a fleet server: not to plain HTTP, not to another CA's certificate", async () => {
    const pki = await testAgentPki(['srv-evil']);
    // A fleet member gone bad (its own valid certificate) answers VM_MOVED towards servers of its choosing.
    const hits: string[] = [];
    const outsider = await listen(
      https.createServer(
        { ...selfSigned(), requestCert: false },
        (req, res) => (hits.push(`${req.method} ${req.url} ${req.headers.authorization ?? ''}`), res.end('{}')),
      ),
    );
    const plain = await listen(http.createServer((req, res) => (hits.push(`${req.method} ${req.url}`), res.end('{}'))));
    let movedTo = '';
    const evil = await listen(
      https.createServer({ key: pki.server('srv-evil').key, cert: pki.server('srv-evil').cert, ca: pki.server('srv-evil').ca }, (_req, res) => {
        res
          .writeHead(409, { 'content-type': 'application/json' })
          .end(JSON.stringify({ error: { code: 'VM_MOVED', message: 'moved', field: 'vmId', movedTo } }));
      }),
    );
    const client = createAgentClient({ baseUrl: `https://127.0.0.1:${evil}`, tls: pki.controlPlane });
    movedTo = `http://127.0.0.1:${plain}`;
    expect(await rejected(client.guestOp('v', { kind: 'increment' }))).toMatchObject({ code: 'REDIRECT_REFUSED', retryable: false });
    movedTo = `https://127.0.0.1:${outsider}`;
    expect(await rejected(client.deleteVm('v'))).toMatchObject({ code: 'NETWORK_ERROR' });
    expect(hits).toEqual([]); // neither ever got a request
  });
  test('a restarted agent has a new boot id and none of its VMs', async () => {
    const first = await agents.start('srv-1');
    await first.client.prepareIncarnation({ incarnationId: 'i', capacity: HOST_CAPACITY });
    await first.client.createVm({ vmId: 'v', incarnationId: 'i', spec: spec(1024) });
    const before = await first.client.info();
    await first.agent.stop();
    await expect(first.client.info()).rejects.toMatchObject({ code: 'NETWORK_ERROR', retryable: true });

    const second = await agents.start('srv-1', { port: Number(new URL(first.url).port) });
    expect(second.url).toBe(first.url);
    const after = await first.client.info(); // the caller's old client, same URL
    expect(after.serverId).toBe('srv-1');
    expect(after.bootId).not.toBe(before.bootId);
    expect(after.incarnations).toEqual([]);
    expect(await first.client.getVm('v')).toBeNull();
  });

  test('unreachable: every route but the faults route answers 503, retryable; clearing it restores service', async () => {
    const a = await agents.start('srv-1');
    await a.client.prepareIncarnation({ incarnationId: 'i', capacity: HOST_CAPACITY });
    await a.client.setFaults({ unreachable: true });
    for (const call of [a.client.info(), a.client.getVm('v'), a.client.createVm({ vmId: 'v', incarnationId: 'i', spec: spec(1) })])
      expect(await rejected(call)).toMatchObject({ status: 503, code: 'AGENT_UNAVAILABLE', retryable: true });
    expect((await agentFetch(`${a.url}/healthz`)).status).toBe(503);
    await a.client.setFaults({ unreachable: false });
    expect(await a.client.getVm('v')).toBeNull(); // the refused create did not happen
    expect((await a.client.info()).incarnations).toEqual(['i']);
  });

  test('startFleetAgents starts one sim agent per server of a fleet file', async () => {
    const fleet = fleetSchema.parse({
      zones: ['z1'],
      resourceClasses: { std: { vcpus: 32, memoryMiB: 131072, diskGiB: 2000 } },
      servers: [
        { id: 'f-1', zone: 'z1', resourceClass: 'std', capacity: SERVER_CAPACITY, nicBandwidthBps: 10e9 },
        { id: 'f-2', zone: 'z1', resourceClass: 'std', capacity: SERVER_CAPACITY, nicBandwidthBps: 25e9 },
        { id: 'f-3', zone: 'z1', resourceClass: 'std', capacity: SERVER_CAPACITY, nicBandwidthBps: 25e9, backend: 'qemu' },
      ],
    });
    const pki = await testAgentPki(['f-1', 'f-2']);
    const started = await startFleetAgents(fleet, { timeScale: 100, logger, tls: (id) => pki.server(id) });
    try {
      expect([...started.agents.keys()]).toEqual(['f-1', 'f-2']); // the qemu server is not this function's to run
      for (const [serverId, agent] of started.agents) {
        const info = await createAgentClient({ baseUrl: agent.url, tls: pki.controlPlane, serverId }).info();
        expect(info).toMatchObject({ serverId, backend: 'sim', nicBandwidthBps: fleet.servers.find((s) => s.id === serverId)!.nicBandwidthBps });
      }
    } finally {
      await started.stop();
    }
    await expect(createAgentClient({ baseUrl: started.agents.get('f-1')!.url, tls: pki.controlPlane, timeoutMs: 2000 }).info()).rejects.toMatchObject({
      retryable: true,
    });
  });
});

import { createAgentClient } from '../../compute/agent-client';
import { peerClientTls } from '../../compute/agent-tls';
import { agentFetch, testAgentPki } from '../support/agent-pki';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createLogger } from '../../common/logger';
import { startAgent } from '../../compute/agent-service';
import { AgentError } from '../../compute/agent-http';
import { ensureFleetCa, issueServerCreds } from '../../compute/fleet-ca';
import { createPeerClient } from '../../compute/peer-client';
import { runQemuSetup } from '../../compute/qemu/tools';
import { listNamespaces } from '../../compute/testbed/net';
import { MAX_SERVERS, upTestbed } from '../../compute/testbed/testbed';
import { isolatedDhmEnv, spawnDhm } from '../support/dhm-process';
import { processesMatching } from '../qemu/helpers';

/** Bad settings for real servers: refused in one line naming the field, with nothing started and nothing left. */

const logger = createLogger('testbed-bad-input', 'silent');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-tb-bad-'));
const capacity = { vcpus: 2, memoryMiB: 1024, diskGiB: 10 };

beforeAll(async () => {
  await runQemuSetup();
}, 600_000);

afterAll(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

async function refusal(p: Promise<unknown>): Promise<Error & { field?: string }> {
  const err = await p.then(
    () => null,
    (e: unknown) => e as Error & { field?: string },
  );
  if (!err) throw new Error('expected a refusal');
  return err;
}

const nothingUnder = (dir: string) => !fs.existsSync(dir) && processesMatching(dir).length === 0;

test('an agent address that is on no interface: refused naming the field, nothing listens, no folder made', async () => {
  const stateDir = path.join(root, 'no-such-address');
  const err = await refusal(
    startAgent({
      serverId: 's-1',
      tls: await tlsFor('s-1'),
      capacity,
      nicBandwidthBps: 1e9,
      host: '198.18.254.77',
      backend: 'qemu',
      qemu: { stateDir },
      logger,
    }),
  );
  expect(err.message).toMatch(/^host: 198\.18\.254\.77 is not an address of any interface here/);
  expect(err.field).toBe('host');
  expect(err.message.split('\n')).toHaveLength(1);
  expect(nothingUnder(stateDir)).toBe(true);

  const err2 = await refusal(
    startAgent({
      serverId: 's-1',
      tls: await tlsFor('s-1'),
      capacity,
      nicBandwidthBps: 1e9,
      backend: 'qemu',
      qemu: { stateDir, migrationHost: '198.18.254.78', transport: 'insecure' },
      logger,
    }),
  );
  expect(err2.message).toMatch(/^qemu\.migrationHost: 198\.18\.254\.78 is not an address of any interface here/);
  expect(nothingUnder(stateDir)).toBe(true);
});

test("a certificate that is not the fleet's: refused naming qemu.tlsDir, nothing started", async () => {
  const fleetCa = await ensureFleetCa(path.join(root, 'fleet-ca'));
  const otherCa = await ensureFleetCa(path.join(root, 'other-ca'), 'someone else');
  const stateDir = path.join(root, 'wrong-cert');
  const agentTls = await tlsFor('s-1');
  const opts = (tlsDir: string) => ({
    serverId: 's-1',
    tls: agentTls,
    capacity,
    nicBandwidthBps: 1e9,
    backend: 'qemu' as const,
    qemu: { stateDir, migrationHost: '127.0.0.1', tlsDir, fleetCaCert: fleetCa.certPath },
    logger,
  });

  // Issued by another CA altogether.
  const foreign = await issueServerCreds(otherCa, 's-1', ['127.0.0.1'], path.join(root, 'creds-foreign'));
  const err = await refusal(startAgent(opts(foreign.dir)));
  expect(err.message).toMatch(/^qemu\.tlsDir: .*ca-cert\.pem is not the fleet's CA$/);
  expect(err.field).toBe('qemu.tlsDir');
  expect(nothingUnder(stateDir)).toBe(true);

  // The fleet's CA certificate copied in, but the server's certificates still from the other CA.
  fs.copyFileSync(fleetCa.certPath, path.join(foreign.dir, 'ca-cert.pem'));
  const err2 = await refusal(startAgent(opts(foreign.dir)));
  expect(err2.message).toMatch(/^qemu\.tlsDir: .*server-cert\.pem is not issued by the fleet's CA$/);

  // The fleet's, but another server's.
  const other = await issueServerCreds(fleetCa, 's-2', ['127.0.0.1'], path.join(root, 'creds-s2'));
  const err3 = await refusal(startAgent(opts(other.dir)));
  expect(err3.message).toMatch(/^qemu\.tlsDir: .*server-cert\.pem is for CN=s-2, not CN=s-1$/);

  // A key others can read.
  const mine = await issueServerCreds(fleetCa, 's-1', ['127.0.0.1'], path.join(root, 'creds-s1'));
  fs.chmodSync(path.join(mine.dir, 'client-key.pem'), 0o644);
  const err4 = await refusal(startAgent(opts(mine.dir)));
  expect(err4.message).toMatch(/^qemu\.tlsDir: .*client-key\.pem is readable by others \(must be 0600\)$/);
  expect(nothingUnder(stateDir)).toBe(true);
});

test('a migration from a server outside the fleet: 403 naming sourceServerId, no destination QEMU started', async () => {
  const stateDir = path.join(root, 'target');
  const pki = await testAgentPki(['tb-2', 'intruder-9']);
  const agent = await startAgent({
    serverId: 'tb-2',
    tls: pki.server('tb-2'),
    capacity,
    nicBandwidthBps: 1e9,
    backend: 'qemu',
    qemu: { stateDir, migrationDir: path.join(root, 'migrate'), peers: ['tb-1', 'tb-2'] },
    logger,
  });
  try {
    // A server the CA knows but the fleet does not (its own valid certificate), for a job the control plane announced.
    const peer = createPeerClient({ tls: peerClientTls(pki.server('intruder-9')) });
    const res = await agentFetch(`${agent.url}/v1/incarnations/inc-1`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ capacity }),
    });
    expect(res.status).toBe(200);
    await createAgentClient({ baseUrl: agent.url, tls: pki.controlPlane }).expectIncoming({
      jobId: 'job-1',
      vmId: 'vm-1',
      incarnationId: 'inc-1',
      sourceServerId: 'intruder-9',
    });
    const err = await refusal(
      peer.accept(agent.url, 'job-1', { vmId: 'vm-1', incarnationId: 'inc-1', spec: { vcpus: 1, memoryMiB: 128, diskGiB: 1 }, sourceServerId: 'intruder-9' }),
    );
    expect(err).toBeInstanceOf(AgentError);
    expect(err).toMatchObject({ status: 403, code: 'SOURCE_NOT_IN_FLEET', field: 'sourceServerId' });
    expect(err.message).toMatch(/^sourceServerId: intruder-9 is not a server of this fleet$/);
    expect(processesMatching(stateDir).filter((p) => p.cmd.includes('qemu-system'))).toEqual([]);
    const inc = (await (await agentFetch(`${agent.url}/v1/incarnations/inc-1`)).json()) as { used: { memoryMiB: number } };
    expect(inc.used.memoryMiB).toBe(0); // no room reserved for it
  } finally {
    await agent.stop();
  }
});

test('a testbed bigger than the address range or the machine: refused naming servers, nothing made', async () => {
  const before = await listNamespaces();
  const err = await refusal(upTestbed({ name: 'toobig', root, servers: MAX_SERVERS + 1 }, logger));
  expect(err.message).toBe(`servers: at most ${MAX_SERVERS} (a testbed's fabric is one 198.18.x.0/24), got ${MAX_SERVERS + 1}`);
  const freeFor = Math.floor(os.freemem() / 2 ** 20 / 192);
  if (freeFor < MAX_SERVERS) {
    const err2 = await refusal(upTestbed({ name: 'toobig', root, servers: Math.min(MAX_SERVERS, freeFor + 10) }, logger));
    expect(err2.message).toMatch(/^servers: this machine has \d+ MiB free, room for \d+ servers/);
  }
  expect(await listNamespaces()).toEqual(before);
  expect(fs.existsSync(path.join(root, 'toobig'))).toBe(false);

  // The same through the CLI: one line on stderr, exit code 2.
  const { env } = await isolatedDhmEnv('dhm-tb-cli-');
  const run = spawnDhm(['testbed', 'up', '--name', 'toobig', '--servers', String(MAX_SERVERS + 1)], env);
  expect(await run.exited).toBe(2);
  expect(run.output().trim()).toBe(`dhm: servers: at most ${MAX_SERVERS} (a testbed's fabric is one 198.18.x.0/24), got ${MAX_SERVERS + 1}`);
  expect(fs.existsSync(path.join(env.DHM_HOME!, 'testbed', 'toobig'))).toBe(false);
  fs.rmSync(env.DHM_HOME!, { recursive: true, force: true });
});

async function tlsFor(serverId: string) {
  return (await testAgentPki([serverId])).server(serverId);
}

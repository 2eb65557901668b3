import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { DHM_BIN } from '../support/dhm-process';
import * as os from 'node:os';
import { createLogger } from '../../common/logger';
import { createAgentClient } from '../../compute/agent-client';
import { startAgent } from '../../compute/agent-service';
import { agentFetch, testAgentPki } from '../support/agent-pki';

/**
 * Agents are not reachable from the network unless told so: they bind to loopback by default (the fleet secret is
 * covered by test/compute/agent-lifecycle.test.ts; here only what it does not check).
 */
describe('host agent exposure', () => {
  it("listens on loopback by default: the machine's other addresses refuse the connection", async () => {
    const pki = await testAgentPki(['exposure-1']);
    const agent = await startAgent({
      serverId: 'exposure-1',
      capacity: { vcpus: 4, memoryMiB: 8192, diskGiB: 50 },
      nicBandwidthBps: 1e9,
      tls: pki.server('exposure-1'),
      logger: createLogger('test', 'warn'),
    });
    try {
      const url = new URL(agent.url);
      expect(url.hostname).toBe('127.0.0.1');
      // The machine's own addresses, and always 127.0.0.2: another loopback address, which a listener on 0.0.0.0 (or on
      // all of 127/8) would answer, so the loop below checks at least one address on any machine.
      const own = Object.values(os.networkInterfaces())
        .flat()
        .filter((i) => i && i.family === 'IPv4' && !i.internal)
        .map((i) => i!.address);
      const others = [...own, '127.0.0.2'];
      for (const address of others) {
        const outcome = await new Promise<string>((resolve) => {
          const s = net.connect({ host: address, port: Number(url.port) });
          s.once('connect', () => (s.destroy(), resolve('connected')));
          s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
        });
        expect([address, outcome]).toEqual([address, 'ECONNREFUSED']);
      }
      // Without a client certificate: refused at the handshake, and nothing changed.
      await expect(
        agentFetch(
          `${agent.url}/v1/incarnations/x`,
          { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ capacity: { vcpus: 1, memoryMiB: 512, diskGiB: 1 } }) },
          null,
        ),
      ).rejects.toThrow();
      expect((await createAgentClient({ baseUrl: agent.url, tls: pki.controlPlane }).info()).incarnations).toEqual([]);
    } finally {
      await agent.stop();
    }
  });

  it('has no fault-injection route unless started for tests: 404, and the fault is not applied', async () => {
    const pki = await testAgentPki(['exposure-2']);
    const capacity = { vcpus: 4, memoryMiB: 8192, diskGiB: 50 };
    const agent = await startAgent({
      serverId: 'exposure-2',
      capacity,
      nicBandwidthBps: 1e9,
      tls: pki.server('exposure-2'),
      logger: createLogger('test', 'warn'),
    });
    try {
      const client = createAgentClient({ baseUrl: agent.url, tls: pki.controlPlane, serverId: 'exposure-2' });
      await expect(client.setFaults({ unreachable: true })).rejects.toMatchObject({ status: 404, code: 'NO_SUCH_ROUTE' });
      expect((await agentFetch(`${agent.url}/v1/faults`)).status).toBe(404);
      expect((await client.info()).serverId).toBe('exposure-2'); // not made unreachable
    } finally {
      await agent.stop();
    }
  });

  it('refuses to start without credentials, naming the setting, before it binds', async () => {
    const capacity = { vcpus: 4, memoryMiB: 8192, diskGiB: 50 };
    const port = await freePort();
    const attempt = startAgent({
      serverId: 'exposure-3',
      capacity,
      nicBandwidthBps: 1e9,
      port,
      logger: createLogger('test', 'silent'),
    } as unknown as Parameters<typeof startAgent>[0]);
    await expect(attempt).rejects.toThrow(/^tls: required/);
    // Nothing listens on the port it was given.
    expect(await connectOutcome('127.0.0.1', port)).toBe('ECONNREFUSED');
  });
});

describe('agent processes refuse to start without credentials', () => {
  /** A port we hold: an agent that tried to bind it would fail with EADDRINUSE, so a credentials refusal came first. */
  async function heldPort(): Promise<{ port: number; release(): Promise<void> }> {
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    return { port: (srv.address() as net.AddressInfo).port, release: () => new Promise((r) => srv.close(() => r())) };
  }
  const scrubbed = () => Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DHM_') && k !== 'DATABASE_URL'));

  it('dhm agents without DHM_AGENT_TLS_DIR: one line naming it, exit 2, nothing bound (and no database asked for)', async () => {
    const held = await heldPort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-agents-nocreds-'));
    try {
      const fleetFile = path.join(dir, 'fleet.json');
      fs.writeFileSync(
        fleetFile,
        JSON.stringify({
          zones: ['z'],
          resourceClasses: { c: { vcpus: 2, memoryMiB: 1024, diskGiB: 10 } },
          servers: [
            { id: 'n-1', zone: 'z', resourceClass: 'c', capacity: { vcpus: 2, memoryMiB: 1024, diskGiB: 10 }, nicBandwidthBps: 1e9, agentPort: held.port },
          ],
        }),
      );
      const child = spawn(process.execPath, [DHM_BIN, 'agents', '--fleet', fleetFile], {
        env: { ...scrubbed(), DHM_HOME: dir, LOG_FORMAT: 'json' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let err = '';
      child.stderr.on('data', (d) => (err += d));
      child.stdout.on('data', (d) => (err += d));
      const code = await new Promise<number | null>((r) => child.on('exit', r));
      expect(code).toBe(2); // a problem the user can fix (cli/main.ts)
      const lines = err
        .trim()
        .split('\n')
        .filter((l) => l.trim() !== '');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/DHM_AGENT_TLS_DIR: required/);
      expect(err).not.toMatch(/EADDRINUSE|DATABASE_URL/);
    } finally {
      await held.release();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the testbed agent without tlsDir in its config: one line naming it, exit 2, no ready file', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-tbagent-nocreds-'));
    try {
      const readyFile = path.join(dir, 'ready');
      const config = path.join(dir, 'agent.json');
      fs.writeFileSync(
        config,
        JSON.stringify({
          readyFile,
          agent: {
            serverId: 'tb-x',
            capacity: { vcpus: 2, memoryMiB: 1024, diskGiB: 10 },
            nicBandwidthBps: 1e9,
            host: '127.0.0.1',
            port: 0,
            backend: 'qemu',
            qemu: {},
          },
        }),
        { mode: 0o600 },
      );
      const child = spawn(process.execPath, [DHM_BIN, 'testbed', 'agent', '--config', config], { env: scrubbed(), stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d) => (err += d));
      child.stdout.on('data', (d) => (err += d));
      const code = await new Promise<number | null>((r) => child.on('exit', r));
      expect(code).toBe(2); // a problem the user can fix (cli/main.ts)
      const lines = err
        .trim()
        .split('\n')
        .filter((l) => l.trim() !== '');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/tlsDir: required/);
      expect(fs.existsSync(readyFile)).toBe(false);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

function connectOutcome(host: string, port: number): Promise<string> {
  return new Promise<string>((resolve) => {
    const s = net.connect({ host, port });
    s.once('connect', () => (s.destroy(), resolve('connected')));
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Resources } from '../../common/resources';
import { createAgentClient } from '../../compute/agent-client';
import { startAgent } from '../../compute/agent-service';
import { writeFleetCrl } from '../../compute/agent-tls';
import { normalSerial } from '../../compute/cert-revocation';
import { QEMU_SANDBOX } from '../../compute/qemu/qemu-process';
import { DEFAULT_QEMU_USER } from '../../compute/qemu/qemu-user';
import { runQemuSetup } from '../../compute/qemu/tools';
import { logger, waitFor } from '../compute/helpers';
import { testAgentPki } from '../support/agent-pki';
import { qemuUnder } from './helpers';

/**
 * How an agent runs QEMU: its state under DHM_HOME in folders of its own (0700, owner checked), QEMU with an
 * environment of three variables and its seccomp sandbox on, and (the agent being root here) as the unprivileged
 * dhm-qemu user, which a TLS migration still works with. Small real VMs.
 */
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-qemu-hardening-'));
const SERVER: Resources = { vcpus: 4, memoryMiB: 2048, diskGiB: 20 };
const previousHome = process.env.DHM_HOME;
const asRoot = process.geteuid?.() === 0;

/** A qemu agent of the test fleet, migrating over TLS with its server's credentials (state under `home/<id>`). */
const tlsQemuAgent = (pki: Awaited<ReturnType<typeof testAgentPki>>, home: string, id: string) =>
  startAgent({
    serverId: id,
    tls: pki.server(id),
    capacity: SERVER,
    nicBandwidthBps: 1e9,
    backend: 'qemu',
    qemu: {
      stateDir: path.join(home, id),
      migrationDir: path.join(home, 'migrate'),
      maxVmMemoryMiB: 256,
      maxVmVcpus: 1,
      migrationHost: '127.0.0.1',
      transport: 'tls',
      tlsDir: pki.serverDir(id),
      fleetCaCert: path.join(pki.caDir, 'ca-cert.pem'),
    },
    logger,
  });

/** The real, effective, saved and file-system uids of a process (`Uid:` in /proc/<pid>/status). */
const uidsOf = (pid: number) =>
  /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$/m
    .exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))!
    .slice(1)
    .map(Number);
const passwdUid = (name: string) =>
  Number(
    fs
      .readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.startsWith(`${name}:`))!
      .split(':')[2],
  );

beforeAll(async () => {
  await runQemuSetup();
  process.env.DHM_HOME = path.join(root, 'home');
}, 600_000);
afterAll(() => {
  if (previousHome === undefined) delete process.env.DHM_HOME;
  else process.env.DHM_HOME = previousHome;
  fs.rmSync(root, { recursive: true, force: true });
});

test('QEMU runs from DHM_HOME/qemu (0700), with a minimal environment and -sandbox on', async () => {
  const pki = await testAgentPki(['hq-1']);
  process.env.DHM_TEST_SECRET_MARKER = 'must-not-reach-qemu';
  const agent = await startAgent({
    serverId: 'hq-1',
    tls: pki.server('hq-1'),
    capacity: SERVER,
    nicBandwidthBps: 1e9,
    backend: 'qemu',
    qemu: { maxVmMemoryMiB: 256, maxVmVcpus: 1 },
    logger,
  });
  try {
    const base = path.join(process.env.DHM_HOME!, 'qemu');
    // As root, QEMU's user may pass through (search only, by its group) to the folders that are its own.
    expect(fs.statSync(base).mode & 0o777).toBe(asRoot ? 0o710 : 0o700);
    const client = createAgentClient({ baseUrl: agent.url, tls: pki.controlPlane, serverId: 'hq-1' });
    await client.prepareIncarnation({ incarnationId: 'inc-h', capacity: { vcpus: 2, memoryMiB: 512, diskGiB: 5 } });
    await client.createVm({ vmId: 'vm-h', incarnationId: 'inc-h', spec: { vcpus: 1, memoryMiB: 128, diskGiB: 1 } });
    const [pid] = await waitFor("the VM's QEMU", () => (qemuUnder(base).length === 1 ? qemuUnder(base) : undefined), 30_000, 50);
    const stateDirs = fs.readdirSync(base).filter((d) => d.startsWith('hq-1-'));
    expect(stateDirs).toHaveLength(1);
    expect(fs.statSync(path.join(base, stateDirs[0]!)).mode & 0o777).toBe(0o700);
    // setpriv execs QEMU in place: once the sandbox is installed the pid is QEMU's and the filter is on (mode 2).
    const status = await waitFor(
      "QEMU's seccomp filter",
      () => {
        const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
        return /^Seccomp:\s+2$/m.test(s) ? s : undefined;
      },
      30_000,
      50,
    );
    expect(status).toMatch(/^Seccomp:\s+2$/m);
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    expect(argv[argv.indexOf('-sandbox') + 1]).toBe(QEMU_SANDBOX);
    const environ = fs
      .readFileSync(`/proc/${pid}/environ`, 'utf8')
      .split('\0')
      .filter(Boolean)
      .map((kv) => kv.split('=')[0]);
    expect(environ.sort()).toEqual(['LD_LIBRARY_PATH', 'PATH', 'QEMU_MODULE_DIR']);
    if (asRoot) {
      expect(uidsOf(pid!)).toEqual(Array(4).fill(passwdUid(DEFAULT_QEMU_USER)));
      expect(passwdUid(DEFAULT_QEMU_USER)).not.toBe(0);
    }
    expect((await client.guestOp('vm-h', { kind: 'read' })).servedBy).toBe('hq-1'); // and the VM works
  } finally {
    delete process.env.DHM_TEST_SECRET_MARKER;
    await agent.stop();
  }
}, 120_000);

test('a state folder of another user, or a symbolic link, is refused naming it; nothing starts', async () => {
  const pki = await testAgentPki(['hq-2']);
  const foreign = path.join(root, 'foreign');
  fs.mkdirSync(foreign, { mode: 0o700 });
  const other = process.getuid?.() === 0 ? 65534 : null; // nobody
  if (other !== null) fs.chownSync(foreign, other, other);
  const link = path.join(root, 'link');
  fs.symlinkSync(path.join(root, 'home'), link);
  const start = (stateDir: string) =>
    startAgent({
      serverId: 'hq-2',
      tls: pki.server('hq-2'),
      capacity: SERVER,
      nicBandwidthBps: 1e9,
      backend: 'qemu',
      qemu: { stateDir, migrationDir: path.join(root, 'mig') },
      logger,
    });
  if (other !== null) await expect(start(foreign)).rejects.toThrow(/^qemu\.stateDir: .*foreign belongs to uid 65534/);
  await expect(start(link)).rejects.toThrow(/^qemu\.stateDir: .*link is a symbolic link/);
  expect(qemuUnder(root)).toEqual([]);
  // A folder of ours that others may enter is narrowed to 0700 before use.
  const wide = path.join(root, 'wide');
  fs.mkdirSync(wide, { mode: 0o755 });
  fs.chmodSync(wide, 0o755);
  const agent = await start(wide);
  try {
    expect(fs.statSync(wide).mode & 0o777).toBe(0o700);
  } finally {
    await agent.stop();
  }
});

test('as root, QEMU runs as dhm-qemu on both ends of a TLS migration; the keys it reads are per-process copies, gone with it', async () => {
  const ids = ['hq-4', 'hq-5'];
  const pki = await testAgentPki(ids);
  const home = path.join(root, 'mig');
  const start = (id: string) => tlsQemuAgent(pki, home, id);
  const [src, dst] = [await start(ids[0]!), await start(ids[1]!)];
  try {
    const client = (id: string, url: string) => createAgentClient({ baseUrl: url, tls: pki.controlPlane, serverId: id, timeoutMs: 20_000 });
    const a = client(ids[0]!, src.url);
    const b = client(ids[1]!, dst.url);
    for (const [c, inc] of [
      [a, 'inc-a'],
      [b, 'inc-b'],
    ] as const)
      await c.prepareIncarnation({ incarnationId: inc, capacity: { vcpus: 2, memoryMiB: 512, diskGiB: 5 } });
    await a.createVm({ vmId: 'vm-m', incarnationId: 'inc-a', spec: { vcpus: 1, memoryMiB: 128, diskGiB: 1 } });
    await waitFor('the guest to count', async () => (await a.guestOp('vm-m', { kind: 'read' })).counter >= 2, 90_000, 100);
    const [srcPid] = qemuUnder(path.join(home, ids[0]!));
    const expectedUid = asRoot ? passwdUid(DEFAULT_QEMU_USER) : process.geteuid!();
    expect(uidsOf(srcPid!)).toEqual(Array(4).fill(expectedUid));
    // Local disk file and folders: QEMU's user's, nobody else's.
    const disks = path.join(home, ids[0]!, 'disks');
    const [disk] = fs.readdirSync(disks);
    expect(fs.statSync(path.join(disks, disk!)).uid).toBe(expectedUid);
    expect(fs.statSync(disks).mode & 0o777).toBe(0o700);

    const job = await a.startMigration({
      jobId: 'job-m',
      vmId: 'vm-m',
      target: { agentUrl: dst.url, incarnationId: 'inc-b' },
      maxDowntimeMs: 500,
      autoConverge: true,
    });
    expect(job.state).toBe('running');
    const done = await waitFor(
      'the move to end',
      async () => {
        const j = await a.getMigration('job-m');
        return j && j.state !== 'running' ? j : undefined;
      },
      120_000,
      100,
    );
    expect(done).toMatchObject({ state: 'completed' });
    expect(await b.getVm('vm-m')).toMatchObject({ serverId: ids[1], state: 'running' });
    const [dstPid] = qemuUnder(path.join(home, ids[1]!));
    expect(uidsOf(dstPid!)).toEqual(Array(4).fill(expectedUid));
    expect((await b.guestOp('vm-m', { kind: 'read' })).servedBy).toBe(ids[1]);
    if (asRoot) {
      // The destination read its server's key from its own copy (0600, QEMU's user); the source's copy went with it.
      const dstDir = fs.readdirSync(path.join(home, ids[1]!)).find((d) => d.startsWith('in-'))!;
      const key = path.join(home, ids[1]!, dstDir, 'tls', 'server-key.pem');
      expect(fs.statSync(key).uid).toBe(expectedUid);
      expect(fs.statSync(key).mode & 0o777).toBe(0o600);
      const srcDir = fs.readdirSync(path.join(home, ids[0]!)).find((d) => d.startsWith('vm-'))!;
      await waitFor("the source's key copy to go", () => !fs.existsSync(path.join(home, ids[0]!, srcDir, 'tls')), 10_000, 50);
      // The server's own credentials folder stays root's.
      expect(fs.statSync(path.join(pki.serverDir(ids[1]!), 'server-key.pem')).uid).toBe(0);
    }
  } finally {
    await Promise.all([src.stop(), dst.stop()]);
  }
  expect(qemuUnder(home)).toEqual([]);
}, 240_000);

/**
 * QEMU loads `ca-crl.pem` only into server-side credentials (crypto/tlscredsx509.c: with the server's certificate),
 * so the check is the destination's: a source whose certificate is revoked is refused by the target's QEMU. A move
 * *to* a revoked server is stopped before QEMU, by the agent plane (the target's agent is refused: agent-revocation).
 */
test("QEMU's own migration TLS reads the fleet's CRL: a move from a server whose certificate is revoked is refused by the destination's QEMU", async () => {
  const ids = ['hq-6', 'hq-7'];
  const pki = await testAgentPki(ids);
  const home = path.join(root, 'crl');
  const start = (id: string) => tlsQemuAgent(pki, home, id);
  // Only the CRL QEMU reads, not the agent plane's revoked.json: the agents still talk, so what refuses is QEMU's TLS.
  const revokeForQemu = (id: string | null) =>
    writeFleetCrl(
      pki.root,
      id === null
        ? []
        : ['server', 'client'].map((role) => {
            const c = new X509Certificate(fs.readFileSync(path.join(pki.serverDir(id), `${role}-cert.pem`)));
            return { serial: normalSerial(c.serialNumber), subject: c.subject.replace(/\n/g, ', '), revokedAt: new Date().toISOString() };
          }),
    );
  const [six, seven] = [await start(ids[0]!), await start(ids[1]!)];
  try {
    const client = (id: string, url: string) => createAgentClient({ baseUrl: url, tls: pki.controlPlane, serverId: id, timeoutMs: 20_000 });
    const a = client(ids[0]!, six.url);
    const b = client(ids[1]!, seven.url);
    await a.prepareIncarnation({ incarnationId: 'inc-6', capacity: { vcpus: 2, memoryMiB: 512, diskGiB: 5 } });
    await b.prepareIncarnation({ incarnationId: 'inc-7', capacity: { vcpus: 2, memoryMiB: 512, diskGiB: 5 } });
    await a.createVm({ vmId: 'vm-c', incarnationId: 'inc-6', spec: { vcpus: 1, memoryMiB: 128, diskGiB: 1 } });
    await waitFor('the guest to count', async () => (await a.guestOp('vm-c', { kind: 'read' })).counter >= 2, 90_000, 100);
    const move = async (from: typeof a, jobId: string, to: { url: string }, inc: string) => {
      await from.startMigration({ jobId, vmId: 'vm-c', target: { agentUrl: to.url, incarnationId: inc }, maxDowntimeMs: 500, autoConverge: true });
      return waitFor(
        `move ${jobId} to end`,
        async () => {
          const j = await from.getMigration(jobId);
          return j && j.state !== 'running' ? j : undefined;
        },
        120_000,
        100,
      );
    };
    // From a revoked server: the destination's QEMU (its credentials loaded with the CRL) refuses the source's
    // client certificate; the VM stays where it was, running.
    revokeForQemu(ids[0]!);
    const fromRevoked = await move(a, 'job-c1', seven, 'inc-7');
    process.stderr.write(`[qemu crl] refused move: ${JSON.stringify(fromRevoked)}\n`);
    expect(fromRevoked.state).toBe('failed');
    expect(await a.getVm('vm-c')).toMatchObject({ serverId: ids[0], state: 'running' });
    expect((await a.guestOp('vm-c', { kind: 'read' })).servedBy).toBe(ids[0]);
    // The same move with the CRL emptied: completes (the refusal was the CRL's).
    revokeForQemu(null);
    expect(await move(a, 'job-c2', seven, 'inc-7')).toMatchObject({ state: 'completed' });
    expect((await b.guestOp('vm-c', { kind: 'read' })).servedBy).toBe(ids[1]);
  } finally {
    await Promise.all([six.stop(), seven.stop()]);
    for (const dir of [path.join(pki.root, 'servers'), ...ids.map((id) => pki.serverDir(id))]) fs.rmSync(path.join(dir, 'ca-crl.pem'), { force: true });
  }
  expect(qemuUnder(home)).toEqual([]);
}, 300_000);

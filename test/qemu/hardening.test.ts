import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Resources } from '../../common/resources';
import { createAgentClient } from '../../compute/agent-client';
import { startAgent } from '../../compute/agent-service';
import { QEMU_SANDBOX } from '../../compute/qemu/qemu-process';
import { runQemuSetup } from '../../compute/qemu/tools';
import { logger, waitFor } from '../compute/helpers';
import { testAgentPki } from '../support/agent-pki';
import { qemuUnder } from './helpers';

/**
 * How an agent runs QEMU: its state under DHM_HOME in folders of its own (0700, owner checked), QEMU with an
 * environment of three variables and its seccomp sandbox on. One small real VM.
 */
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-qemu-hardening-'));
const SERVER: Resources = { vcpus: 4, memoryMiB: 2048, diskGiB: 20 };
const previousHome = process.env.DHM_HOME;

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
    expect(fs.statSync(base).mode & 0o777).toBe(0o700);
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

import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { freePort } from '../../stack/ports';
import { runQemuSetup } from '../../compute/qemu/tools';
import { eventually } from '../support/system';
import { processesMatching } from '../qemu/helpers';

/**
 * `dhm demo --backend qemu --testbed --json` as an operator runs it (issue 17's must-show): its own DHM_HOME and ports,
 * a testbed of 3 namespaced servers with shaped NICs, real guests with local disks (one also with a network volume)
 * moved over TCP+TLS while the tenant holds connections to them. The JSON report must give, per moved VM, the local-disk
 * bytes the mirror copied and whether every block the guest wrote is on the target with its checksum.
 */

const ROOT = path.resolve(__dirname, '..', '..');
const DHM = path.join(ROOT, 'bin', 'dhm.js');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-testbed-demo-'));
const home = path.join(root, 'home');
let child: ChildProcess | null = null;

interface VmReport {
  vmId: string;
  name: string;
  state: string;
  diskBytesCopied: number | null;
  diskVerified: boolean | null;
  requestsFailed: number;
  requestsDone: number;
  counterContinued: boolean | null;
}

beforeAll(async () => {
  await runQemuSetup(); // cached; a first run's downloads should not count against the demo's time
  for (const d of [root, home]) {
    fs.mkdirSync(d, { recursive: true });
    fs.chmodSync(d, 0o755); // the postgres system user must reach its data folder
  }
}, 600_000);

afterAll(async () => {
  // Only if the test failed half-way: the demo's process group gets a Ctrl-C, then SIGKILL.
  if (child && child.exitCode === null && child.signalCode === null) {
    const gone = new Promise((r) => child!.once('exit', r));
    process.kill(-child.pid!, 'SIGINT');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 15_000).unref())]);
    if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, 'SIGKILL');
  }
  fs.rmSync(root, { recursive: true, force: true });
});

test('dhm demo --backend qemu --testbed --json: every moved VM reports diskBytesCopied and diskVerified, nothing left behind', async () => {
  const env = {
    ...process.env,
    DHM_HOME: home,
    DHM_PG_PORT: String(await freePort()),
    DHM_TEMPORAL_PORT: String(await freePort()),
    DHM_TEMPORAL_UI_PORT: String(await freePort()),
    DHM_API_PORT: String(await freePort()),
    LOG_LEVEL: 'error',
    DATABASE_URL: '',
    TEMPORAL_ADDRESS: '',
  };
  const t0 = Date.now();
  const proc = spawn(process.execPath, [DHM, 'demo', '--backend', 'qemu', '--testbed', '--json'], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  child = proc;
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  proc.stderr!.on('data', (d) => (stderr += d));
  const code = await new Promise<number | null>((resolve) => proc.on('exit', (c) => resolve(c)));
  process.stderr.write(
    `\n[dhm demo --testbed --json] exit ${code} after ${((Date.now() - t0) / 1000).toFixed(1)} s\n${stdout}\nstderr:\n${stderr.slice(-3000)}\n`,
  );

  // stdout is one JSON object (progress went to stderr).
  const report = JSON.parse(stdout) as { result: string; tls: boolean; movedFrom: string; movedTo: string; vms: VmReport[]; leftovers: string[] };
  expect(code).toBe(0);
  expect(report.result).toBe('completed');
  expect(report.tls).toBe(true);
  expect(report.movedTo).not.toBe(report.movedFrom);
  const moved = report.vms.filter((v) => v.state === 'moved');
  // The demo creates three VMs with local disks; one is deleted mid-move and one is provisioned on the clone.
  expect(moved.length).toBeGreaterThanOrEqual(2);
  for (const v of moved) {
    expect({ vm: v.name, copied: (v.diskBytesCopied ?? 0) > 0, verified: v.diskVerified }).toEqual({ vm: v.name, copied: true, verified: true });
    expect({ vm: v.name, failed: v.requestsFailed, continued: v.counterContinued }).toEqual({ vm: v.name, failed: 0, continued: true });
    expect(v.requestsDone).toBeGreaterThan(0);
  }
  expect(report.leftovers).toEqual([]);
  await eventually('the demo stack to be gone', async () => processesMatching(home).length === 0, 15_000, 100);
}, 900_000);

import { runQemuSetup } from '../../compute/qemu/tools';
import { demoSandbox } from '../support/demo-process';
import { eventually } from '../support/system';
import { processesMatching } from '../qemu/helpers';

/**
 * `dhm demo --backend qemu --testbed --json` as an operator runs it (issue 17's must-show): its own DHM_HOME and ports,
 * a testbed of 3 namespaced servers with shaped NICs, real guests with local disks (one also with a network volume)
 * moved over TCP+TLS while the tenant holds connections to them. The JSON report must give, per moved VM, the local-disk
 * bytes the mirror copied and whether every block the guest wrote is on the target with its checksum.
 */

const demo = demoSandbox('dhm-testbed-demo-');

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
}, 600_000);

afterAll(() => demo.stop());

test('dhm demo --backend qemu --testbed --json: every moved VM reports diskBytesCopied and diskVerified, nothing left behind', async () => {
  const { code, stdout } = await demo.run(['--backend', 'qemu', '--testbed', '--json']);

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
  await eventually('the demo stack to be gone', async () => processesMatching(demo.home).length === 0, 15_000, 100);
}, 900_000);

import * as fs from 'node:fs';
import { runQemuSetup } from '../../compute/qemu/tools';
import { demoSandbox } from '../support/demo-process';
import { eventually } from '../support/system';
import { processesMatching, qemuUnder } from './helpers';

/**
 * `dhm demo --backend qemu` as a user runs it: its own DHM_HOME and ports, a whole embedded system (Postgres, Temporal
 * dev server, 3 qemu agents, worker, scheduler, API) in one process, 3 real guests moved while they work. Its TMPDIR
 * is ours, so every QEMU process it starts can be found under it (the agents' state folders default to <tmp>/dhm-qemu).
 */

const demo = demoSandbox('dhm-qemu-demo-');
const { home, tmp } = demo;

beforeAll(async () => {
  await runQemuSetup(); // cached; the demo runs it too, but a first run's downloads should not count against its time
}, 600_000);

afterAll(() => demo.stop());

test('dhm demo --backend qemu: three real guests move while they work; exit 0 and the summary with QEMU downtime', async () => {
  const { code, stdout } = await demo.run(['--backend', 'qemu'], { TMPDIR: tmp });
  expect(code).toBe(0);

  expect(stdout).toMatch(/Starting the embedded system \(Postgres, Temporal dev server, 3 qemu servers/);
  const result = /Result: completed\. Host (\S+) kept its id; it now runs on (\S+) \(was (\S+)\)\./.exec(stdout);
  expect(result).not.toBeNull();
  expect(result![2]).not.toBe(result![3]);
  // The summary table: each of the three guests either moved, with QEMU's downtime, or was the one the tenant deleted
  // while it still waited for its move (the demo deletes a VM that is pending then; dhm moves one at a time when one
  // stream fills the link, so one usually is). The deleted count is the one the demo reports.
  const deletedReported = /Tenant requests during the migration: .*?(\d+) VMs? deleted/.exec(stdout);
  expect(deletedReported).not.toBeNull();
  let moved = 0;
  let deleted = 0;
  for (const name of ['db', 'app', 'bastion']) {
    const row = new RegExp(`^\\S+\\s+${name}\\s+\\d+ MiB\\s+moved\\s+\\d+\\s+\\d+ MiB\\s+(\\d+\\.\\d) ms`, 'm').exec(stdout);
    if (row) {
      moved++;
      expect(Number(row[1])).toBeGreaterThan(0);
    } else {
      expect(stdout).toMatch(new RegExp(`^\\S+\\s+${name}\\s+\\d+ MiB\\s+deleted`, 'm'));
      deleted++;
    }
  }
  expect(deleted).toBe(Number(deletedReported![1]));
  expect(moved).toBeGreaterThanOrEqual(2);
  const downtime = /Downtime per VM \(as QEMU measured it\): max (\d+\.\d) ms, mean (\d+\.\d) ms/.exec(stdout);
  expect(downtime).not.toBeNull();
  expect(Number(downtime![2])).toBeGreaterThan(0);
  expect(Number(downtime![1])).toBeLessThan(5_000);
  expect(stdout).toMatch(/Total time: \d+\.\d s of real time/);
  expect(stdout).toMatch(/Guest operations during the migration: [1-9]\d* done, 0 failed/);
  expect(stdout).toMatch(/Tenant requests during the migration: 2 VMs provisioned on the clone/);

  // Nothing left behind: no QEMU, no Postgres or Temporal of the demo, no throwaway state folder in DHM_HOME.
  expect(qemuUnder(tmp)).toEqual([]);
  await eventually('the demo stack to be gone', async () => processesMatching(home).length === 0, 10_000, 100);
  expect(fs.readdirSync(home).filter((f) => f.startsWith('demo-qemu-'))).toEqual([]);
}, 120_000);

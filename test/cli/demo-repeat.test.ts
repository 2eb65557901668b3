import * as fs from 'node:fs';
import * as path from 'node:path';
import { isolatedDhmEnv, spawnDhm } from '../support/dhm-process';

/**
 * `npm run demo` runs `dhm demo`: it makes a tenant, a host and VMs, migrates the host, and — also when it fails half-way —
 * deletes what it made, so it can run any number of times on one DHM_HOME (before, the fleet ran out of free std-64
 * servers after about five runs).
 */
describe('dhm demo, three times in a row on one DHM_HOME', () => {
  const fleet = JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', '..', 'inventory', 'fleets', 'default.json'), 'utf8')) as { servers: unknown[] };

  it('succeeds each time, and each time leaves every server of the fleet free again', async () => {
    const { stateDir, env } = await isolatedDhmEnv('dhm-demo-repeat-');
    try {
      for (let run = 1; run <= 3; run++) {
        const demo = spawnDhm(['demo', '--time-scale', '20'], env);
        const code = await demo.exited;
        const out = demo.output();
        expect([run, code, out.slice(-1500)]).toEqual([run, 0, expect.stringContaining('Result: completed')]);
        expect(out).toMatch(/Guest operations during the migration: \d+ done, 0 failed/);
        const cleaned = /Cleaned up: (\d+) VMs and dedicated host (\S+) deleted; (\d+) servers free again\./.exec(out);
        expect(cleaned).not.toBeNull();
        // 8 VMs, plus the two the tenant provisioned mid-way, less the one it deleted if one was still waiting to move.
        const deleted = /Tenant requests during the migration: 2 VMs provisioned on the clone, (\d) VMs? deleted/.exec(out);
        expect(deleted).not.toBeNull();
        expect(Number(cleaned![1])).toBe(10 - Number(deleted![1]));
        expect(Number(cleaned![3])).toBe(fleet.servers.length);
      }
    } finally {
      fs.rmSync(stateDir, { recursive: true, force: true });
    }
  }, 900_000);
});

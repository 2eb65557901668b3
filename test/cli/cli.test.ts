import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { DHM_BIN, isolatedDhmEnv, spawnDhm, waitForOutput } from '../support/dhm-process';


function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [DHM_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * The CLI as an operator and a tenant use it, against a real `dhm up` in its own folder and ports: every command
 * goes through the HTTP API.
 */
describe('the dhm CLI', () => {
  let env: NodeJS.ProcessEnv;
  let stateDir: string;
  let up: ChildProcess;

  beforeAll(async () => {
    ({ stateDir, env } = await isolatedDhmEnv('dhm-cli-', { DHM_TIME_SCALE: '400' }));
    const run = spawnDhm(['up'], env);
    up = run.child;
    await waitForOutput(run, /Press Ctrl-C/, 120_000);
  });
  afterAll(async () => {
    if (up && up.exitCode === null) {
      const exited = new Promise((r) => up.once('exit', r));
      up.kill('SIGTERM');
      await exited;
    }
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it('operator and tenant commands: tenant, host, VMs, migrate --watch, status, hosts, delete', async () => {
    const tenant = await run(['tenant-create', 'cli-tenant', '--json'], env);
    expect(tenant.code).toBe(0);
    const { token } = JSON.parse(tenant.stdout);
    const host = await run(['--token', token, 'host-create', 'cli-host', '--zone', 'zone-a', '--class', 'std-64', '--json'], env);
    expect(host.code).toBe(0);
    const hostId = JSON.parse(host.stdout).id as string;
    for (const name of ['a', 'b', 'c']) {
      const vm = await run(['--token', token, 'vm', 'create', hostId, '--name', name, '--vcpus', '2', '--memory', '2048', '--json'], env);
      expect(vm.code).toBe(0);
      expect(JSON.parse(vm.stdout).dedicatedHostId).toBe(hostId);
    }
    const vms = await run(['--token', token, 'vms', hostId, '--json'], env);
    expect(JSON.parse(vms.stdout)).toHaveLength(3);

    // A tenant cannot migrate; the operator can, and --watch follows it to the end.
    const refused = await run(['--token', token, 'migrate', hostId], env);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/^dhm: \w+: /m);
    const migrated = await run(['migrate', hostId, '--watch', '--json', '--max-parallel', '2'], env);
    expect(migrated.code).toBe(0);
    const final = JSON.parse(migrated.stdout);
    expect(final.phase).toBe('completed');
    expect(final.vms.every((v: { state: string; figures?: { downtimeMs: number } }) => v.state === 'moved' && v.figures!.downtimeMs > 0)).toBe(true);
    expect(migrated.stderr).toMatch(/phase: completed/);

    const status = await run(['migration', 'status', final.id, '--json'], env);
    expect(JSON.parse(status.stdout).phase).toBe('completed');
    const human = await run(['migration', 'status', final.id], env);
    expect(human.stdout).toMatch(/completed/);
    expect(human.stdout).toMatch(/downtime/);

    const hosts = await run(['hosts', '--json'], env);
    const listed = JSON.parse(hosts.stdout).find((h: { id: string }) => h.id === hostId);
    expect(listed).toMatchObject({ id: hostId, state: 'active', vmCount: 3, migration: null });

    const vmId = JSON.parse(vms.stdout)[0].id as string;
    const del = await run(['--token', token, 'vm', 'delete', vmId], env);
    expect(del.code).toBe(0);
    expect(JSON.parse((await run(['--token', token, 'vms', hostId, '--json'], env)).stdout)).toHaveLength(2);

    // A host with VMs cannot be deleted (409 naming why); once empty it can, and it is gone from the listing.
    const busy = await run(['--token', token, 'host', 'delete', hostId], env);
    expect(busy.code).not.toBe(0);
    expect(busy.stderr).toMatch(/^dhm: HOST_HAS_VMS: /m);
    for (const v of JSON.parse((await run(['--token', token, 'vms', hostId, '--json'], env)).stdout)) expect((await run(['--token', token, 'vm', 'delete', v.id], env)).code).toBe(0);
    const gone = await run(['--token', token, 'host', 'delete', hostId, '--json'], env);
    expect(gone.code).toBe(0);
    expect(JSON.parse(gone.stdout)).toMatchObject({ id: hostId, deleted: true });
    expect(JSON.parse((await run(['--token', token, 'hosts', '--json'], env)).stdout).map((h: { id: string }) => h.id)).not.toContain(hostId);
    const again = await run(['--token', token, 'host', 'delete', hostId], env);
    expect(again.stderr).toMatch(/^dhm: NOT_FOUND: /m);
  });

  it('bad arguments name the option and change nothing', async () => {
    const bad = await run(['vm', 'create', 'dh-x', '--name', 'n', '--memory', '-5'], env);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--memory must be a whole number/);
    const before = JSON.parse((await run(['hosts', '--json'], env)).stdout).length;
    const unknownHost = await run(['migrate', 'no-such-host'], env);
    expect(unknownHost.code).not.toBe(0);
    expect(unknownHost.stderr).toMatch(/NOT_FOUND/);
    expect(JSON.parse((await run(['hosts', '--json'], env)).stdout).length).toBe(before);
  });
});

import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
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
    // The tenant's token from the environment: tokens are never taken on the command line.
    const asTenant = { ...env, DHM_TOKEN: token };
    const host = await run(['host-create', 'cli-host', '--zone', 'zone-a', '--class', 'std-64', '--json'], asTenant);
    expect(host.code).toBe(0);
    const hostId = JSON.parse(host.stdout).id as string;
    for (const name of ['a', 'b', 'c']) {
      const vm = await run(['vm', 'create', hostId, '--name', name, '--vcpus', '2', '--memory', '2048', '--json'], asTenant);
      expect(vm.code).toBe(0);
      expect(JSON.parse(vm.stdout).dedicatedHostId).toBe(hostId);
    }
    const vms = await run(['vms', hostId, '--json'], asTenant);
    expect(JSON.parse(vms.stdout)).toHaveLength(3);

    // A tenant cannot migrate; the operator can, and --watch follows it to the end.
    const refused = await run(['migrate', hostId], asTenant);
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
    const del = await run(['vm', 'delete', vmId], asTenant);
    expect(del.code).toBe(0);
    expect(JSON.parse((await run(['vms', hostId, '--json'], asTenant)).stdout)).toHaveLength(2);

    // A host with VMs cannot be deleted (409 naming why); once empty it can, and it is gone from the listing.
    const busy = await run(['host', 'delete', hostId], asTenant);
    expect(busy.code).not.toBe(0);
    expect(busy.stderr).toMatch(/^dhm: HOST_HAS_VMS: /m);
    for (const v of JSON.parse((await run(['vms', hostId, '--json'], asTenant)).stdout)) expect((await run(['vm', 'delete', v.id], asTenant)).code).toBe(0);
    const gone = await run(['host', 'delete', hostId, '--json'], asTenant);
    expect(gone.code).toBe(0);
    expect(JSON.parse(gone.stdout)).toMatchObject({ id: hostId, deleted: true });
    expect(JSON.parse((await run(['hosts', '--json'], asTenant)).stdout).map((h: { id: string }) => h.id)).not.toContain(hostId);
    const again = await run(['host', 'delete', hostId], asTenant);
    expect(again.stderr).toMatch(/^dhm: NOT_FOUND: /m);
  });

  it('tokens: refused on argv, read from a file; tenants’ quotas and tokens from the CLI; plain HTTP elsewhere than loopback refused', async () => {
    const onArgv = await run(['--token', 'dhm_not_on_argv_please', 'hosts'], env);
    expect(onArgv.code).not.toBe(0);
    expect(onArgv.stderr).toMatch(/--token: tokens are not taken on the command line.*DHM_TOKEN.*--token-file/);
    const created = JSON.parse((await run(['tenant-create', 'cli-quota', '--json'], env)).stdout);
    const tokenFile = path.join(stateDir, 'tenant.token');
    fs.writeFileSync(tokenFile, `${created.token}\n`, { mode: 0o600 });
    const hosts = await run(['--token-file', tokenFile, 'hosts', '--json'], env);
    expect([hosts.code, JSON.parse(hosts.stdout)]).toEqual([0, []]);
    const missing = await run(['--token-file', path.join(stateDir, 'nope'), 'hosts'], env);
    expect(missing.stderr).toMatch(/--token-file: cannot read/);

    const raised = await run(['tenant-quotas', created.id, '--hosts-per-zone-class', '5', '--json'], env);
    expect([raised.code, JSON.parse(raised.stdout).hostsPerZoneClass]).toEqual([0, 5]);
    const badQuota = await run(['tenant-quotas', created.id, '--vms-per-host', 'lots'], env);
    expect(badQuota.stderr).toMatch(/--vms-per-host: must be a whole number/);
    const rotated = JSON.parse((await run(['tenant-rotate-token', created.id, '--json'], env)).stdout);
    expect(rotated.token).not.toBe(created.token);
    expect((await run(['--token-file', tokenFile, 'hosts'], env)).stderr).toMatch(/UNAUTHORIZED/);
    expect((await run(['hosts', '--json'], { ...env, DHM_TOKEN: rotated.token })).code).toBe(0);
    expect((await run(['tenant-revoke-token', created.id], env)).code).toBe(0);
    expect((await run(['hosts'], { ...env, DHM_TOKEN: rotated.token })).stderr).toMatch(/UNAUTHORIZED/);

    // 198.18.0.1 is not this machine: the token would cross a network in clear.
    const plain = await run(['hosts'], { ...env, DHM_API_URL: 'http://198.18.0.1:7780', DHM_TOKEN: rotated.token });
    expect(plain.code).not.toBe(0);
    expect(plain.stderr).toMatch(/DHM_API_URL: .*plain HTTP.*DHM_ALLOW_PLAIN_HTTP=1/);
  }, 300_000);

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

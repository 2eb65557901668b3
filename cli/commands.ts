import { randomUUID } from 'node:crypto';
import { InvalidArgumentError, type Command } from 'commander';
import { apiClientFromEnvironment, type ApiClient } from './api-client';
import { summaryTable, watchMigration, fetchMigration } from './watch';

function positiveInt(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a whole number ≥ 1`);
    return n;
  };
}

function positiveNumber(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a number > 0`);
    return n;
  };
}

function print(json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(`${json ? JSON.stringify(value, null, 2) : human()}\n`);
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (c ?? '').padEnd(widths[i]!)).join('  ')).join('\n');
}

type Host = { id: string; name: string; zone: string; resourceClass: string; state: string; vmCount: number; available: { vcpus: number; memoryMiB: number }; migration: { id: string; phase: string } | null; physicalServerId?: string };
type Vm = { id: string; name: string; dedicatedHostId: string; state: string; vcpus: number; memoryMiB: number; diskGiB: number };

const api = (cmd: Command): ApiClient => apiClientFromEnvironment({ token: cmd.optsWithGlobals().token as string | undefined });

/** The read and write commands; every one talks to the API (never to Postgres), as the operator unless --token. */
export function registerApiCommands(program: Command): void {
  program.option('--token <token>', 'act with this API token (a tenant’s) instead of the operator token');

  program
    .command('tenant-create <name>')
    .description('create a tenant (operator); prints its token once')
    .option('--json', 'print JSON')
    .action(async function (this: Command, name: string, o: { json?: boolean }) {
      const t = await api(this).request<{ id: string; name: string; token: string }>('POST', '/v1/tenants', { name }, { 'idempotency-key': randomUUID() });
      print(Boolean(o.json), t, () => `tenant ${t.id} (${t.name})\ntoken: ${t.token}`);
    });

  program
    .command('hosts')
    .description('list dedicated hosts')
    .option('--json', 'print JSON')
    .action(async function (this: Command, o: { json?: boolean }) {
      const { hosts } = await api(this).request<{ hosts: Host[] }>('GET', '/v1/dedicated-hosts');
      print(Boolean(o.json), hosts, () =>
        table([
          ['HOST', 'NAME', 'ZONE', 'CLASS', 'STATE', 'VMS', 'FREE vCPU', 'FREE MiB', 'MIGRATION', 'SERVER'],
          ...hosts.map((h) => [h.id, h.name, h.zone, h.resourceClass, h.state, String(h.vmCount), String(h.available.vcpus), String(h.available.memoryMiB), h.migration ? `${h.migration.id} (${h.migration.phase})` : '', h.physicalServerId ?? '']),
        ]),
      );
    });

  program
    .command('host-create <name>')
    .description('create a dedicated host (tenant token)')
    .requiredOption('--zone <zone>', 'zone')
    .requiredOption('--class <resourceClass>', 'resource class')
    .option('--json', 'print JSON')
    .action(async function (this: Command, name: string, o: { zone: string; class: string; json?: boolean }) {
      const h = await api(this).request<Host>('POST', '/v1/dedicated-hosts', { name, zone: o.zone, resourceClass: o.class }, { 'idempotency-key': randomUUID() });
      print(Boolean(o.json), h, () => `dedicated host ${h.id} (${h.name}) in ${h.zone}, ${h.resourceClass}`);
    });

  const host = program.command('host').description('delete a dedicated host');
  host
    .command('delete <host>')
    .description('delete an empty dedicated host that is not migrating; its server is de-provisioned and returns to the pool')
    .option('--json', 'print JSON')
    .action(async function (this: Command, id: string, o: { json?: boolean }) {
      const r = await api(this).request<{ id: string; deletedAt: string }>('DELETE', `/v1/dedicated-hosts/${encodeURIComponent(id)}`, undefined, { 'idempotency-key': randomUUID() });
      print(Boolean(o.json), r, () => `dedicated host ${r.id} deleted; its server goes to the scheduler to be de-provisioned`);
    });

  program
    .command('vms <host>')
    .description('list the VMs of a dedicated host')
    .option('--json', 'print JSON')
    .action(async function (this: Command, host: string, o: { json?: boolean }) {
      const { vms } = await api(this).request<{ vms: Vm[] }>('GET', `/v1/dedicated-hosts/${encodeURIComponent(host)}/vms`);
      print(Boolean(o.json), vms, () =>
        table([['VM', 'NAME', 'HOST', 'STATE', 'vCPU', 'MiB', 'GiB'], ...vms.map((v) => [v.id, v.name, v.dedicatedHostId, v.state, String(v.vcpus), String(v.memoryMiB), String(v.diskGiB)])]),
      );
    });

  const vm = program.command('vm').description('create or delete a VM');
  vm.command('create <host>')
    .description('create a VM on a dedicated host (lands on the clone while the host migrates)')
    .requiredOption('--name <name>', 'VM name')
    .option('--vcpus <n>', 'vCPUs', positiveInt('--vcpus'), 1)
    .option('--memory <MiB>', 'memory in MiB', positiveInt('--memory'), 1024)
    .option('--disk <GiB>', 'disk in GiB', positiveInt('--disk'), 10)
    .option('--json', 'print JSON')
    .action(async function (this: Command, host: string, o: { name: string; vcpus: number; memory: number; disk: number; json?: boolean }) {
      const v = await api(this).request<Vm>('POST', `/v1/dedicated-hosts/${encodeURIComponent(host)}/vms`, { name: o.name, vcpus: o.vcpus, memoryMiB: o.memory, diskGiB: o.disk }, { 'idempotency-key': randomUUID() });
      print(Boolean(o.json), v, () => `VM ${v.id} (${v.name}) on dedicated host ${v.dedicatedHostId}`);
    });
  vm.command('delete <vm>')
    .description('delete a VM wherever it is (also during a migration)')
    .option('--json', 'print JSON')
    .action(async function (this: Command, id: string, o: { json?: boolean }) {
      const v = await api(this).request<Vm>('DELETE', `/v1/vms/${encodeURIComponent(id)}`);
      print(Boolean(o.json), v, () => `VM ${id} deleted`);
    });

  program
    .command('migrate <host>')
    .description("live-migrate a dedicated host to a matching server (operator); options left out come from dhm's own schedule for the host")
    .option('--target <serverId>', 'a specific target server')
    .option('--max-parallel <n>', 'VMs moved at once', positiveInt('--max-parallel'))
    .option('--max-downtime <ms>', 'downtime limit per VM', positiveInt('--max-downtime'))
    .option('--bandwidth-cap <bytesPerSecond>', 'per-stream cap', positiveNumber('--bandwidth-cap'))
    .option('--auto-converge', 'throttle guests that dirty memory faster than it can be sent')
    .option('--watch', 'follow it with progress bars until it ends')
    .option('--json', 'print JSON')
    .action(async function (this: Command, host: string, o: { target?: string; maxParallel?: number; maxDowntime?: number; bandwidthCap?: number; autoConverge?: boolean; watch?: boolean; json?: boolean }) {
      const policy = {
        ...(o.maxParallel ? { maxParallel: o.maxParallel } : {}),
        ...(o.maxDowntime ? { maxDowntimeMs: o.maxDowntime } : {}),
        ...(o.bandwidthCap ? { bandwidthCapBps: o.bandwidthCap } : {}),
        ...(o.autoConverge ? { autoConverge: true } : {}),
      };
      const client = api(this);
      const started = await client.request<{ id: string; dedicatedHostId: string; phase: string }>(
        'POST',
        `/v1/dedicated-hosts/${encodeURIComponent(host)}/migrations`,
        { ...(o.target ? { targetServerId: o.target } : {}), ...(Object.keys(policy).length ? { policy } : {}) },
        { 'idempotency-key': randomUUID() },
      );
      if (!o.watch) return print(Boolean(o.json), started, () => `migration ${started.id} started`);
      await finish(client, started.id, Boolean(o.json));
    });

  const migration = program.command('migration').description('inspect or cancel a migration');
  migration
    .command('status <id>')
    .option('--watch', 'follow it until it ends')
    .option('--json', 'print JSON')
    .action(async function (this: Command, id: string, o: { watch?: boolean; json?: boolean }) {
      const client = api(this);
      if (o.watch) return finish(client, id, Boolean(o.json));
      const st = await fetchMigration(client, id);
      print(Boolean(o.json), st, () => `${st.id}: ${st.phase}${st.lastError ? ` (${st.lastError})` : ''}\n${summaryTable(st)}`);
    });
  migration
    .command('cancel <id>')
    .option('--json', 'print JSON')
    .action(async function (this: Command, id: string, o: { json?: boolean }) {
      const r = await api(this).request<unknown>('POST', `/v1/migrations/${encodeURIComponent(id)}/cancel`, undefined, { 'idempotency-key': randomUUID() });
      print(Boolean(o.json), r, () => `cancel requested for ${id}; it rolls back`);
    });
}

async function finish(client: ApiClient, id: string, json: boolean): Promise<void> {
  const st = await watchMigration(client, id, json ? { out: process.stderr } : {});
  print(json, st, () => `\n${st.id}: ${st.phase}${st.lastError ? ` (${st.lastError})` : ''}\n${summaryTable(st)}`);
  if (st.phase !== 'completed') process.exitCode = 1;
}

import { randomUUID } from 'node:crypto';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { UserFacingError } from '../common/errors';
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

type Host = {
  id: string;
  name: string;
  zone: string;
  resourceClass: string;
  state: string;
  vmCount: number;
  available: { vcpus: number; memoryMiB: number };
  migration: { id: string; phase: string } | null;
  physicalServerId?: string;
};
type Vm = { id: string; name: string; dedicatedHostId: string; state: string; vcpus: number; memoryMiB: number; diskGiB: number };

const api = (cmd: Command): ApiClient => {
  const o = cmd.optsWithGlobals() as { token?: string; tokenFile?: string };
  // A token on the command line is visible to every user of the machine (ps, /proc): refused, with where to put it.
  if (o.token !== undefined)
    throw new UserFacingError(
      '--token: tokens are not taken on the command line (other users can read it); set DHM_TOKEN, or put it in a file and pass --token-file <path> (or DHM_TOKEN_FILE)',
      '--token',
    );
  return apiClientFromEnvironment({ tokenFile: o.tokenFile });
};

/** The read and write commands; every one talks to the API (never to Postgres), as the operator unless DHM_TOKEN or --token-file. */
export function registerApiCommands(program: Command): void {
  program.option('--token-file <path>', 'act with the API token (a tenant’s) in this file instead of the operator token (or set DHM_TOKEN)');
  program.addOption(new Option('--token <token>').hideHelp());

  program
    .command('tenant-quotas <tenantId>')
    .description('show a tenant’s quotas, or raise them (operator): hosts per zone and class, VMs per host, requests per second')
    .option('--hosts-per-zone-class <n>', 'dedicated hosts per zone and resource class (default 2)')
    .option('--vms-per-host <n>', 'VMs per dedicated host')
    .option('--requests-per-second <n>', 'API requests per second of the tenant’s token')
    .option('--json', 'print JSON')
    .action(async function (
      this: Command,
      tenantId: string,
      o: { hostsPerZoneClass?: string; vmsPerHost?: string; requestsPerSecond?: string; json?: boolean },
    ) {
      const num = (v: string | undefined, flag: string) => {
        if (v === undefined) return undefined;
        if (v === 'default') return null;
        if (!/^\d+$/.test(v)) throw new UserFacingError(`${flag}: must be a whole number or \`default\` (got ${v})`, flag);
        return Number(v);
      };
      const body = Object.fromEntries(
        Object.entries({
          hostsPerZoneClass: num(o.hostsPerZoneClass, '--hosts-per-zone-class'),
          vmsPerHost: num(o.vmsPerHost, '--vms-per-host'),
          requestsPerSecond: num(o.requestsPerSecond, '--requests-per-second'),
        }).filter(([, v]) => v !== undefined),
      );
      const path = `/v1/tenants/${encodeURIComponent(tenantId)}/quotas`;
      const q = Object.keys(body).length
        ? await api(this).request<Record<string, unknown>>('POST', path, body, { 'idempotency-key': randomUUID() })
        : await api(this).request<Record<string, unknown>>('GET', path);
      print(
        Boolean(o.json),
        q,
        () => `tenant ${tenantId}: ${q.hostsPerZoneClass} host(s) per zone and class, ${q.vmsPerHost} VM(s) per host, ${q.requestsPerSecond} request(s)/s`,
      );
    });

  program
    .command('tenant-rotate-token <tenantId>')
    .description('a new token for the tenant (operator), printed once; the old one stops working at once')
    .option('--json', 'print JSON')
    .action(async function (this: Command, tenantId: string, o: { json?: boolean }) {
      const t = await api(this).request<{ id: string; token: string }>(
        'POST',
        `/v1/tenants/${encodeURIComponent(tenantId)}/token/rotate`,
        {},
        { 'idempotency-key': randomUUID() },
      );
      print(Boolean(o.json), t, () => `tenant ${t.id}\ntoken: ${t.token}`);
    });

  program
    .command('tenant-revoke-token <tenantId>')
    .description('no token of the tenant works from now on, until a rotation (operator)')
    .option('--json', 'print JSON')
    .action(async function (this: Command, tenantId: string, o: { json?: boolean }) {
      const r = await api(this).request<{ id: string; revokedAt: string }>(
        'POST',
        `/v1/tenants/${encodeURIComponent(tenantId)}/token/revoke`,
        {},
        { 'idempotency-key': randomUUID() },
      );
      print(Boolean(o.json), r, () => `tenant ${r.id}: token revoked at ${r.revokedAt}`);
    });

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
          ...hosts.map((h) => [
            h.id,
            h.name,
            h.zone,
            h.resourceClass,
            h.state,
            String(h.vmCount),
            String(h.available.vcpus),
            String(h.available.memoryMiB),
            h.migration ? `${h.migration.id} (${h.migration.phase})` : '',
            h.physicalServerId ?? '',
          ]),
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
      const h = await api(this).request<Host>(
        'POST',
        '/v1/dedicated-hosts',
        { name, zone: o.zone, resourceClass: o.class },
        { 'idempotency-key': randomUUID() },
      );
      print(Boolean(o.json), h, () => `dedicated host ${h.id} (${h.name}) in ${h.zone}, ${h.resourceClass}`);
    });

  const host = program.command('host').description('delete a dedicated host');
  host
    .command('delete <host>')
    .description('delete an empty dedicated host that is not migrating; its server is de-provisioned and returns to the pool')
    .option('--json', 'print JSON')
    .action(async function (this: Command, id: string, o: { json?: boolean }) {
      const r = await api(this).request<{ id: string; deletedAt: string }>('DELETE', `/v1/dedicated-hosts/${encodeURIComponent(id)}`, undefined, {
        'idempotency-key': randomUUID(),
      });
      print(Boolean(o.json), r, () => `dedicated host ${r.id} deleted; its server goes to the scheduler to be de-provisioned`);
    });

  program
    .command('vms <host>')
    .description('list the VMs of a dedicated host')
    .option('--json', 'print JSON')
    .action(async function (this: Command, host: string, o: { json?: boolean }) {
      const { vms } = await api(this).request<{ vms: Vm[] }>('GET', `/v1/dedicated-hosts/${encodeURIComponent(host)}/vms`);
      print(Boolean(o.json), vms, () =>
        table([
          ['VM', 'NAME', 'HOST', 'STATE', 'vCPU', 'MiB', 'GiB'],
          ...vms.map((v) => [v.id, v.name, v.dedicatedHostId, v.state, String(v.vcpus), String(v.memoryMiB), String(v.diskGiB)]),
        ]),
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
      const v = await api(this).request<Vm>(
        'POST',
        `/v1/dedicated-hosts/${encodeURIComponent(host)}/vms`,
        { name: o.name, vcpus: o.vcpus, memoryMiB: o.memory, diskGiB: o.disk },
        { 'idempotency-key': randomUUID() },
      );
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
    .action(async function (
      this: Command,
      host: string,
      o: { target?: string; maxParallel?: number; maxDowntime?: number; bandwidthCap?: number; autoConverge?: boolean; watch?: boolean; json?: boolean },
    ) {
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

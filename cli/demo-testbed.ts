import { loadControlPlaneTls } from '../compute/agent-tls';
import { randomBytes, randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadEnv } from '../common/config';
import { createLogger } from '../common/logger';
import { TERMINAL_PHASES } from '../common/migration';
import { guestNic } from '../compute/qemu/guest-nic';
import { runQemuSetup } from '../compute/qemu/tools';
import { startTenantClient, type TenantClient, type VmTraffic } from '../compute/testbed/tenant-client';
import { downTestbed, testbedLeftovers, upTestbed, type TestbedState } from '../compute/testbed/testbed';
import { vmDisks, type Disk } from '../common/vm-spec';
import { verifyVmDisks } from '../compute/testbed/disk-check';
import { createVolume } from '../compute/testbed/storage';
import { startEmbeddedSystem, type EmbeddedSystem } from '../stack/embedded-system';
import { createApiClient, type ApiClient } from './api-client';
import { fetchMigration, summaryTable, watchMigration } from './watch';

/** Copies the servers' agent logs and the storage service's log out of the testbed; returns where. */
function keepLogs(st: TestbedState, to: string): string {
  fs.mkdirSync(to, { recursive: true, mode: 0o700 });
  const files = [...st.servers.map((s) => [path.join(s.dir, 'agent.log'), `${s.id}.agent.log`]), [path.join(st.storage.dir, 'storage.log'), 'storage.log']];
  for (const [from, name] of files) if (fs.existsSync(from!)) fs.copyFileSync(from!, path.join(to, name!));
  return to;
}

/** The host the story moves: one guest dirtying memory, two idle ones (MiB). */
const VMS = [
  { name: 'db', vcpus: 1, memoryMiB: 256, diskGiB: 2, workload: { dirtyRateMiBps: 8, workingSetMiB: 16 } },
  { name: 'app', vcpus: 1, memoryMiB: 192, diskGiB: 2 },
  { name: 'bastion', vcpus: 1, memoryMiB: 128, diskGiB: 2 },
];
const NEW_VM = { name: 'web-new', vcpus: 1, memoryMiB: 128, diskGiB: 2 };

type VmView = { id: string; name: string };

async function waitUntil<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`demo: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200)); // poll interval within the deadline
  }
}

const answering = async (tenant: TenantClient, vmIds: string[]) => {
  const s = await tenant.stats();
  return vmIds.every((id) => s.some((t) => t.vmId === id && t.connected && t.requestsDone > 20));
};

/**
 * `dhm demo --backend qemu --testbed`: the story on a testbed of 3 namespaced servers (300 Mbit/s NICs, TLS
 * migrations, a tenant network over VXLAN). The tenant holds one TCP connection per VM from the `tenant` namespace
 * through the move; one VM is provisioned on the clone mid-way (and reached from the tenant namespace), one is
 * deleted mid-move. With `json`, one JSON object on stdout (progress on stderr).
 */
export async function runTestbedDemo(opts: { json: boolean }): Promise<number> {
  const out = opts.json ? process.stderr : process.stdout;
  const say = (line: string) => out.write(`${line}\n`);
  const env = loadEnv();
  const logger = createLogger('dhm-demo', process.env.LOG_LEVEL ?? 'warn');
  const began = Date.now();
  say('Setting up QEMU and the guest image (scripts/qemu/setup.sh; cached after the first run)...');
  await runQemuSetup();
  fs.mkdirSync(env.DHM_HOME, { recursive: true });
  const stateDir = fs.mkdtempSync(path.join(env.DHM_HOME, 'demo-testbed-'));
  fs.chmodSync(stateDir, 0o755); // the postgres system user must reach its data folder
  let st: TestbedState | null = null;
  let system: EmbeddedSystem | null = null;
  let tenant: TenantClient | null = null;
  const report: Record<string, unknown> = {};
  let code = 1;
  try {
    say('Making the testbed: 3 servers, each its own network namespace (NIC shaped to 300 Mbit/s), a qemu agent inside...');
    // Every local disk gets 32 MiB of data at its end (the mirror's bulk); the guests write numbered blocks to every disk.
    st = await upTestbed(
      {
        name: `demo${randomBytes(2).toString('hex')}`,
        root: path.join(env.DHM_HOME, 'testbed'),
        servers: 3,
        nicBandwidthBps: 300e6,
        transport: 'tls',
        attached: true,
        diskFillMiB: 32,
      },
      logger,
    );
    say(`Starting the control plane in the root namespace (agents at ${st.servers.map((s) => s.agentUrl).join(', ')})...`);
    system = await startEmbeddedSystem({
      env,
      logger,
      fleet: st.fleet,
      stateDir,
      externalAgents: new Map(st.servers.map((s) => [s.id, s.agentUrl])),
      externalAgentTls: loadControlPlaneTls(st.controlPlaneDir, 'controlPlaneDir'),
    });
    tenant = startTenantClient(st);

    const operator = createApiClient(system.credentials.apiUrl, system.credentials.operatorToken);
    const key = () => ({ 'idempotency-key': randomUUID() });
    const t = await operator.request<{ id: string; token: string }>('POST', '/v1/tenants', { name: `demo-tenant-${Date.now()}` }, key());
    const tenantApi: ApiClient = createApiClient(system.credentials.apiUrl, t.token);
    const host = await tenantApi.request<{ id: string }>(
      'POST',
      '/v1/dedicated-hosts',
      { name: 'demo-host', zone: 'tb-zone', resourceClass: 'tb-small' },
      key(),
    );
    // `app` also has a network volume (the testbed's storage service): both ends attach it, only memory moves.
    const volume = await tenantApi.request<{ id: string }>('POST', '/v1/volumes', { name: 'app-data', zone: 'tb-zone', sizeGiB: 1 }, key());
    await createVolume(st.storage, logger, volume.id, 1024);
    const bodies = VMS.map((b) =>
      b.name === 'app'
        ? {
            ...b,
            disks: [
              { name: 'root', kind: 'local', sizeGiB: b.diskGiB },
              { name: 'data', kind: 'network', volumeId: volume.id },
            ],
          }
        : b,
    );
    const disksOf = new Map<string, Disk[]>();
    const vms: VmView[] = [];
    for (const body of bodies) {
      const v = await tenantApi.request<VmView>('POST', `/v1/dedicated-hosts/${host.id}/vms`, body, key());
      vms.push(v);
      disksOf.set(v.id, vmDisks(body as Parameters<typeof vmDisks>[0]));
    }
    for (const v of vms) await tenant.add(v.id, guestNic(v.id).ip);
    say(`Waiting for the ${vms.length} guests to boot and answer the tenant on their NICs...`);
    await waitUntil(
      'the guests to answer',
      () =>
        answering(
          tenant!,
          vms.map((v) => v.id),
        ),
      180_000,
    );
    const before = await operator.request<{ physicalServerId?: string }>('GET', `/v1/dedicated-hosts/${host.id}`);

    say(`Migrating ${host.id} off ${before.physicalServerId} over TCP with TLS while the tenant's connections stay open...`);
    const started = await operator.request<{ id: string }>(
      'POST',
      `/v1/dedicated-hosts/${host.id}/migrations`,
      { policy: { maxParallel: 1, maxDowntimeMs: 300 } },
      key(),
    );
    const midway = { provisioned: null as string | null, provisionedAnswered: false, deleted: null as string | null };
    const tenantWork = (async () => {
      await waitUntil('the first VM to move', async () => (await fetchMigration(operator, started.id)).vms.some((v) => v.state === 'moved'), 600_000);
      const st1 = await fetchMigration(operator, started.id);
      const pending = st1.vms.find((v) => v.state === 'pending');
      if (pending && !TERMINAL_PHASES.has(st1.phase)) {
        await tenant!.remove(pending.vmId); // the tenant stops using it, then deletes it
        await tenantApi.request('DELETE', `/v1/vms/${pending.vmId}`);
        midway.deleted = pending.vmId;
      }
      const v = await tenantApi.request<VmView>('POST', `/v1/dedicated-hosts/${host.id}/vms`, NEW_VM, key());
      midway.provisioned = v.id;
      await tenant!.add(v.id, guestNic(v.id).ip);
    })();
    tenantWork.catch(() => undefined); // awaited below
    const final = await watchMigration(operator, started.id, { out });
    await tenantWork;
    if (midway.provisioned) {
      midway.provisionedAnswered = await waitUntil('the new VM to answer the tenant', () => answering(tenant!, [midway.provisioned!]), 120_000);
    }
    const after = await operator.request<{ physicalServerId?: string }>('GET', `/v1/dedicated-hosts/${host.id}`);
    // Per moved VM: the local disks' bytes the source's mirror copied (the migration's figures: the source's agent job
    // is gone with its de-provisioned incarnation by now), and every disk checked on the target for every block the
    // guest reported written, in order, with correct checksums.
    const targetServer = st.servers.find((x) => x.id === after.physicalServerId);
    const disks = new Map<string, { diskBytesCopied: number | null; diskVerified: boolean | null }>();
    for (const v of final.vms) {
      if (v.state !== 'moved') continue;
      const verified = targetServer && disksOf.has(v.vmId) ? verifyVmDisks(targetServer, st.storage, v.vmId, disksOf.get(v.vmId)!).verified : null;
      disks.set(v.vmId, { diskBytesCopied: v.figures?.diskBytesCopied ?? null, diskVerified: verified });
    }
    const traffic = new Map((await tenant.stop()).map((x) => [x.vmId, x]));
    tenant = null;
    say('');
    say(summaryTable(final));

    const perVm = (vmId: string, extra: { name: string; state: string; downtimeMs: number | null; answeredFromTenant?: boolean }) => {
      const x: VmTraffic | undefined = traffic.get(vmId);
      return {
        vmId,
        ...extra,
        ...(disks.get(vmId) ?? { diskBytesCopied: null, diskVerified: null }),
        clientMaxStallMs: x?.clientMaxStallMs ?? null,
        requestsDone: x?.requestsDone ?? 0,
        requestsFailed: x?.requestsFailed ?? 0,
        reconnects: x?.reconnects ?? 0,
        counterContinued: x?.counterContinued ?? null,
        ...(x?.backwards.length ? { backwards: x.backwards } : {}),
        // Why the tenant's connection was lost, when it was (the first few, with the time).
        ...(x?.errors.length ? { connectionErrors: x.errors } : {}),
      };
    };
    const vmReports = final.vms.map((v) =>
      v.vmId === midway.provisioned
        ? perVm(v.vmId, { name: NEW_VM.name, state: v.state, downtimeMs: null, answeredFromTenant: midway.provisionedAnswered })
        : perVm(v.vmId, { name: vms.find((x) => x.id === v.vmId)?.name ?? v.vmId, state: v.state, downtimeMs: v.figures?.downtimeMs ?? null }),
    );
    Object.assign(report, {
      result: final.phase,
      tls: st.transport === 'tls',
      hostId: host.id,
      movedFrom: before.physicalServerId,
      movedTo: after.physicalServerId,
      nicBandwidthBps: st.nicBandwidthBps,
      deletedMidMove: midway.deleted,
      vms: vmReports,
    });
    const moved = vmReports.filter((v) => v.state === 'moved');
    code = final.phase === 'completed' && moved.every((v) => v.requestsFailed === 0 && v.reconnects === 0 && v.counterContinued && v.diskVerified) ? 0 : 1;
  } catch (err) {
    report.result = 'error';
    report.error = err instanceof Error ? err.message : String(err);
  } finally {
    await tenant?.stop().catch(() => undefined);
    await system?.stop();
    // A run that did not end well keeps what the agents and the storage service logged (the testbed goes).
    if (st && code !== 0) report.logs = keepLogs(st, path.join(env.DHM_HOME, 'demo-logs', new Date().toISOString().replace(/[:.]/g, '-')));
    if (st) await downTestbed(st.dir, logger);
    fs.rmSync(stateDir, { recursive: true, force: true });
    report.leftovers = st ? await testbedLeftovers(st) : [];
    if ((report.leftovers as string[]).length) code = 1;
  }
  report.seconds = Math.round((Date.now() - began) / 1000);
  if (opts.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else {
    say('');
    for (const v of report.vms as Array<Record<string, unknown>>) say(`${String(v.name).padEnd(8)} ${JSON.stringify(v)}`);
    say(`Result: ${String(report.result)}; TLS: ${String(report.tls)}; leftovers: ${JSON.stringify(report.leftovers)}; ${String(report.seconds)} s.`);
  }
  return code;
}

import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { loadEnv } from '../common/config';
import { createLogger } from '../common/logger';
import { moveMiB, TERMINAL_PHASES } from '../common/migration';
import { runQemuSetup } from '../compute/qemu/tools';
import { defaultFleetPath, loadFleetFile } from '../inventory/fleet-file';
import { startEmbeddedSystem, type EmbeddedSystem } from '../stack/embedded-system';
import { createApiClient, type ApiClient } from './api-client';
import { runTestbedDemo } from './demo-testbed';
import { fetchMigration, summaryTable, watchMigration } from './watch';

/** The demo host: mixed sizes and dirty rates, like a real tenant's (sizes in GiB, dirty rates in MiB/s). */
const DEMO_VMS = [
  // Local NVMe disks (diskGiB) holding `usedGiB` of data, written at `writes` MiB/s: the disk mirror's share of the move.
  { name: 'db-primary', vcpus: 8, memGiB: 32, dirty: 300, diskGiB: 200, usedGiB: 16, writes: 20 },
  { name: 'db-replica', vcpus: 8, memGiB: 32, dirty: 120, diskGiB: 200, usedGiB: 16, writes: 10 },
  { name: 'cache', vcpus: 4, memGiB: 16, dirty: 400, diskGiB: 40, usedGiB: 2, writes: 1 },
  { name: 'app-1', vcpus: 4, memGiB: 8, dirty: 40, diskGiB: 40, usedGiB: 4, writes: 2 },
  { name: 'app-2', vcpus: 4, memGiB: 8, dirty: 40, diskGiB: 40, usedGiB: 4, writes: 2 },
  { name: 'queue', vcpus: 2, memGiB: 4, dirty: 60, diskGiB: 100, usedGiB: 4, writes: 5 },
  { name: 'batch', vcpus: 4, memGiB: 12, dirty: 10, diskGiB: 100, usedGiB: 6, writes: 1 },
  { name: 'bastion', vcpus: 1, memGiB: 2, dirty: 0, diskGiB: 20, usedGiB: 1, writes: 0 },
];

/**
 * `--backend qemu`: every VM is a real QEMU guest under TCG, so fewer and smaller ones (one rewriting 16 MiB of its
 * memory at 24 MiB/s), on the small qemu fleet (`inventory/fleets/qemu.json`). Sizes in MiB.
 */
const QEMU_DEMO_VMS = [
  { name: 'db', vcpus: 1, memMiB: 256, dirty: 24, workingSetMiB: 16 },
  { name: 'app', vcpus: 1, memMiB: 192, dirty: 0, workingSetMiB: 0 },
  { name: 'bastion', vcpus: 1, memMiB: 128, dirty: 0, workingSetMiB: 0 },
];
const QEMU_CLASS = 'qemu-small';

export type DemoBackend = 'sim' | 'qemu';

type VmView = { id: string; name: string; dedicatedHostId: string };

/** Keeps a guest operation going against every VM wherever it runs; counts what succeeded and what failed. */
function guestTraffic(system: EmbeddedSystem, vmIds: () => string[]) {
  const stats = { ops: 0, failed: 0, lastError: '' };
  let stop = false;
  const running = new Map<string, Promise<void>>();
  const loop = async (vmId: string) => {
    const vm = await system.inventory.getVm(vmId);
    const server = (await system.inventory.getIncarnation(vm.incarnationId)).serverId;
    const agent = await system.agents.forServer(server);
    while (!stop) {
      try {
        await agent.guestOp(vmId, { kind: 'increment' });
        stats.ops++;
      } catch (err) {
        // The tenant deleted it: its traffic ends, that is not a failed operation.
        if ((err as { code?: string }).code === 'NOT_FOUND') return;
        stats.failed++;
        stats.lastError = String(err);
        return;
      }
    }
  };
  const timer = setInterval(() => {
    for (const id of vmIds()) if (!running.has(id)) running.set(id, loop(id));
  }, 200);
  return {
    stats,
    async stop() {
      stop = true;
      clearInterval(timer);
      await Promise.all(running.values());
    },
  };
}

async function waitUntil<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`demo: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Real guests take seconds to boot under TCG: wait until each has printed its first counter. */
async function guestsBooted(system: EmbeddedSystem, vmIds: string[]): Promise<void> {
  for (const vmId of vmIds) {
    await waitUntil(
      `VM ${vmId}'s guest to boot`,
      async () => {
        const vm = await system.inventory.getVm(vmId);
        const agent = await system.agents.forServer((await system.inventory.getIncarnation(vm.incarnationId)).serverId);
        return (await agent.guestOp(vmId, { kind: 'read' })).counter >= 1;
      },
      120_000,
    );
  }
}

export async function runDemo(opts: { timeScale: number; backend?: DemoBackend; out?: NodeJS.WriteStream }): Promise<number> {
  const out = opts.out ?? process.stdout;
  const say = (line: string) => out.write(`${line}\n`);
  const env = loadEnv();
  const logger = createLogger('dhm-demo', process.env.LOG_LEVEL ?? 'warn');
  const began = Date.now();
  const qemu = opts.backend === 'qemu';
  let system: EmbeddedSystem;
  let qemuStateDir: string | null = null;
  if (qemu) {
    say('Setting up QEMU and the guest image (scripts/qemu/setup.sh; cached after the first run)...');
    await runQemuSetup();
    const fleet = loadFleetFile(path.join(path.dirname(defaultFleetPath()), 'qemu.json'));
    // A throwaway stack: the qemu fleet and its demo host never end up in the inventory of DHM_HOME.
    fs.mkdirSync(env.DHM_HOME, { recursive: true });
    qemuStateDir = fs.mkdtempSync(path.join(env.DHM_HOME, 'demo-qemu-'));
    fs.chmodSync(qemuStateDir, 0o755); // the postgres system user must reach its data folder
    say(`Starting the embedded system (Postgres, Temporal dev server, ${fleet.servers.length} qemu servers, worker, scheduler, API)...`);
    try {
      system = await startEmbeddedSystem({ env, logger, fleet, stateDir: qemuStateDir, backendFilter: (s) => s.backend === 'qemu' });
    } catch (err) {
      fs.rmSync(qemuStateDir, { recursive: true, force: true });
      throw err;
    }
  } else {
    say('Starting the embedded system (Postgres, Temporal dev server, 16 sim servers, worker, scheduler, API)...');
    system = await startEmbeddedSystem({ env, logger, timeScale: opts.timeScale });
  }
  let traffic: ReturnType<typeof guestTraffic> | null = null;
  const operator = createApiClient(system.credentials.apiUrl, system.credentials.operatorToken);
  const key = () => ({ 'idempotency-key': randomUUID() });
  let made: { tenantApi: ApiClient; hostId: string; freeBefore: number } | null = null;
  let code = 1;
  try {
    const freeBefore = await availableServers(operator);
    const tenant = await operator.request<{ id: string; token: string }>('POST', '/v1/tenants', { name: `demo-tenant-${Date.now()}` }, key());
    const tenantApi: ApiClient = createApiClient(system.credentials.apiUrl, tenant.token);
    const host = await tenantApi.request<{ id: string }>(
      'POST',
      '/v1/dedicated-hosts',
      { name: 'demo-host', zone: 'zone-a', resourceClass: qemu ? QEMU_CLASS : 'std-64' },
      key(),
    );
    made = { tenantApi, hostId: host.id, freeBefore };
    const vmBodies = qemu
      ? QEMU_DEMO_VMS.map((v) => ({
          name: v.name,
          vcpus: v.vcpus,
          memoryMiB: v.memMiB,
          diskGiB: 2,
          workload: { dirtyRateMiBps: v.dirty, workingSetMiB: v.workingSetMiB },
        }))
      : DEMO_VMS.map((v) => ({
          name: v.name,
          vcpus: v.vcpus,
          memoryMiB: v.memGiB * 1024,
          diskGiB: v.diskGiB,
          workload: { dirtyRateMiBps: v.dirty, workingSetMiB: Math.min(v.memGiB * 1024, 2048), diskUsedGiB: v.usedGiB, diskWriteMiBps: v.writes },
        }));
    say(`Tenant ${tenant.id} has dedicated host ${host.id}; creating ${vmBodies.length} VMs...`);
    const vms: VmView[] = [];
    for (const body of vmBodies) {
      vms.push(await tenantApi.request<VmView>('POST', `/v1/dedicated-hosts/${host.id}/vms`, body, key()));
    }
    if (qemu) {
      say(`Waiting for the ${vms.length} guests to boot (QEMU under TCG)...`);
      await guestsBooted(
        system,
        vms.map((v) => v.id),
      );
    }
    const live = new Set(vms.map((v) => v.id));
    traffic = guestTraffic(system, () => [...live]);
    const before = await operator.request<{ physicalServerId?: string }>('GET', `/v1/dedicated-hosts/${host.id}`);

    say(`Migrating ${host.id} off ${before.physicalServerId} while guests keep working...`);
    // qemu: at most two guests move at once (each move is a second QEMU process on this machine).
    const started = await operator.request<{ id: string }>(
      'POST',
      `/v1/dedicated-hosts/${host.id}/migrations`,
      qemu ? { policy: { maxParallel: 2, autoConverge: true } } : {},
      key(),
    );
    const migStart = Date.now();

    // Mid-way, the tenant keeps working: two new VMs (they land on the clone) and one deletion.
    const tenantRequests = { provisioned: 0, deleted: 0 };
    const tenantWork = (async () => {
      await waitUntil('the first VM to move', async () => (await fetchMigration(operator, started.id)).vms.some((v) => v.state === 'moved') || null, 600_000);
      for (const name of ['web-new-1', 'web-new-2']) {
        const v = await tenantApi.request<VmView>(
          'POST',
          `/v1/dedicated-hosts/${host.id}/vms`,
          qemu ? { name, vcpus: 1, memoryMiB: 128, diskGiB: 2 } : { name, vcpus: 2, memoryMiB: 4096, diskGiB: 10 },
          key(),
        );
        tenantRequests.provisioned++;
        // A real guest only answers once it has booted (seconds under TCG): the traffic stays on the moving VMs.
        if (!qemu) live.add(v.id);
      }
      const st = await fetchMigration(operator, started.id);
      const pending = st.vms.find((v) => v.state === 'pending');
      if (pending && !TERMINAL_PHASES.has(st.phase)) {
        await tenantApi.request('DELETE', `/v1/vms/${pending.vmId}`);
        live.delete(pending.vmId);
        tenantRequests.deleted++;
      }
    })();
    tenantWork.catch(() => undefined); // awaited below; until then a refusal must not crash the process past its clean-up
    const final = await watchMigration(operator, started.id, { out });
    const wallS = (Date.now() - migStart) / 1000;
    await tenantWork;
    await traffic.stop();

    const after = await operator.request<{ id: string; physicalServerId?: string; state: string }>('GET', `/v1/dedicated-hosts/${host.id}`);
    // Memory and local-disk data: both cross the link at least once.
    const movedBytes = final.vms.filter((v) => v.figures && v.state === 'moved').reduce((a, v) => a + moveMiB(v) * 2 ** 20, 0);
    const link = 10e9 / 8;
    const lowerBoundS = movedBytes / link;
    const simulatedS = wallS * opts.timeScale;
    const downtimes = final.vms.filter((v) => v.figures).map((v) => v.figures!.downtimeMs);
    say('');
    say(summaryTable(final));
    say('');
    say(`Result: ${final.phase}. Host ${after.id} kept its id; it now runs on ${after.physicalServerId} (was ${before.physicalServerId}).`);
    if (qemu) say(`Total time: ${wallS.toFixed(1)} s of real time (real VMs: QEMU live migrations under TCG, no time scale)`);
    else
      say(
        `Total time: ${simulatedS.toFixed(0)} s simulated (${wallS.toFixed(1)} s at ${opts.timeScale}x), bandwidth lower bound Σ(M + D)/B = ${lowerBoundS.toFixed(0)} s → ${(simulatedS / lowerBoundS).toFixed(2)}x`,
      );
    say(
      `Downtime per VM${qemu ? ' (as QEMU measured it)' : ''}: max ${Math.max(...downtimes).toFixed(1)} ms, mean ${(downtimes.reduce((a, b) => a + b, 0) / downtimes.length).toFixed(1)} ms`,
    );
    say(
      `Guest operations during the migration: ${traffic.stats.ops} done, ${traffic.stats.failed} failed${traffic.stats.failed ? ` (${traffic.stats.lastError})` : ''}`,
    );
    const vmsWord = (n: number) => `${n} VM${n === 1 ? '' : 's'}`;
    say(`Tenant requests during the migration: ${vmsWord(tenantRequests.provisioned)} provisioned on the clone, ${vmsWord(tenantRequests.deleted)} deleted`);
    if (system.credentials.temporalUiUrl && !qemu) {
      say(
        `Web UI: ${system.credentials.temporalUiUrl}/namespaces/${system.temporal.namespace}/workflows/${encodeURIComponent(started.id)}  (run \`dhm up\` to browse it after the demo)`,
      );
    }
    code = final.phase === 'completed' && traffic.stats.failed === 0 ? 0 : 1;
  } finally {
    await traffic?.stop();
    // Whatever happened, the demo leaves the fleet as it found it, so it can run any number of times on one DHM_HOME.
    if (made) {
      try {
        await cleanUp(operator, made.tenantApi, made.hostId, made.freeBefore, say);
      } catch (err) {
        say(`Clean-up failed: ${(err as Error).message}`);
        code = 1;
      }
    }
    await system.stop();
    if (qemuStateDir) fs.rmSync(qemuStateDir, { recursive: true, force: true });
  }
  say(`Demo finished in ${((Date.now() - began) / 1000).toFixed(0)} s.`);
  return code;
}

async function availableServers(operator: ApiClient): Promise<number> {
  const { servers } = await operator.request<{ servers: Array<{ state: string }> }>('GET', '/v1/physical-servers?state=available');
  return servers.length;
}

/**
 * Undoes what the demo made, as a tenant would: a migration still running is cancelled (it rolls back), the VMs are
 * deleted, then the host; the scheduler de-provisions its server. Waits until as many servers are free as before.
 */
async function cleanUp(operator: ApiClient, tenantApi: ApiClient, hostId: string, freeBefore: number, say: (l: string) => void): Promise<void> {
  const host = await tenantApi.request<{ migration: { id: string } | null }>('GET', `/v1/dedicated-hosts/${hostId}`);
  if (host.migration) {
    await operator.request('POST', `/v1/migrations/${host.migration.id}/cancel`, {}, { 'idempotency-key': randomUUID() }).catch(() => undefined);
    await waitUntil(
      'the migration to end',
      async () => !(await tenantApi.request<{ migration: unknown }>('GET', `/v1/dedicated-hosts/${hostId}`)).migration,
      300_000,
    );
  }
  const { vms } = await tenantApi.request<{ vms: Array<{ id: string; state: string }> }>('GET', `/v1/dedicated-hosts/${hostId}/vms`);
  for (const vm of vms) await tenantApi.request('DELETE', `/v1/vms/${vm.id}`, undefined, { 'idempotency-key': randomUUID() });
  await tenantApi.request('DELETE', `/v1/dedicated-hosts/${hostId}`, undefined, { 'idempotency-key': randomUUID() });
  await waitUntil('the scheduler to return the servers to the pool', async () => (await availableServers(operator)) >= freeBefore, 120_000);
  say(`Cleaned up: ${vms.length} VMs and dedicated host ${hostId} deleted; ${freeBefore} servers free again.`);
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('run the whole story on the embedded system: a tenant host with 8 busy VMs migrates while the tenant works')
    .option('--time-scale <n>', 'simulated seconds per wall-clock second', (v) => Number(v), 4)
    .option('--backend <sim|qemu>', 'sim: modelled VMs; qemu: 3 small real QEMU guests on a 3-server qemu fleet', 'sim')
    .option('--testbed', 'with --backend qemu: on a testbed of namespaced servers (TCP+TLS migration, guest NICs, a tenant holding TCP connections)')
    .option('--json', 'with --testbed: print the result as one JSON object (progress on stderr)')
    .action(async (o: { timeScale: number; backend: string; testbed?: boolean; json?: boolean }) => {
      if (!Number.isFinite(o.timeScale) || o.timeScale <= 0) throw new Error('--time-scale must be a number > 0');
      if (o.backend !== 'sim' && o.backend !== 'qemu') throw new Error(`--backend must be sim or qemu (got ${o.backend})`);
      if (o.testbed && o.backend !== 'qemu') throw new Error('--testbed: needs --backend qemu');
      if (o.json && !o.testbed) throw new Error('--json: only with --testbed');
      if (o.testbed) process.exit(await runTestbedDemo({ json: Boolean(o.json) }));
      process.exit(await runDemo({ timeScale: o.timeScale, backend: o.backend }));
    });
}

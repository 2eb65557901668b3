import { randomUUID } from 'node:crypto';
import type { Command } from 'commander';
import { loadEnv } from '../../common/config';
import { createLogger } from '../../common/logger';
import { TERMINAL_PHASES } from '../../common/migration';
import { startEmbeddedSystem, type EmbeddedSystem } from '../embedded-system';
import { createApiClient, type ApiClient } from './api-client';
import { fetchMigration, summaryTable, watchMigration } from './watch';

/** The demo host: mixed sizes and dirty rates, like a real tenant's (sizes in GiB, dirty rates in MiB/s). */
const DEMO_VMS = [
  { name: 'db-primary', vcpus: 8, memGiB: 32, dirty: 300 },
  { name: 'db-replica', vcpus: 8, memGiB: 32, dirty: 120 },
  { name: 'cache', vcpus: 4, memGiB: 16, dirty: 400 },
  { name: 'app-1', vcpus: 4, memGiB: 8, dirty: 40 },
  { name: 'app-2', vcpus: 4, memGiB: 8, dirty: 40 },
  { name: 'queue', vcpus: 2, memGiB: 4, dirty: 60 },
  { name: 'batch', vcpus: 4, memGiB: 12, dirty: 10 },
  { name: 'bastion', vcpus: 1, memGiB: 2, dirty: 0 },
];

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

export async function runDemo(opts: { timeScale: number; out?: NodeJS.WriteStream }): Promise<number> {
  const out = opts.out ?? process.stdout;
  const say = (line: string) => out.write(`${line}\n`);
  const env = loadEnv();
  const logger = createLogger('dhm-demo', process.env.LOG_LEVEL ?? 'warn');
  const began = Date.now();
  say('Starting the embedded system (Postgres, Temporal dev server, 16 sim servers, worker, scheduler, API)...');
  const system = await startEmbeddedSystem({ env, logger, timeScale: opts.timeScale });
  let traffic: ReturnType<typeof guestTraffic> | null = null;
  try {
    const operator = createApiClient(system.credentials.apiUrl, system.credentials.operatorToken);
    const key = () => ({ 'idempotency-key': randomUUID() });
    const tenant = await operator.request<{ id: string; token: string }>('POST', '/v1/tenants', { name: `demo-tenant-${Date.now()}` }, key());
    const tenantApi: ApiClient = createApiClient(system.credentials.apiUrl, tenant.token);
    const host = await tenantApi.request<{ id: string }>('POST', '/v1/dedicated-hosts', { name: 'demo-host', zone: 'zone-a', resourceClass: 'std-64' }, key());
    say(`Tenant ${tenant.id} has dedicated host ${host.id}; creating ${DEMO_VMS.length} VMs...`);
    const vms: VmView[] = [];
    for (const v of DEMO_VMS) {
      vms.push(
        await tenantApi.request<VmView>(
          'POST',
          `/v1/dedicated-hosts/${host.id}/vms`,
          { name: v.name, vcpus: v.vcpus, memoryMiB: v.memGiB * 1024, diskGiB: 20, workload: { dirtyRateMiBps: v.dirty, workingSetMiB: Math.min(v.memGiB * 1024, 2048) } },
          key(),
        ),
      );
    }
    const live = new Set(vms.map((v) => v.id));
    traffic = guestTraffic(system, () => [...live]);
    const before = await operator.request<{ physicalServerId?: string }>('GET', `/v1/dedicated-hosts/${host.id}`);

    say(`Migrating ${host.id} off ${before.physicalServerId} while guests keep working...`);
    const started = await operator.request<{ id: string }>('POST', `/v1/dedicated-hosts/${host.id}/migrations`, { policy: { maxParallel: 3, autoConverge: true } }, key());
    const migStart = Date.now();

    // Mid-way, the tenant keeps working: two new VMs (they land on the clone) and one deletion.
    const tenantWork = (async () => {
      await waitUntil('the first VM to move', async () => (await fetchMigration(operator, started.id)).vms.some((v) => v.state === 'moved') || null, 600_000);
      for (const name of ['web-new-1', 'web-new-2']) {
        const v = await tenantApi.request<VmView>('POST', `/v1/dedicated-hosts/${host.id}/vms`, { name, vcpus: 2, memoryMiB: 4096, diskGiB: 10 }, key());
        live.add(v.id);
      }
      const st = await fetchMigration(operator, started.id);
      const pending = st.vms.find((v) => v.state === 'pending');
      if (pending && !TERMINAL_PHASES.has(st.phase)) {
        await tenantApi.request('DELETE', `/v1/vms/${pending.vmId}`);
        live.delete(pending.vmId);
      }
    })();
    const final = await watchMigration(operator, started.id, { out });
    await tenantWork;
    const wallS = (Date.now() - migStart) / 1000;
    await traffic.stop();

    const after = await operator.request<{ id: string; physicalServerId?: string; state: string }>('GET', `/v1/dedicated-hosts/${host.id}`);
    const movedBytes = final.vms.filter((v) => v.figures && v.state === 'moved').reduce((a, v) => a + v.spec.memoryMiB * 2 ** 20, 0);
    const link = 10e9 / 8;
    const lowerBoundS = movedBytes / link;
    const simulatedS = wallS * opts.timeScale;
    const downtimes = final.vms.filter((v) => v.figures).map((v) => v.figures!.downtimeMs);
    say('');
    say(summaryTable(final));
    say('');
    say(`Result: ${final.phase}. Host ${after.id} kept its id; it now runs on ${after.physicalServerId} (was ${before.physicalServerId}).`);
    say(`Total time: ${simulatedS.toFixed(0)} s simulated (${wallS.toFixed(1)} s at ${opts.timeScale}x), bandwidth lower bound ΣM/B = ${lowerBoundS.toFixed(0)} s → ${(simulatedS / lowerBoundS).toFixed(2)}x`);
    say(`Downtime per VM: max ${Math.max(...downtimes).toFixed(1)} ms, mean ${(downtimes.reduce((a, b) => a + b, 0) / downtimes.length).toFixed(1)} ms`);
    say(`Guest operations during the migration: ${traffic.stats.ops} done, ${traffic.stats.failed} failed${traffic.stats.failed ? ` (${traffic.stats.lastError})` : ''}`);
    say(`Tenant requests during the migration: 2 VMs provisioned on the clone, 1 VM deleted`);
    if (system.credentials.temporalUiUrl) {
      say(`Web UI: ${system.credentials.temporalUiUrl}/namespaces/${system.temporal.namespace}/workflows/${encodeURIComponent(started.id)}  (run \`dhm up\` to browse it after the demo)`);
    }
    say(`Demo finished in ${((Date.now() - began) / 1000).toFixed(0)} s.`);
    return final.phase === 'completed' && traffic.stats.failed === 0 ? 0 : 1;
  } finally {
    await traffic?.stop();
    await system.stop();
  }
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('run the whole story on the embedded system: a tenant host with 8 busy VMs migrates while the tenant works')
    .option('--time-scale <n>', 'simulated seconds per wall-clock second', (v) => Number(v), 4)
    .action(async (o: { timeScale: number }) => {
      if (!Number.isFinite(o.timeScale) || o.timeScale <= 0) throw new Error('--time-scale must be a number > 0');
      process.exit(await runDemo({ timeScale: o.timeScale }));
    });
}

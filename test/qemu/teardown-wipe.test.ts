import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createAgentClient } from '../../compute/agent-client';
import { startAgent, type RunningAgent } from '../../compute/agent-service';
import { runQemuSetup } from '../../compute/qemu/tools';
import { createInventory, type Inventory } from '../../inventory';
import { startScheduler, type RunningScheduler } from '../../workers/scheduler';
import { logger } from '../compute/helpers';
import { testAgentPki } from '../support/agent-pki';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually } from '../support/system';
import { agentUrls, migrateToClone, OP, tenantWithHost, zoneFleet } from '../inventory/helpers';

/**
 * A server whose teardown cannot destroy the tenant's data stays out of the pool: the real scheduler, a real qemu
 * agent with a VM whose local disk file cannot be wiped (a folder stands where the file was). The teardown fails
 * (WIPE_FAILED), the scheduler retries and the server stays `deprovisioning`: no host can be placed on it. Once the
 * file can be wiped, the next retry wipes it and only then is the server back in the pool.
 */
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-teardown-wipe-'));
const previousHome = process.env.DHM_HOME;
let db: TestDatabase;
let inv: Inventory;
let agent: RunningAgent | null = null;
let scheduler: RunningScheduler | null = null;

beforeAll(async () => {
  await runQemuSetup();
  process.env.DHM_HOME = path.join(root, 'home');
  db = await createTestDatabase();
  inv = createInventory(db.pool);
}, 600_000);
afterAll(async () => {
  await scheduler?.stop();
  await agent?.stop();
  await db.drop();
  if (previousHome === undefined) delete process.env.DHM_HOME;
  else process.env.DHM_HOME = previousHome;
  fs.rmSync(root, { recursive: true, force: true });
});

test('a failed disk wipe keeps the server out of the pool until a retry wipes it', async () => {
  const zone = `zw-${Math.random().toString(36).slice(2, 7)}`;
  const fleet = zoneFleet(zone, { std: 2 });
  await inv.seedFleet(fleet, agentUrls(fleet));
  const { host } = await tenantWithHost(inv, zone);
  const serverId = host.serverId!;
  const pki = await testAgentPki([serverId]);
  const storageDir = path.join(root, 'disks');
  agent = await startAgent({
    serverId,
    tls: pki.server(serverId),
    capacity: fleet.servers.find((s) => s.id === serverId)!.capacity,
    nicBandwidthBps: 1e9,
    backend: 'qemu',
    qemu: { stateDir: path.join(root, 'state'), migrationDir: path.join(root, 'migrate'), storageDir, maxVmMemoryMiB: 256, maxVmVcpus: 1 },
    logger,
  });
  // The server's registered agent is this one.
  await inv.seedFleet(fleet, new Map([...agentUrls(fleet), [serverId, agent.url]]));
  const client = createAgentClient({ baseUrl: agent.url, tls: pki.controlPlane, serverId });
  const inc = await inv.getIncarnation(host.currentIncarnationId);
  await client.prepareIncarnation({ incarnationId: inc.id, capacity: inc.capacity });
  await client.createVm({ vmId: 'vm-w', incarnationId: inc.id, spec: { vcpus: 1, memoryMiB: 128, diskGiB: 1 } });
  const [diskName] = fs.readdirSync(storageDir);
  const disk = path.join(storageDir, diskName!);

  // The host moves away (inventory only); the old incarnation is deleted and the server waits for the scheduler.
  const m = await migrateToClone(inv, host.id);
  const fin = await inv.finalizeMigration({ migrationId: m.migrationId, dedicatedHostId: host.id, afterState: 'available', actor: m.actor });
  expect((await inv.getServer(serverId)).state).toBe('deprovisioning');
  // The disk cannot be wiped: the file is moved aside and a folder with something in it takes its place.
  const aside = `${disk}.aside`;
  fs.renameSync(disk, aside);
  fs.mkdirSync(disk);
  fs.writeFileSync(path.join(disk, 'x'), 'x');

  scheduler = await startScheduler({
    inventory: inv,
    databaseUrl: db.url,
    schedulerId: 'sched-wipe',
    logger,
    agentTls: pki.controlPlane,
    sweepIntervalMs: 200,
    staleClaimMs: 300,
  });
  const job = await eventually(
    'the scheduler to have tried twice',
    async () => (await inv.listDeprovisionJobs({ state: 'pending' })).find((j) => j.id === fin.deprovisionJob.id && j.attempts >= 2),
    60_000,
    100,
  );
  expect(job.state).toBe('pending');
  expect((await inv.getServer(serverId)).state).toBe('deprovisioning');
  // Out of the pool: the zone has no other free server, so a new host is refused rather than placed on it.
  const other = await inv.createTenant(`other of ${zone}`);
  await expect(inv.createDedicatedHost({ tenantId: other.id, name: 'next', zone, resourceClass: 'std-64', ...OP })).rejects.toMatchObject({
    code: 'NO_MATCHING_SERVER',
  });
  // Its VM is gone (QEMU stopped), its incarnation too; only the data is left.
  expect(await client.getVm('vm-w')).toBeNull();
  expect(await client.getIncarnation(inc.id)).toBeNull();

  // Repaired: the file is back where it was; the next retry wipes it and the server returns to the pool.
  fs.rmSync(disk, { recursive: true });
  fs.renameSync(aside, disk);
  await eventually(
    'the job to be done',
    async () => (await inv.listDeprovisionJobs({ state: 'done' })).some((j) => j.id === fin.deprovisionJob.id),
    60_000,
    100,
  );
  expect(fs.existsSync(disk)).toBe(false);
  expect((await inv.getServer(serverId)).state).toBe('available');
  expect((await client.info()).localStorage).toMatchObject({ diskBytes: 0, wipedBytes: 2 ** 30 });
  const again = await inv.createDedicatedHost({ tenantId: other.id, name: 'next', zone, resourceClass: 'std-64', ...OP });
  expect(again.serverId).toBe(serverId);
}, 180_000);

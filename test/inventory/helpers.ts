import type { Pool } from 'pg';
import { createTestDatabase, type TestDatabase } from '../support/database';
import type { Fleet } from '../../common/fleet';
import type { Resources } from '../../common/resources';
import { InventoryError, type InventoryErrorCode } from '../../inventory/errors';
import { createInventory, type DeprovisionJob, type HostView, type Inventory, type Vm } from '../../inventory';

export const STD: Resources = { vcpus: 64, memoryMiB: 262_144, diskGiB: 2000 };
export const MEM: Resources = { vcpus: 32, memoryMiB: 524_288, diskGiB: 1000 };
export const OP = { actor: 'operator' };

/**
 * A fresh migrated database for one test file. pg's Pool.end() resolves before its sockets are closed, so the
 * DROP DATABASE … WITH (FORCE) in drop() can terminate a connection that is still closing; without a listener that
 * arrives as an unhandled 'error' event on the pool and fails the file after its tests passed.
 */
export async function openTestDatabase(): Promise<TestDatabase> {
  const db = await createTestDatabase();
  db.pool.on('error', () => undefined);
  return db;
}

let zones = 0;

/**
 * Seeds a zone of its own (servers named after it), so tests in one file never compete for servers.
 * `bigStd` servers are std-64 with more than the class's amounts.
 */
export async function freshZone(
  inv: Inventory,
  counts: { std?: number; mem?: number; bigStd?: number } = {},
): Promise<{ zone: string; std: string[]; mem: string[]; bigStd: string[] }> {
  const zone = `z${++zones}-${Math.random().toString(36).slice(2, 7)}`;
  const fleet = zoneFleet(zone, counts);
  await inv.seedFleet(fleet, agentUrls(fleet));
  const ids = (prefix: string) => fleet.servers.filter((s) => s.id.startsWith(`${zone}-${prefix}-`)).map((s) => s.id);
  return { zone, std: ids('std'), mem: ids('mem'), bigStd: ids('big') };
}

export function zoneFleet(zone: string, counts: { std?: number; mem?: number; bigStd?: number }): Fleet {
  const server = (kind: string, i: number, resourceClass: string, capacity: Resources) => ({
    id: `${zone}-${kind}-${String(i).padStart(2, '0')}`,
    zone,
    resourceClass,
    capacity,
    nicBandwidthBps: 1e10,
    agentPort: 0,
    backend: 'sim' as const,
  });
  return {
    zones: [zone],
    resourceClasses: { 'std-64': STD, 'mem-32': MEM },
    servers: [
      ...Array.from({ length: counts.std ?? 0 }, (_, i) => server('std', i + 1, 'std-64', STD)),
      ...Array.from({ length: counts.mem ?? 0 }, (_, i) => server('mem', i + 1, 'mem-32', MEM)),
      ...Array.from({ length: counts.bigStd ?? 0 }, (_, i) => server('big', i + 1, 'std-64', { vcpus: 96, memoryMiB: 393_216, diskGiB: 4000 })),
    ],
  };
}

export function agentUrls(fleet: Fleet): Map<string, string> {
  return new Map(fleet.servers.map((s, i) => [s.id, `http://127.0.0.1:${20000 + i}`]));
}

export async function tenantWithHost(inv: Inventory, zone: string, resourceClass = 'std-64'): Promise<{ tenantId: string; host: HostView }> {
  const tenant = await inv.createTenant(`tenant of ${zone}`);
  const host = await inv.createDedicatedHost({ tenantId: tenant.id, name: 'db-host', zone, resourceClass, actor: `tenant:${tenant.id}` });
  return { tenantId: tenant.id, host };
}

let vmSeq = 0;
export const vmId = () => `vm-${++vmSeq}-${Math.random().toString(36).slice(2, 8)}`;
let migSeq = 0;
export const migrationId = () => `mig-${++migSeq}-${Math.random().toString(36).slice(2, 8)}`;

export async function placeVms(inv: Inventory, host: HostView, specs: Resources[]): Promise<Vm[]> {
  const out: Vm[] = [];
  for (const [i, spec] of specs.entries())
    out.push(await inv.placeVm({ vmId: vmId(), dedicatedHostId: host.id, name: `vm-${i}`, spec, actor: `tenant:${host.tenantId}` }));
  return out;
}

/** Begin → reserve → clone → move every VM: a migration ready to finalize. */
export async function migrateToClone(inv: Inventory, hostId: string, mig = migrationId()) {
  const actor = `migration:${mig}`;
  const snap = await inv.beginMigration({ dedicatedHostId: hostId, migrationId: mig, actor });
  const target = await inv.reserveTargetServer({ migrationId: mig, dedicatedHostId: hostId, actor });
  const clone = await inv.createCloneIncarnation({ migrationId: mig, dedicatedHostId: hostId, serverId: target.id, actor });
  for (const vm of snap.vms) await inv.moveVmPlacement({ vmId: vm.id, migrationId: mig, toIncarnationId: clone.id, actor });
  return { migrationId: mig, actor, snap, target, clone };
}

/** Asserts an InventoryError with this code (and field, when given); returns it for more checks. */
export async function expectInventoryError(p: Promise<unknown>, code: InventoryErrorCode, field?: string): Promise<InventoryError> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  if (!(caught instanceof InventoryError)) throw new Error(`expected InventoryError ${code}, got ${caught === undefined ? 'success' : String(caught)}`);
  expect({ code: caught.code, field: caught.field }).toEqual({ code, field: field ?? caught.field });
  return caught;
}

/** Every row of every inventory table: compared before and after a refused call to show nothing changed. */
export async function dbState(pool: Pool): Promise<Record<string, unknown[]>> {
  const tables = [
    'zones',
    'resource_classes',
    'tenants',
    'physical_servers',
    'dedicated_hosts',
    'host_incarnations',
    'host_migrations',
    'vms',
    'volumes',
    'deprovision_outbox',
    'audit_events',
  ];
  const out: Record<string, unknown[]> = {};
  for (const t of tables) out[t] = (await pool.query(`SELECT * FROM ${t} ORDER BY 1`)).rows;
  return out;
}

export async function countEvents(pool: Pool): Promise<number> {
  return Number((await pool.query('SELECT count(*) AS n FROM audit_events')).rows[0].n);
}

/** One fresh database and inventory for the whole test file, dropped after it. */
export function inventoryPerFile(use: (db: TestDatabase, inv: Inventory) => void): void {
  let db: TestDatabase | undefined;
  beforeAll(async () => {
    db = await openTestDatabase();
    use(db, createInventory(db.pool));
  });
  afterAll(async () => {
    await db?.drop();
  });
}

/** Claims as a scheduler until this job shows up (other tests' jobs may be pending too); gives the others back. */
export async function claimJob(inv: Inventory, schedulerId: string, jobId: number, staleAfterMs = 60_000): Promise<DeprovisionJob | undefined> {
  const jobs = await inv.claimDeprovisionJobs({ schedulerId, limit: 1000, staleAfterMs });
  for (const j of jobs) if (j.id !== jobId) await inv.releaseDeprovisionJob({ jobId: j.id, schedulerId, error: 'not this test' });
  return jobs.find((j) => j.id === jobId);
}

import type { TestDatabase } from '../support/database';
import { createInventory, type HostView, type Inventory } from '../../inventory';
import { STD, freshZone, migrateToClone, placeVms, tenantWithHost, openTestDatabase } from './helpers';

/** The invariants hold in the database itself: raw SQL that would break one is refused. */

let db: TestDatabase;
let inv: Inventory;
let host: HostView;
let other: HostView;
let spare: string;
let vmIdOnHost: string;

beforeAll(async () => {
  db = await openTestDatabase();
  inv = createInventory(db.pool);
  const { zone, std } = await freshZone(inv, { std: 3 });
  ({ host } = await tenantWithHost(inv, zone));
  ({ host: other } = await tenantWithHost(inv, zone));
  spare = std[2]!;
  const [vm] = await placeVms(inv, host, [{ vcpus: 4, memoryMiB: 4096, diskGiB: 40 }]);
  vmIdOnHost = vm!.id;
});
afterAll(async () => {
  await db?.drop();
});

/** Runs statements in one transaction (deferred constraints fire at COMMIT); always rolls back what it can. */
async function sql(...statements: Array<[string, unknown[]?]>): Promise<void> {
  const c = await db.pool.connect();
  try {
    await c.query('BEGIN');
    for (const [text, params] of statements) await c.query(text, params ?? []);
    await c.query('COMMIT');
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    c.release();
  }
}

const incOf = (h: HostView) => h.currentIncarnationId;

test('a server backs at most one live incarnation', async () => {
  await expect(
    sql([
      `INSERT INTO host_incarnations (id, dedicated_host_id, server_id, role, vcpus, memory_mib, disk_gib)
       VALUES ('inc-dup', $1, $2, 'clone', $3, $4, $5)`,
      [other.id, host.serverId, STD.vcpus, STD.memoryMiB, STD.diskGiB],
    ]),
  ).rejects.toMatchObject({ code: '23505', constraint: 'host_incarnations_one_per_server' });
});

test('a host has one live primary', async () => {
  await expect(
    sql(
      [`UPDATE physical_servers SET state = 'allocated' WHERE id = $1`, [spare]],
      [
        `INSERT INTO host_incarnations (id, dedicated_host_id, server_id, role, vcpus, memory_mib, disk_gib)
         VALUES ('inc-second-primary', $1, $2, 'primary', $3, $4, $5)`,
        [host.id, spare, STD.vcpus, STD.memoryMiB, STD.diskGiB],
      ],
    ),
  ).rejects.toMatchObject({ code: '23505', constraint: 'host_incarnations_one_per_role' });
});

test('allocations never exceed capacity nor go below zero', async () => {
  await expect(sql([`UPDATE host_incarnations SET allocated_vcpus = vcpus + 1 WHERE id = $1`, [incOf(host)]])).rejects.toMatchObject({
    code: '23514',
    constraint: 'allocation_within_capacity',
  });
  await expect(sql([`UPDATE host_incarnations SET allocated_memory_mib = -1 WHERE id = $1`, [incOf(host)]])).rejects.toMatchObject({
    code: '23514',
    constraint: 'allocation_within_capacity',
  });
});

test('an allocation always equals the running VMs on it (no capacity leaks)', async () => {
  // A VM inserted without its allocation, an allocation changed without a VM, a VM deleted without freeing it.
  await expect(
    sql([
      `INSERT INTO vms (id, tenant_id, dedicated_host_id, incarnation_id, name, vcpus, memory_mib, disk_gib)
       VALUES ('vm-sneaky', $1, $2, $3, 'x', 1, 1, 1)`,
      [host.tenantId, host.id, incOf(host)],
    ]),
  ).rejects.toMatchObject({ code: '23514', constraint: 'incarnation_allocation_matches_vms' });
  await expect(sql([`UPDATE host_incarnations SET allocated_vcpus = 0 WHERE id = $1`, [incOf(host)]])).rejects.toMatchObject({
    code: '23514',
    constraint: 'incarnation_allocation_matches_vms',
  });
  await expect(sql([`UPDATE vms SET state = 'deleted', deleted_at = now() WHERE id = $1`, [vmIdOnHost]])).rejects.toMatchObject({
    code: '23514',
    constraint: 'incarnation_allocation_matches_vms',
  });
});

test('an incarnation has exactly its host’s amounts (claim 4)', async () => {
  await expect(
    sql(
      [`UPDATE physical_servers SET state = 'allocated' WHERE id = $1`, [spare]],
      [
        `INSERT INTO host_incarnations (id, dedicated_host_id, server_id, role, vcpus, memory_mib, disk_gib)
         VALUES ('inc-smaller', $1, $2, 'clone', 32, $3, $4)`,
        [host.id, spare, STD.memoryMiB, STD.diskGiB],
      ],
    ),
  ).rejects.toMatchObject({ code: '23503' });
});

test('a VM runs only on an incarnation of its own host, and belongs to the host’s tenant', async () => {
  await expect(sql([`UPDATE vms SET incarnation_id = $2 WHERE id = $1`, [vmIdOnHost, incOf(other)]])).rejects.toMatchObject({ code: '23503' });
  await expect(sql([`UPDATE vms SET tenant_id = $2 WHERE id = $1`, [vmIdOnHost, other.tenantId]])).rejects.toMatchObject({ code: '23503' });
});

test('a live incarnation sits on an allocated server; a server with a live incarnation cannot be freed', async () => {
  await expect(sql([`UPDATE physical_servers SET state = 'available' WHERE id = $1`, [host.serverId]])).rejects.toMatchObject({
    code: '23514',
    constraint: 'live_incarnation_on_allocated_server',
  });
  await expect(
    sql([
      `INSERT INTO host_incarnations (id, dedicated_host_id, server_id, role, vcpus, memory_mib, disk_gib)
       VALUES ('inc-on-free', $1, $2, 'clone', $3, $4, $5)`,
      [host.id, spare, STD.vcpus, STD.memoryMiB, STD.diskGiB],
    ]),
  ).rejects.toMatchObject({ code: '23514', constraint: 'live_incarnation_on_allocated_server' });
});

test('a host’s current incarnation is live, and a deleted incarnation holds nothing', async () => {
  await expect(sql([`UPDATE host_incarnations SET state = 'deleted', deleted_at = now() WHERE id = $1`, [incOf(other)]])).rejects.toMatchObject({
    code: '23514',
    constraint: 'current_incarnation_is_live',
  });
  await expect(sql([`UPDATE host_incarnations SET state = 'deleted', deleted_at = now() WHERE id = $1`, [incOf(host)]])).rejects.toMatchObject({
    code: '23514',
  });
});

test('states are enums, ids are unique and well-formed, migrating means a migration id', async () => {
  await expect(sql([`UPDATE physical_servers SET state = 'on-fire' WHERE id = $1`, [spare]])).rejects.toMatchObject({ code: '22P02' });
  await expect(sql([`UPDATE vms SET state = 'paused' WHERE id = $1`, [vmIdOnHost]])).rejects.toMatchObject({ code: '22P02' });
  await expect(sql([`INSERT INTO tenants (id, name, token_hash) VALUES ('Bad Id', 'x', repeat('a', 64))`])).rejects.toMatchObject({
    code: '23514',
  });
  await expect(sql([`INSERT INTO tenants (id, name, token_hash) VALUES ($1, 'x', repeat('b', 64))`, [host.tenantId]])).rejects.toMatchObject({
    code: '23505',
  });
  await expect(sql([`UPDATE dedicated_hosts SET state = 'migrating' WHERE id = $1`, [host.id]])).rejects.toMatchObject({ code: '23514' });
  await expect(sql([`UPDATE physical_servers SET state = 'reserved' WHERE id = $1`, [spare]])).rejects.toMatchObject({ code: '23514' });
});

test('one running migration per host, and the audit log is append-only', async () => {
  const m = await migrateToClone(inv, other.id);
  await expect(
    sql([
      `INSERT INTO host_migrations (id, dedicated_host_id, source_incarnation_id, source_server_id) VALUES ('mig-second', $1, $2, $3)`,
      [other.id, m.snap.source.incarnation.id, m.snap.source.server.id],
    ]),
  ).rejects.toMatchObject({ code: '23505', constraint: 'host_migrations_one_running' });
  const log = async () => (await db.pool.query('SELECT * FROM audit_events ORDER BY id')).rows;
  const before = await log();
  expect(before.length).toBeGreaterThan(0); // there is something to tamper with
  await expect(sql([`UPDATE audit_events SET actor = 'someone-else'`])).rejects.toMatchObject({ code: '42501' });
  await expect(sql([`DELETE FROM audit_events`])).rejects.toMatchObject({ code: '42501' });
  await expect(sql([`TRUNCATE audit_events`])).rejects.toMatchObject({ code: '42501' });
  expect(await log()).toEqual(before);
});

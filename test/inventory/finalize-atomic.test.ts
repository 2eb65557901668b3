import type { PoolClient } from 'pg';
import type { TestDatabase } from '../support/database';
import type { Inventory } from '../../inventory';
import { OP, dbState, expectInventoryError, freshZone, migrateToClone, migrationId, placeVms, tenantWithHost, inventoryPerFile } from './helpers';

let db: TestDatabase;
let inv: Inventory;

inventoryPerFile((d, i) => {
  db = d;
  inv = i;
});

/** Polls until a backend waits on a lock while running a statement that starts with `prefix`; returns its pid. */
async function waitForBlockedBackend(prefix: string): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const { rows } = await db.pool.query<{ pid: number }>(
      `SELECT pid FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event_type = 'Lock' AND state = 'active' AND query LIKE $1 || '%'`,
      [prefix],
    );
    if (rows[0]) return rows[0].pid;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`no backend blocked on "${prefix}"`);
}

/** Rows the finalize transaction had already changed when it blocked: seen through pg_locks of that backend. */
async function rowLocksHeldBy(pid: number): Promise<string[]> {
  const { rows } = await db.pool.query<{ relname: string }>(
    `SELECT DISTINCT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
      WHERE l.pid = $1 AND l.granted AND l.mode = 'RowExclusiveLock' ORDER BY 1`,
    [pid],
  );
  return rows.map((r) => r.relname);
}

describe('finalize is atomic: the swap and the delete happen together or not at all', () => {
  // Finalize runs its statements in this order: delete old incarnation, promote clone, swap the host, server states,
  // outbox row, migration record, audit events. A table lock held by the test stops it deterministically at the
  // outbox insert (after the swap) or at the first audit insert (after everything else).
  test.each([
    ['deprovision_outbox', 'INSERT INTO deprovision_outbox'],
    ['audit_events', 'INSERT INTO audit_events'],
  ])('connection killed while blocked on %s → nothing half-done; a retry then finalizes once', async (table, statement) => {
    const { zone, std } = await freshZone(inv, { std: 2 });
    const { host } = await tenantWithHost(inv, zone);
    await placeVms(inv, host, [
      { vcpus: 4, memoryMiB: 4096, diskGiB: 40 },
      { vcpus: 2, memoryMiB: 2048, diskGiB: 20 },
    ]);
    const m = await migrateToClone(inv, host.id);
    const before = await dbState(db.pool);

    const blocker: PoolClient = await db.pool.connect();
    let finalize: Promise<unknown> | undefined;
    try {
      await blocker.query('BEGIN');
      // SHARE conflicts with the ROW EXCLUSIVE an INSERT needs, and with nothing that comes before it in finalize.
      await blocker.query(`LOCK TABLE ${table} IN SHARE MODE`);
      finalize = inv.finalizeMigration({ migrationId: m.migrationId, dedicatedHostId: host.id, actor: m.actor });
      finalize.catch(() => undefined); // awaited below
      const pid = await waitForBlockedBackend(statement);
      // Mid-way: the swap's updates are done inside the open transaction.
      expect(await rowLocksHeldBy(pid)).toEqual(expect.arrayContaining(['dedicated_hosts', 'host_incarnations', 'physical_servers']));
      await db.pool.query('SELECT pg_terminate_backend($1)', [pid]);
      await expect(finalize).rejects.toThrow(/terminat/i);
    } finally {
      await blocker.query('ROLLBACK');
      blocker.release();
    }

    // Nothing half-done: every row as it was (host still on the old incarnation, no outbox row, no events).
    expect(await dbState(db.pool)).toEqual(before);
    const view = await inv.getHost(host.id);
    expect(view).toMatchObject({ state: 'migrating', currentIncarnationId: host.currentIncarnationId, serverId: std[0] });

    // The retry (what Temporal does with the activity) completes it exactly once.
    const fin = await inv.finalizeMigration({ migrationId: m.migrationId, dedicatedHostId: host.id, actor: m.actor });
    expect(fin.host).toMatchObject({ state: 'active', currentIncarnationId: m.clone.id });
    const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM deprovision_outbox WHERE migration_id = $1', [m.migrationId]);
    expect(rows[0].n).toBe(1);
    expect((await inv.getServer(std[0]!)).state).toBe('deprovisioning');
    // The pool still works after losing a connection mid-transaction.
    expect((await inv.listHosts()).map((h) => h.id)).toContain(host.id);
  });

  test('two finalizes racing: one swap, one outbox row, both answers equal', async () => {
    const { zone } = await freshZone(inv, { std: 2 });
    const { host } = await tenantWithHost(inv, zone);
    await placeVms(inv, host, [{ vcpus: 4, memoryMiB: 4096, diskGiB: 40 }]);
    const m = await migrateToClone(inv, host.id);
    const [a, b] = await Promise.all([
      inv.finalizeMigration({ migrationId: m.migrationId, dedicatedHostId: host.id, actor: m.actor }),
      inv.finalizeMigration({ migrationId: m.migrationId, dedicatedHostId: host.id, actor: m.actor }),
    ]);
    expect(b).toEqual(a);
    const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM audit_events WHERE migration_id = $1 AND action = 'host.migration_finalized'`, [
      m.migrationId,
    ]);
    expect(rows[0].n).toBe(1);
  });

  test('finalize and rollback racing: exactly one of them happens', async () => {
    const { zone } = await freshZone(inv, { std: 2 });
    const { host } = await tenantWithHost(inv, zone);
    const m = await migrateToClone(inv, host.id);
    const [fin, rb] = await Promise.allSettled([
      inv.finalizeMigration({ migrationId: m.migrationId, dedicatedHostId: host.id, actor: m.actor }),
      inv.rollbackMigration({ migrationId: m.migrationId, dedicatedHostId: host.id, actor: m.actor }),
    ]);
    expect([fin.status, rb.status].sort()).toEqual(['fulfilled', 'rejected']);
    const loser = (fin.status === 'rejected' ? fin : rb) as PromiseRejectedResult;
    expect(loser.reason.code).toBe('WRONG_STATE');
    const rec = await inv.getMigration(m.migrationId);
    expect(rec.state).toBe(fin.status === 'fulfilled' ? 'finalized' : 'rolled_back');
  });

  test('unknown ids and a migration of another host are refused, naming the field', async () => {
    const { zone } = await freshZone(inv, { std: 4 });
    const a = await tenantWithHost(inv, zone);
    const b = await tenantWithHost(inv, zone);
    const mig = migrationId();
    await inv.beginMigration({ dedicatedHostId: a.host.id, migrationId: mig, ...OP });
    await expectInventoryError(inv.finalizeMigration({ migrationId: mig, dedicatedHostId: 'dh-nope', ...OP }), 'NOT_FOUND', 'dedicatedHostId');
    await expectInventoryError(inv.finalizeMigration({ migrationId: mig, dedicatedHostId: b.host.id, ...OP }), 'NOT_FOUND', 'migrationId');
    await expectInventoryError(inv.finalizeMigration({ migrationId: mig, dedicatedHostId: a.host.id, ...OP }), 'WRONG_STATE', 'migrationId');
    await expectInventoryError(inv.rollbackMigration({ migrationId: 'mig-nope', dedicatedHostId: a.host.id, ...OP }), 'NOT_FOUND', 'migrationId');
    await expectInventoryError(
      inv.finalizeMigration({ migrationId: mig, dedicatedHostId: a.host.id, afterState: 'scrap' as never, ...OP }),
      'INVALID_INPUT',
      'afterState',
    );
    await expectInventoryError(inv.beginMigration({ dedicatedHostId: b.host.id, migrationId: mig, ...OP }), 'CONFLICT', 'migrationId');
  });
});

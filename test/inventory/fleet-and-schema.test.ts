import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from 'pg';
import type { TestDatabase } from '../support/database';
import type { Inventory } from '../../inventory';
import { defaultFleetPath, loadFleetFile, parseFleet } from '../../inventory/fleet-file';
import { loadMigrations, migrateDatabase } from '../../inventory/migrate';
import { InventoryError } from '../../inventory/errors';
import { STD, agentUrls, expectInventoryError, migrateToClone, tenantWithHost, zoneFleet, inventoryPerFile } from './helpers';

let db: TestDatabase;
let inv: Inventory;

inventoryPerFile((d, i) => {
  db = d;
  inv = i;
});

describe('schema migrations', () => {
  test('applied once, in order, recorded; running again (also concurrently) changes nothing', async () => {
    const files = loadMigrations();
    expect(files.map((m) => m.id)[0]).toBe('001_inventory');
    const { rows } = await db.pool.query('SELECT version, name, checksum FROM schema_migrations ORDER BY version');
    expect(rows).toEqual(files.map((m) => ({ version: m.version, name: m.name, checksum: m.checksum })));
    const again = await Promise.all([migrateDatabase(db.pool), migrateDatabase(db.pool), migrateDatabase(db.pool)]);
    for (const r of again) expect(r).toEqual({ applied: [], alreadyApplied: files.length });
  });

  test('processes starting at once on an empty database: the advisory lock lets exactly one apply each file', async () => {
    const name = `mig_race_${process.pid}_${Date.now()}`;
    await db.pool.query(`CREATE DATABASE ${name}`);
    const url = new URL(db.url);
    url.pathname = `/${name}`;
    const pools = Array.from({ length: 4 }, () => new Pool({ connectionString: url.toString(), max: 2 }));
    for (const p of pools) p.on('error', () => undefined); // see openTestDatabase
    try {
      const results = await Promise.all(pools.map((p) => migrateDatabase(p)));
      expect(results.flatMap((r) => r.applied)).toEqual(loadMigrations().map((m) => m.id));
    } finally {
      await Promise.all(pools.map((p) => p.end()));
      await db.pool.query(`DROP DATABASE ${name} WITH (FORCE)`);
    }
  });

  test('an applied migration that was edited afterwards is refused, not silently skipped', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-mig-'));
    try {
      for (const m of loadMigrations()) fs.writeFileSync(path.join(dir, `${m.id}.sql`), `${m.sql}\n-- edited\n`);
      await expect(migrateDatabase(db.pool, { dir })).rejects.toThrow(/001_inventory was edited after it was applied/);
      fs.writeFileSync(path.join(dir, 'bad-name.sql'), 'SELECT 1');
      expect(() => loadMigrations(dir)).toThrow(/NNN_name\.sql/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('fleet file', () => {
  test('the default fleet is valid: two zones, two classes, ≥ 6 servers of each class, 10 Gbit/s, sim', () => {
    const fleet = loadFleetFile(defaultFleetPath());
    expect(fleet.zones).toContain('zone-a');
    expect(fleet.resourceClasses).toEqual({
      'std-64': { vcpus: 64, memoryMiB: 262144, diskGiB: 2000 },
      'mem-32': { vcpus: 32, memoryMiB: 524288, diskGiB: 1000 },
    });
    for (const cls of ['std-64', 'mem-32'])
      expect(fleet.servers.filter((s) => s.zone === 'zone-a' && s.resourceClass === cls).length).toBeGreaterThanOrEqual(6);
    expect(fleet.servers.every((s) => s.nicBandwidthBps === 1e10 && s.backend === 'sim' && s.agentPort === 0)).toBe(true);
  });

  test('errors name the file and the field', () => {
    const good = JSON.parse(fs.readFileSync(defaultFleetPath(), 'utf8'));
    const bad = structuredClone(good);
    bad.servers[3].zone = 'zone-q';
    let err = catchError(() => parseFleet(JSON.stringify(bad), 'fleets/test.json'));
    expect(err).toMatchObject({ code: 'INVALID_INPUT', field: 'servers.3.zone' });
    expect(err.message).toMatch(/^fleets\/test\.json: servers\.3\.zone: unknown zone zone-q/);
    const small = structuredClone(good);
    small.servers[0].capacity.vcpus = 8;
    expect(catchError(() => parseFleet(JSON.stringify(small), 'f.json'))).toMatchObject({ field: 'servers.0.capacity' });
    const extra = structuredClone(good);
    extra.servers[1].gpus = 4;
    expect(catchError(() => parseFleet(JSON.stringify(extra), 'f.json')).message).toMatch(/servers\.1: .*gpus/);
    const neg = structuredClone(good);
    neg.servers[2].nicBandwidthBps = -1;
    expect(catchError(() => parseFleet(JSON.stringify(neg), 'f.json'))).toMatchObject({ field: 'servers.2.nicBandwidthBps' });
    expect(catchError(() => parseFleet('{ nope', 'broken.json')).message).toMatch(/^broken\.json: not valid JSON/);
    expect(catchError(() => loadFleetFile('/nonexistent/fleet.json')).message).toMatch(/^\/nonexistent\/fleet\.json: cannot read fleet file \(ENOENT\)/);
    err = catchError(() => parseFleet(JSON.stringify({ ...good, servers: [] }), 'f.json'));
    expect(err.field).toBe('servers');
  });
});

describe('seedFleet', () => {
  test('seeds the default fleet; seeding again is a no-op; a busy server keeps its state and hardware', async () => {
    const fleet = loadFleetFile();
    const urls = agentUrls(fleet);
    const first = await inv.seedFleet(fleet, urls);
    expect(first.added).toHaveLength(fleet.servers.length);
    const second = await inv.seedFleet(fleet, urls);
    expect(second).toEqual({ added: [], updated: [], unchanged: fleet.servers.map((s) => s.id) });

    const { host } = await tenantWithHost(inv, 'zone-a');
    const m = await migrateToClone(inv, host.id);
    const busy = [host.serverId, m.target.id];
    // New agent URLs (agents restarted on other ports) are taken; states are not reset.
    const moved = new Map([...urls].map(([id]) => [id, `http://127.0.0.1:3${id.length}00/${id}`]));
    const third = await inv.seedFleet(fleet, moved);
    expect(third.updated.sort()).toEqual(fleet.servers.map((s) => s.id).sort());
    expect((await inv.getServer(busy[0]!)).state).toBe('allocated');
    expect(await inv.getServer(busy[1]!)).toMatchObject({ state: 'allocated', reservedByMigration: m.migrationId, agentUrl: moved.get(busy[1]!) });
    // Changing the hardware of a server that runs a host is refused, naming the field; nothing changes.
    const changed = structuredClone(fleet);
    const i = changed.servers.findIndex((s) => s.id === busy[0]);
    changed.servers[i]!.capacity = { ...STD, diskGiB: 3000 };
    await expectInventoryError(inv.seedFleet(changed, moved), 'CONFLICT', `servers.${i}.capacity.diskGiB`);
    expect((await inv.getServer(busy[0]!)).capacity).toEqual(STD);
    // An idle server may change.
    const idle = fleet.servers.findIndex((s) => !busy.includes(s.id) && s.resourceClass === 'std-64');
    changed.servers[i]!.capacity = STD;
    changed.servers[idle]!.capacity = { ...STD, diskGiB: 4000 };
    expect((await inv.seedFleet(changed, moved)).updated).toEqual([changed.servers[idle]!.id]);
    const events = await inv.listEvents({});
    expect(
      events
        .filter((e) => e.action === 'server.added')
        .map((e) => e.entityId)
        .sort(),
    ).toEqual(fleet.servers.map((s) => s.id).sort());
    // Updated: every server once for its new agent URL (third seed), then the idle one for its disk.
    expect(
      events
        .filter((e) => e.action === 'server.updated')
        .map((e) => e.entityId)
        .sort(),
    ).toEqual([...fleet.servers.map((s) => s.id), changed.servers[idle]!.id].sort());
  });

  test('a server without an agent URL, or an invalid fleet, is refused naming the field', async () => {
    const fleet = zoneFleet('zone-nourl', { std: 1 });
    await expectInventoryError(inv.seedFleet(fleet, new Map()), 'INVALID_INPUT', `agentUrls.${fleet.servers[0]!.id}`);
    // A fixed agent port implies a loopback agent.
    fleet.servers[0]!.agentPort = 7801;
    await inv.seedFleet(fleet, new Map());
    expect((await inv.getServer(fleet.servers[0]!.id)).agentUrl).toBe('http://127.0.0.1:7801');
    await expectInventoryError(inv.seedFleet({ ...fleet, zones: [] }, new Map()), 'INVALID_INPUT', 'zones');
    await expectInventoryError(inv.seedFleet(fleet, new Map(), { actor: '' }), 'INVALID_INPUT');
  });
});

function catchError(f: () => unknown): InventoryError {
  try {
    f();
  } catch (err) {
    if (err instanceof InventoryError) return err;
    throw err;
  }
  throw new Error('expected an InventoryError');
}

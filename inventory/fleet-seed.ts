import type { PoolClient } from 'pg';
import type { Fleet } from '../common/fleet';
import { audit } from './audit';
import { InventoryError } from './errors';
import { isIdle, serverRow } from './servers';
import type { SeedResult } from './types';

/**
 * Seeding the fleet (zones, resource classes, servers) from a fleet file (fleet-file.ts reads one). Upserts; hardware
 * of a server in use is never changed, nor any server's state.
 */

/** Arbitrary constant; the same for every dhm process sharing a database. */
const SEED_LOCK_KEY = 7_262_010_002;

/** Each server's agent URL: given, or loopback for a fixed agent port. Fails naming `agentUrls.<id>` before any write. */
export function resolveAgentUrls(fleet: Fleet, agentUrls: ReadonlyMap<string, string> | Record<string, string>): string[] {
  const urls = agentUrls instanceof Map ? agentUrls : new Map(Object.entries(agentUrls as Record<string, string>));
  return fleet.servers.map((s) => {
    // A fixed agent port implies a loopback agent; with port 0 the caller must say where the agent listens.
    const url = urls.get(s.id) ?? (s.agentPort > 0 ? `http://127.0.0.1:${s.agentPort}` : undefined);
    if (!url || !/^https?:\/\/\S+$/.test(url))
      throw new InventoryError('INVALID_INPUT', `agentUrls.${s.id}: no agent URL for server ${s.id}`, `agentUrls.${s.id}`);
    return url;
  });
}

export async function seedFleet(c: PoolClient, fleet: Fleet, agentUrls: string[], actor: string): Promise<SeedResult> {
  // Two processes seeding at once would race on the same inserts; one at a time is plenty.
  await c.query('SELECT pg_advisory_xact_lock($1)', [SEED_LOCK_KEY]);
  for (const zone of fleet.zones) await c.query('INSERT INTO zones (id) VALUES ($1) ON CONFLICT DO NOTHING', [zone]);
  for (const [cls, r] of Object.entries(fleet.resourceClasses)) {
    // Hosts keep the amounts they were created with; a changed class only affects new hosts.
    await c.query(
      `INSERT INTO resource_classes (id, vcpus, memory_mib, disk_gib) VALUES ($1, $2, $3, $4)
       ON CONFLICT (id) DO UPDATE SET vcpus = EXCLUDED.vcpus, memory_mib = EXCLUDED.memory_mib,
         disk_gib = EXCLUDED.disk_gib, updated_at = now()
       WHERE (resource_classes.vcpus, resource_classes.memory_mib, resource_classes.disk_gib)
             IS DISTINCT FROM (EXCLUDED.vcpus, EXCLUDED.memory_mib, EXCLUDED.disk_gib)`,
      [cls, r.vcpus, r.memoryMiB, r.diskGiB],
    );
  }
  const result: SeedResult = { added: [], updated: [], unchanged: [] };
  for (const [i, s] of fleet.servers.entries()) {
    const url = agentUrls[i]!;
    const values = [s.id, s.zone, s.resourceClass, s.capacity.vcpus, s.capacity.memoryMiB, s.capacity.diskGiB, s.nicBandwidthBps, url, s.backend];
    const cur = await serverRow(c, s.id, true);
    if (!cur) {
      await c.query(
        `INSERT INTO physical_servers (id, zone, resource_class, vcpus, memory_mib, disk_gib, nic_bandwidth_bps, agent_url, backend)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
        values,
      );
      await audit(c, {
        actor,
        action: 'server.added',
        entityType: 'physical_server',
        entityId: s.id,
        details: {},
        physical: { zone: s.zone, resourceClass: s.resourceClass, capacity: s.capacity, nicBandwidthBps: s.nicBandwidthBps, agentUrl: url },
      });
      result.added.push(s.id);
      continue;
    }
    const changes: Record<string, { from: unknown; to: unknown }> = {};
    const note = (field: string, from: unknown, to: unknown) => {
      if (from !== to) changes[field] = { from, to };
    };
    note('zone', cur.zone, s.zone);
    note('resourceClass', cur.resource_class, s.resourceClass);
    note('capacity.vcpus', cur.vcpus, s.capacity.vcpus);
    note('capacity.memoryMiB', cur.memory_mib, s.capacity.memoryMiB);
    note('capacity.diskGiB', cur.disk_gib, s.capacity.diskGiB);
    const hardware = Object.keys(changes)[0];
    note('nicBandwidthBps', cur.nic_bandwidth_bps, s.nicBandwidthBps);
    note('agentUrl', cur.agent_url, url);
    note('backend', cur.backend, s.backend);
    if (Object.keys(changes).length === 0) {
      result.unchanged.push(s.id);
      continue;
    }
    // Re-seeding must never pull the ground from under a host: hardware of a busy server stays as it is.
    if (hardware && !isIdle(cur.state))
      throw new InventoryError(
        'CONFLICT',
        `servers.${i}.${hardware}: server ${s.id} is ${cur.state}; its zone, class and capacity cannot change while in use`,
        `servers.${i}.${hardware}`,
      );
    await c.query(
      `UPDATE physical_servers SET zone = $2, resource_class = $3, vcpus = $4, memory_mib = $5, disk_gib = $6,
              nic_bandwidth_bps = $7, agent_url = $8, backend = $9, updated_at = now() WHERE id = $1`,
      values,
    );
    await audit(c, { actor, action: 'server.updated', entityType: 'physical_server', entityId: s.id, physical: { changes } });
    result.updated.push(s.id);
  }
  return result;
}

import type { PoolClient } from 'pg';
import { shortfall, subtractResources, type Resources } from '../common/resources';
import { resOf } from './db';
import { InventoryError } from './errors';
import type { HostRow, IncarnationRow } from './hosts';
import type { ServerRow } from './servers';
import type { CapacityView, IncarnationCapacity } from './types';

/**
 * Capacity: what an incarnation has allocated and what is left, what a host can still take (the aggregate of claim 7),
 * and the SQL that changes allocations or picks a free server. Every allocation change of the inventory goes through
 * `allocationChangeSql`, every server pick through `pickFreeServer`; the database checks the result (an allocation
 * stays within capacity and equals the running VMs placed there, see inventory/migrations/001_inventory.sql).
 */

export const allocatedOf = (r: IncarnationRow): Resources => ({
  vcpus: r.allocated_vcpus,
  memoryMiB: r.allocated_memory_mib,
  diskGiB: r.allocated_disk_gib,
});

export const minResources = (a: Resources, b: Resources): Resources => ({
  vcpus: Math.min(a.vcpus, b.vcpus),
  memoryMiB: Math.min(a.memoryMiB, b.memoryMiB),
  diskGiB: Math.min(a.diskGiB, b.diskGiB),
});

export const sameResources = (a: Resources, b: Resources): boolean => a.vcpus === b.vcpus && a.memoryMiB === b.memoryMiB && a.diskGiB === b.diskGiB;

export function incarnationCapacity(r: IncarnationRow): IncarnationCapacity {
  const allocated = allocatedOf(r);
  return { incarnationId: r.id, serverId: r.server_id, allocated, available: subtractResources(resOf(r), allocated) };
}

/** See CapacityView for the definition of aggregateAvailable. */
export function capacityFrom(host: HostRow, live: IncarnationRow[]): CapacityView {
  const capacity = resOf(host);
  const primary = live.find((i) => i.id === host.current_incarnation_id);
  if (!primary) throw new Error(`inventory invariant broken: host ${host.id} has no live current incarnation`);
  const clone = live.find((i) => i.role === 'clone') ?? null;
  // Every running VM of the host must end up on the clone, so both incarnations' allocations count against it.
  let aggregateAvailable = subtractResources(capacity, allocatedOf(primary));
  if (clone) aggregateAvailable = subtractResources(aggregateAvailable, allocatedOf(clone));
  return {
    dedicatedHostId: host.id,
    capacity,
    primary: incarnationCapacity(primary),
    clone: clone ? incarnationCapacity(clone) : null,
    aggregateAvailable,
  };
}

/** INSUFFICIENT_CAPACITY naming the first resource that falls short, or null when `need` fits. */
export function insufficient(need: Resources, available: Resources, where: string): InventoryError | null {
  const k = shortfall(need, available);
  if (!k) return null;
  return new InventoryError('INSUFFICIENT_CAPACITY', `insufficient ${k} on ${where}: needs ${need[k]}, available ${Math.max(0, available[k])}`, k, {
    resource: k,
    needed: need[k],
    available: Math.max(0, available[k]),
  });
}

/* ---------------------------------------------------------------- SQL */

type Dimension = 'vcpus' | 'memory_mib' | 'disk_gib';
const DIMENSIONS: readonly Dimension[] = ['vcpus', 'memory_mib', 'disk_gib'];

/**
 * The SET list of an UPDATE of host_incarnations that adds `amount(dimension)` (an SQL expression, negative to free)
 * to each allocation column. The one place an allocation change is written: placing, freeing and moving VMs (also
 * the one-statement move in vms.ts) use it.
 */
export function allocationChangeSql(amount: (d: Dimension) => string): string {
  return DIMENSIONS.map((d) => `allocated_${d} = allocated_${d} + ${amount(d)}`).join(', ');
}

/** SQL: the incarnation row `inc` has room for `need` (a row with vcpus, memory_mib, disk_gib) on top of its allocation. */
export function roomForSql(inc: string, need: string): string {
  return DIMENSIONS.map((d) => `${inc}.allocated_${d} + ${need}.${d} <= ${inc}.${d}`).join(' AND ');
}

/** SQL: `+x` on the incarnation `toId`, `-x` on the other one (a move between two incarnations). */
export function towards(toId: string, x: string): string {
  return `CASE WHEN id = ${toId} THEN ${x} ELSE -${x} END`;
}

const byParam = (first: number) => (d: Dimension) => `$${first + DIMENSIONS.indexOf(d)}::int`;

/** Adds `delta` to an incarnation's allocation (negative amounts free). The caller holds the incarnation's row lock. */
export async function changeAllocation(c: PoolClient, incarnationId: string, delta: Resources): Promise<void> {
  await c.query(`UPDATE host_incarnations SET ${allocationChangeSql(byParam(2))} WHERE id = $1`, [incarnationId, delta.vcpus, delta.memoryMiB, delta.diskGiB]);
}

/** Moves `amount` of allocation from one incarnation to another in one statement. The caller holds both row locks. */
export async function shiftAllocation(c: PoolClient, fromId: string, toId: string, amount: Resources): Promise<void> {
  await c.query(`UPDATE host_incarnations SET ${allocationChangeSql((d) => towards('$2', byParam(3)(d)))} WHERE id IN ($1, $2)`, [
    fromId,
    toId,
    amount.vcpus,
    amount.memoryMiB,
    amount.diskGiB,
  ]);
}

export const negate = (r: Resources): Resources => ({ vcpus: -r.vcpus, memoryMiB: -r.memoryMiB, diskGiB: -r.diskGiB });

/**
 * An available server of the zone and class with at least `need`, locked, or undefined. Best fit: the smallest
 * matching server, so bigger ones stay free for when nothing else fits. SKIP LOCKED: concurrent pickers take
 * different servers instead of queueing on one.
 */
export async function pickFreeServer(
  c: PoolClient,
  q: { zone: string; resourceClass: string; need: Resources; notId?: string },
): Promise<ServerRow | undefined> {
  const { rows } = await c.query<ServerRow>(
    `SELECT * FROM physical_servers
      WHERE zone = $1 AND resource_class = $2 AND state = 'available' AND ($3::text IS NULL OR id <> $3)
        AND vcpus >= $4 AND memory_mib >= $5 AND disk_gib >= $6
      ORDER BY vcpus, memory_mib, disk_gib, id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED`,
    [q.zone, q.resourceClass, q.notId ?? null, q.need.vcpus, q.need.memoryMiB, q.need.diskGiB],
  );
  return rows[0];
}

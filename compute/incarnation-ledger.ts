import { addResources, fits, shortfall, subtractResources, ZERO, type Resources } from '../common/resources';
import type { IncarnationView } from './agent-api';
import { conflict, notFound } from './errors';

/** What holds capacity in an incarnation: a VM placed there, or room reserved for a VM migrating in. */
export type Holder = { kind: 'vm'; vmId: string } | { kind: 'incoming'; jobId: string };

const holderKey = (h: Holder) => (h.kind === 'vm' ? `vm:${h.vmId}` : `incoming:${h.jobId}`);

interface Incarnation {
  capacity: Resources;
  holders: Map<string, { holder: Holder; amount: Resources }>;
}

/**
 * The capacity bookkeeping of one server, independent of how VMs are run (any backend can use it): incarnations
 * carve the server's capacity, VMs and incoming reservations carve an incarnation's. Refusals name the field.
 */
export class IncarnationLedger {
  private readonly incarnations = new Map<string, Incarnation>();

  constructor(
    private readonly serverId: string,
    private readonly serverCapacity: Resources,
  ) {}

  ids(): string[] {
    return [...this.incarnations.keys()];
  }

  has(incarnationId: string): boolean {
    return this.incarnations.has(incarnationId);
  }

  /** Idempotent: the same id with the same capacity returns the existing incarnation. */
  prepare(incarnationId: string, capacity: Resources): IncarnationView {
    const existing = this.incarnations.get(incarnationId);
    if (existing) {
      if (shortfall(capacity, existing.capacity) || shortfall(existing.capacity, capacity))
        throw conflict('INCARNATION_CONFLICT', 'capacity', `incarnation ${incarnationId} already exists with another capacity`);
      return this.view(incarnationId)!;
    }
    let taken = ZERO;
    for (const inc of this.incarnations.values()) taken = addResources(taken, inc.capacity);
    const free = subtractResources(this.serverCapacity, taken);
    const short = shortfall(capacity, free);
    if (short)
      throw conflict(
        'INSUFFICIENT_CAPACITY',
        `capacity.${short}`,
        `server ${this.serverId} has ${free[short]} ${short} free, incarnation needs ${capacity[short]}`,
      );
    this.incarnations.set(incarnationId, { capacity, holders: new Map() });
    return this.view(incarnationId)!;
  }

  /** Removes the incarnation and returns what held capacity in it, for the caller to clean up. */
  remove(incarnationId: string): Holder[] {
    const inc = this.incarnations.get(incarnationId);
    if (!inc) return [];
    this.incarnations.delete(incarnationId);
    return [...inc.holders.values()].map((h) => h.holder);
  }

  /**
   * Takes `amount` from the incarnation's free capacity for `holder`. `fieldPrefix` names the caller's field
   * for the amount (e.g. `spec`) so a refusal reads `spec.memoryMiB`; `incarnationField` names the id's field.
   */
  allocate(incarnationId: string, holder: Holder, amount: Resources, fieldPrefix: string, incarnationField: string): void {
    const inc = this.incarnations.get(incarnationId);
    if (!inc) throw notFound(incarnationField, `no incarnation ${incarnationId} on server ${this.serverId}`);
    const free = this.freeOf(inc);
    if (!fits(amount, free)) {
      const short = shortfall(amount, free)!;
      throw conflict(
        'INSUFFICIENT_CAPACITY',
        `${fieldPrefix}.${short}`,
        `incarnation ${incarnationId} has ${free[short]} ${short} free, the VM needs ${amount[short]}`,
      );
    }
    inc.holders.set(holderKey(holder), { holder, amount });
  }

  release(incarnationId: string, holder: Holder): void {
    this.incarnations.get(incarnationId)?.holders.delete(holderKey(holder));
  }

  view(incarnationId: string): IncarnationView | null {
    const inc = this.incarnations.get(incarnationId);
    if (!inc) return null;
    const free = this.freeOf(inc);
    const vmIds: string[] = [];
    for (const { holder } of inc.holders.values()) if (holder.kind === 'vm') vmIds.push(holder.vmId);
    return {
      incarnationId,
      serverId: this.serverId,
      capacity: { ...inc.capacity },
      used: subtractResources(inc.capacity, free),
      free,
      vmIds,
    };
  }

  private freeOf(inc: Incarnation): Resources {
    let used = ZERO;
    for (const { amount } of inc.holders.values()) used = addResources(used, amount);
    return subtractResources(inc.capacity, used);
  }
}

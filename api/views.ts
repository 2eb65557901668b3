import { migrationWorkflowId, PHASES, type MigrationPhase } from '../common/migration';
import { MigrationPhaseKey } from '../common/search-attributes';
import { vmDisks } from '../common/vm-spec';
import { tenantEventView as tenantEventOf, TENANT_LOST_REASON, type AuditEvent, type HostView, type Vm, type Volume } from '../inventory';
import type { ApiContext, Principal } from './context';
import {
  operatorEventView,
  operatorHostView,
  operatorVmView,
  operatorVolumeView,
  tenantEventView,
  tenantHostView,
  tenantVmView,
  tenantVolumeView,
} from './schemas';

/**
 * Inventory objects as the API shows them. Tenants get the logical view only (claim 3): no physical server, no
 * incarnation, no physical audit details; every VM carries its logical host's id. Each view goes through its zod
 * schema, which drops whatever it does not declare.
 */

const DESCRIBE_TIMEOUT_MS = 3_000;

/** The phase of a host's running migration, from its MigrationPhase search attribute (no worker round trip). */
async function migrationPhase(ctx: ApiContext, hostId: string): Promise<MigrationPhase | 'unknown'> {
  const { client } = ctx.temporal;
  try {
    const d = await client.withDeadline(Date.now() + DESCRIBE_TIMEOUT_MS, () => client.workflow.getHandle(migrationWorkflowId(hostId)).describe());
    const phase = d.typedSearchAttributes.get(MigrationPhaseKey);
    return phase && (PHASES as readonly string[]).includes(phase) ? (phase as MigrationPhase) : 'unknown';
  } catch (err) {
    ctx.logger.warn({ err, dedicatedHostId: hostId }, 'could not read the migration phase of a migrating host');
    return 'unknown';
  }
}

export async function hostViews(ctx: ApiContext, p: Principal, hosts: HostView[]) {
  return Promise.all(
    hosts.map(async (h) => {
      const migration = h.state === 'migrating' ? { id: migrationWorkflowId(h.id), phase: await migrationPhase(ctx, h.id) } : null;
      const base = {
        id: h.id,
        name: h.name,
        zone: h.zone,
        resourceClass: h.resourceClass,
        state: h.state,
        capacity: h.capacity,
        available: h.available,
        vmCount: h.vmCount,
        migration,
        createdAt: h.createdAt,
      };
      if (p.kind === 'tenant') return tenantHostView.parse(base);
      return operatorHostView.parse({ ...base, tenantId: h.tenantId, physicalServerId: h.serverId });
    }),
  );
}

export async function hostView(ctx: ApiContext, p: Principal, host: HostView) {
  return (await hostViews(ctx, p, [host]))[0]!;
}

/** VMs of one host (or any VMs): operators get their placement, looked up once per host. */
export async function vmViews(ctx: ApiContext, p: Principal, vms: Vm[]) {
  const servers = new Map<string, string>();
  if (p.kind === 'operator') {
    const hostIds = [...new Set(vms.map((v) => v.dedicatedHostId))];
    for (const incs of await Promise.all(hostIds.map((id) => ctx.inventory.listIncarnations({ dedicatedHostId: id, includeDeleted: true }))))
      for (const inc of incs) servers.set(inc.id, inc.serverId);
  }
  return vms.map((v) => {
    const base = {
      id: v.id,
      name: v.name,
      dedicatedHostId: v.dedicatedHostId,
      ...v.spec,
      workload: v.workload,
      disks: vmDisks({ diskGiB: v.spec.diskGiB, disks: v.disks }),
      state: v.state,
      createdAt: v.createdAt,
      deletedAt: v.deletedAt,
      ...(v.state === 'lost' && v.lostReason ? { lostReason: v.lostReason } : {}),
    };
    // The recorded reason names servers: the tenant is told why without them.
    if (p.kind === 'tenant') return tenantVmView.parse(v.state === 'lost' ? { ...base, lostReason: TENANT_LOST_REASON } : base);
    return operatorVmView.parse({ ...base, tenantId: v.tenantId, incarnationId: v.incarnationId, physicalServerId: servers.get(v.incarnationId) ?? null });
  });
}

export async function vmView(ctx: ApiContext, p: Principal, vm: Vm) {
  return (await vmViews(ctx, p, [vm]))[0]!;
}

/** Audit events: tenants lose the events about physical things and the physical details of the rest. */
export function eventViews(p: Principal, events: AuditEvent[]) {
  if (p.kind === 'operator') return events.map((e) => operatorEventView.parse(e));
  return events.flatMap((e) => {
    const t = tenantEventOf(e);
    return t ? [tenantEventView.parse(t)] : [];
  });
}

/** A volume: operators also see whose it is. */
export function volumeView(p: Principal, v: Volume) {
  const base = {
    id: v.id,
    name: v.name,
    zone: v.zone,
    sizeGiB: v.sizeGiB,
    state: v.state,
    attachedVmId: v.attachedVmId,
    createdAt: v.createdAt,
    deletedAt: v.deletedAt,
  };
  return p.kind === 'tenant' ? tenantVolumeView.parse(base) : operatorVolumeView.parse({ ...base, tenantId: v.tenantId });
}

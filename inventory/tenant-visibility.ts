import type { AuditEvent } from './types';

/**
 * What a tenant may see of the inventory. Two rules, both here:
 * - a tenant sees only its own objects, and another tenant's object answers exactly like a missing one (NOT_FOUND),
 *   so that ids do not reveal what exists;
 * - a tenant sees its host and VMs as one logical host (claim 3): no servers, incarnations or teardown jobs.
 */

/** Whether a row is visible to the caller: any row to an operator (no tenantId), only its own to a tenant. */
export function visibleTo<R extends { tenant_id: string }>(row: R | undefined, tenantId: string | undefined): row is R {
  return row !== undefined && (tenantId === undefined || row.tenant_id === tenantId);
}

/**
 * Why a VM is lost, as its tenant is told: the recorded reason names the physical servers it was looked for on
 * (operators see it as recorded).
 */
export const TENANT_LOST_REASON = 'the VM no longer runs: the physical server under its dedicated host restarted or failed';

/** An audit event as the host's tenant may see it, or null when the event is about physical things only. */
export function tenantEventView(e: AuditEvent): Omit<AuditEvent, 'physical'> | null {
  if (e.entityType === 'physical_server' || e.entityType === 'host_incarnation' || e.entityType === 'deprovision_job') return null;
  const { physical: _physical, ...rest } = e;
  if (e.action === 'vm.lost' && 'reason' in e.details) return { ...rest, details: { ...e.details, reason: TENANT_LOST_REASON } };
  return rest;
}

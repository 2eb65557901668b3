import { log } from '@temporalio/workflow';
import type { VmMigrationStatus } from '../common/migration';
import { call, steps } from './activity-calls';
import type { MigrationState } from './migration-state';

// An agent restart in the sim (a server reboot with real VMs) takes its VMs with it; a move's failure does not say so
// and the inventory cannot know. Before the two points of no return (finalize, and the end of a rollback) the
// migration asks both agents where its VMs run, and a VM that runs nowhere is reported lost instead of being declared
// moved or rolled back.

/** Asks the agents about `vms` and marks the ones running nowhere lost; returns them. */
export async function findLost(state: MigrationState, vms: VmMigrationStatus[]): Promise<VmMigrationStatus[]> {
  if (vms.length === 0 || !state.source) return [];
  const at = await call(steps.locateVms, `where do ${vms.length} VM(s) run?`, { vmIds: vms.map((v) => v.vmId), source: state.source, target: state.target });
  const lost = vms.filter((v) => at[v.vmId] === 'none');
  for (const vm of lost) state.lost(vm);
  if (lost.length) log.error('VMs run on no server', { migrationId: state.migrationId, vmIds: lost.map((v) => v.vmId) });
  return lost;
}

/** Records the lost VMs in the inventory (state `lost`, allocation freed, audited with the reason). */
export async function recordLost(state: MigrationState): Promise<void> {
  const lost = state.vmsIn('lost');
  if (lost.length === 0) return;
  await call(steps.recordLostVms, `record ${lost.length} lost VM(s)`, {
    migrationId: state.migrationId,
    vmIds: lost.map((v) => v.vmId),
    reason: `migration ${state.migrationId} found it running ${state.nowhere()}`,
  });
}

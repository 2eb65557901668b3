import type { VmMigrationStatus } from '../common/migration';

type Order = 'largest-first' | 'smallest-first' | 'dirtiest-first' | 'as-listed';

/**
 * The order VMs leave the host. Sorting is stable and ties break on the VM id, so every replay picks the same VM.
 * Memory stands for transfer cost: pre-copy sends at least M bytes per VM.
 */
export function orderVms(vms: VmMigrationStatus[], order: Order): VmMigrationStatus[] {
  const byId = (a: VmMigrationStatus, b: VmMigrationStatus) => (a.vmId < b.vmId ? -1 : a.vmId > b.vmId ? 1 : 0);
  const copy = [...vms];
  switch (order) {
    case 'largest-first':
      return copy.sort((a, b) => b.spec.memoryMiB - a.spec.memoryMiB || byId(a, b));
    case 'smallest-first':
      return copy.sort((a, b) => a.spec.memoryMiB - b.spec.memoryMiB || byId(a, b));
    case 'dirtiest-first':
      return copy.sort((a, b) => (b.dirtyRateMiBps ?? 0) - (a.dirtyRateMiBps ?? 0) || b.spec.memoryMiB - a.spec.memoryMiB || byId(a, b));
    case 'as-listed':
      return copy;
  }
}

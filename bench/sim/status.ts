import type { VmMigrationStatus } from '../../common/migration';
import { MIB } from '../../compute/units';
import type { BenchVm } from './host-mix';

/**
 * The workflow's view of a benchmark VM: its size and where it is — and nothing of how it dirties memory. The
 * declared dirty rate is left out on purpose (it is the sim's truth, an oracle): dhm gets the dirty rate only as the
 * agents measure it, with noise, and the baselines not at all.
 */
export function statusOf(vm: BenchVm, state: VmMigrationStatus['state'] = 'pending'): VmMigrationStatus {
  return {
    vmId: vm.vmId,
    name: vm.vmId,
    spec: { vcpus: 1, memoryMiB: Math.round(vm.memoryBytes / MIB), diskGiB: 10 },
    ...(vm.diskBytes > 0 ? { diskMiB: Math.round(vm.diskBytes / MIB) } : {}),
    state,
    attempts: 0,
  };
}

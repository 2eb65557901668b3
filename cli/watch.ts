import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import { TERMINAL_PHASES, type MigrationStatus, type VmMigrationStatus } from '../common/migration';
import type { ApiClient } from './api-client';

export interface MoveProgressView {
  round: number;
  bytesSent: number;
  bytesRemaining: number;
  memoryBytes: number;
  throughputBps: number;
}

export type VmView = VmMigrationStatus & { progress?: MoveProgressView };
export type MigrationView = Omit<MigrationStatus, 'vms'> & { id: string; workflowStatus: string; vms: VmView[] };

const MIB = 2 ** 20;

/** How far one VM is, 0..1: done VMs are full, moving ones by what is left of their memory. */
function fraction(vm: VmView): number {
  if (vm.state === 'moved' || vm.state === 'provisioned-on-clone' || vm.state === 'returned') return 1;
  if ((vm.state === 'moving' || vm.state === 'moving-back') && vm.progress && vm.progress.memoryBytes > 0) {
    return Math.max(0, Math.min(0.99, 1 - vm.progress.bytesRemaining / vm.progress.memoryBytes));
  }
  return 0;
}

function counted(vm: VmView): boolean {
  return vm.state !== 'deleted' && vm.state !== 'provisioned-on-clone';
}

/** Progress of the whole host: memory that has crossed, over memory that must cross. */
export function hostFraction(st: MigrationView): number {
  let total = 0;
  let done = 0;
  for (const vm of st.vms) {
    if (!counted(vm)) continue;
    total += vm.spec.memoryMiB;
    done += vm.spec.memoryMiB * fraction(vm);
  }
  return total === 0 ? 1 : done / total;
}

export async function fetchMigration(api: ApiClient, id: string): Promise<MigrationView> {
  return api.request<MigrationView>('GET', `/v1/migrations/${encodeURIComponent(id)}`);
}

/**
 * Follows a migration until it ends: a live bar per VM and one for the host on a terminal, a line per change
 * otherwise (logs, CI). Returns the final migration object.
 */
export async function watchMigration(api: ApiClient, id: string, opts: { intervalMs?: number; out?: NodeJS.WriteStream } = {}): Promise<MigrationView> {
  const out = opts.out ?? process.stdout;
  const tty = Boolean(out.isTTY);
  const bars = tty
    ? new MultiBar({ clearOnComplete: false, hideCursor: true, format: ' {label} |{bar}| {percentage}% {info}', stream: out, fps: 5 }, Presets.shades_classic)
    : null;
  const hostBar: SingleBar | null = bars?.create(100, 0, { label: 'host'.padEnd(28), info: '' }) ?? null;
  const vmBars = new Map<string, SingleBar>();
  const lastState = new Map<string, string>();
  let lastPhase = '';
  for (;;) {
    const st = await fetchMigration(api, id);
    if (st.phase !== lastPhase) {
      if (!tty) out.write(`phase: ${st.phase}${st.lastError ? ` (${st.lastError})` : ''}\n`);
      lastPhase = st.phase;
    }
    for (const vm of st.vms) {
      const pct = Math.round(fraction(vm) * 100);
      const info = `${vm.state}${vm.progress ? ` round ${vm.progress.round}, ${(vm.progress.bytesSent / MIB).toFixed(0)} MiB sent` : ''}${vm.figures ? `, downtime ${vm.figures.downtimeMs.toFixed(0)} ms` : ''}`;
      if (bars) {
        let bar = vmBars.get(vm.vmId);
        if (!bar) {
          bar = bars.create(100, pct, { label: `${vm.name} (${vm.spec.memoryMiB} MiB)`.slice(0, 28).padEnd(28), info });
          vmBars.set(vm.vmId, bar);
        }
        bar.update(pct, { info });
      } else if (lastState.get(vm.vmId) !== vm.state) {
        out.write(`  ${vm.vmId} ${vm.name}: ${info}\n`);
      }
      lastState.set(vm.vmId, vm.state);
    }
    hostBar?.update(Math.round(hostFraction(st) * 100), { info: `${st.phase}` });
    if (TERMINAL_PHASES.has(st.phase)) {
      bars?.stop();
      return st;
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 250));
  }
}

/** The table printed when a migration ends: per VM, what it cost. */
export function summaryTable(st: MigrationView): string {
  const rows = [['VM', 'name', 'memory', 'state', 'rounds', 'sent', 'downtime']];
  for (const vm of st.vms) {
    rows.push([
      vm.vmId,
      vm.name,
      `${vm.spec.memoryMiB} MiB`,
      vm.state,
      vm.figures ? String(vm.figures.rounds) : '',
      vm.figures ? `${(vm.figures.bytesSent / MIB).toFixed(0)} MiB` : '',
      vm.figures ? `${vm.figures.downtimeMs.toFixed(1)} ms` : '',
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n');
}

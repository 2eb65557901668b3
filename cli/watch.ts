import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import { moveMiB, TERMINAL_PHASES, type MigrationStatus, type VmMigrationStatus } from '../common/migration';
import type { ApiClient } from './api-client';

export interface MoveProgressView {
  round: number;
  bytesSent: number;
  bytesRemaining: number;
  memoryBytes: number;
  throughputBps: number;
  memory?: { bytesTotal: number; bytesTransferred: number; bytesRemaining: number };
  disk?: { bytesTotal: number; bytesCopied: number; bytesRemaining: number } | null;
}

export type VmView = VmMigrationStatus & { progress?: MoveProgressView };
export type MigrationView = Omit<MigrationStatus, 'vms'> & { id: string; workflowStatus: string; vms: VmView[] };

const MIB = 2 ** 20;

/** How far one VM is, 0..1: done VMs are full, moving ones by what is left of their memory and local-disk data. */
function fraction(vm: VmView): number {
  if (vm.state === 'moved' || vm.state === 'provisioned-on-clone' || vm.state === 'returned') return 1;
  const p = vm.progress;
  if ((vm.state === 'moving' || vm.state === 'moving-back') && p && p.memoryBytes > 0) {
    const total = p.memoryBytes + (p.disk?.bytesTotal ?? 0);
    return Math.max(0, Math.min(0.99, 1 - p.bytesRemaining / total));
  }
  return 0;
}

/** A moving VM's two parts, for its bar: local disk copied of its data, and memory sent. */
export function partsInfo(p: MoveProgressView): string {
  const mem = p.memory
    ? `memory ${(p.memory.bytesTransferred / MIB).toFixed(0)}/${(p.memory.bytesTotal / MIB).toFixed(0)} MiB (${(p.memory.bytesRemaining / MIB).toFixed(0)} left)`
    : `${(p.bytesSent / MIB).toFixed(0)} MiB sent`;
  const disk = p.disk
    ? `disk ${(p.disk.bytesCopied / MIB).toFixed(0)}/${(p.disk.bytesTotal / MIB).toFixed(0)} MiB (${(p.disk.bytesRemaining / MIB).toFixed(0)} left), `
    : '';
  return `${disk}${mem}`;
}

function counted(vm: VmView): boolean {
  return vm.state !== 'deleted' && vm.state !== 'provisioned-on-clone';
}

/** Progress of the whole host: bytes (memory and local-disk data) that have crossed, over those that must cross. */
export function hostFraction(st: MigrationView): number {
  let total = 0;
  let done = 0;
  for (const vm of st.vms) {
    if (!counted(vm)) continue;
    total += moveMiB(vm);
    done += moveMiB(vm) * fraction(vm);
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
      const info = `${vm.state}${vm.progress ? ` round ${vm.progress.round}, ${partsInfo(vm.progress)}` : ''}${vm.figures?.diskBytesCopied !== undefined ? `, disk ${(vm.figures.diskBytesCopied / MIB).toFixed(0)} MiB copied` : ''}${vm.figures ? `, downtime ${vm.figures.downtimeMs.toFixed(0)} ms` : ''}`;
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

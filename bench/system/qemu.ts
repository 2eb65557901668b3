import * as fs from 'node:fs';
import * as path from 'node:path';
import type { WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { startMigration } from '../../client/migrations';
import type { Fleet } from '../../common/fleet';
import { createAgentClient } from '../../compute/agent-client';
import { statusQuery } from '../../workflows/messages';
import { autoSchedulePolicy } from '../../workflows/vm-order';
import type { BenchStack } from './stack';

/**
 * Benchmark 5: a real 3-VM host on the `qemu` backend (QEMU under TCG, guests that rewrite part of their memory),
 * migrated by the workflow between two qemu agents on this machine. Compares the migration's wall time with
 * Σ ram.total / the throughput QEMU measured, and reports QEMU's own downtime per VM. Runs only where the qemu
 * backend's tools are set up (scripts/qemu/setup.sh); otherwise it is skipped and says why.
 */
export interface QemuFigures {
  vms: Array<{ vmId: string; ramMiB: number; downtimeMs: number; totalTimeMs: number; mbps: number; bytesSent: number; rounds: number }>;
  /** The migration's moves: from its first move's start to its last move's end, wall ms. */
  wallMs: number;
  /** Σ ram.total / the throughput QEMU achieved over all moves (Σ bytes sent / Σ move time), ms. */
  boundMs: number;
  /** That throughput, Mbit/s. */
  measuredMbps: number;
  policy: Record<string, unknown>;
}

/** Whether this checkout has a qemu backend whose tools are in place; the reason when not. */
export async function qemuAvailability(): Promise<{ ok: true } | { ok: false; reason: string }> {
  const root = path.resolve(__dirname, '..', '..');
  if (!fs.existsSync(path.join(root, 'compute', 'qemu', 'tools.ts'))) return { ok: false, reason: 'no qemu backend' };
  try {
    // Loaded lazily, by a computed name: a checkout without the backend must still build and run benchmarks 1–4.
    const modulePath = '../../compute/qemu/tools';
    const tools = (await import(modulePath)) as { loadQemuTools(): unknown };
    tools.loadQemuTools();
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `no qemu backend here (${err instanceof Error ? err.message : String(err)})` };
  }
}

const ZONE = 'bench-qemu';
const CLASS = 'q';
const HOST = { vcpus: 4, memoryMiB: 1024, diskGiB: 50 };

function qemuFleet(): Fleet {
  return {
    zones: [ZONE],
    resourceClasses: { [CLASS]: HOST },
    servers: [1, 2].map((i) => ({
      id: `q-${i}`,
      zone: ZONE,
      resourceClass: CLASS,
      capacity: { vcpus: 8, memoryMiB: 4096, diskGiB: 100 },
      nicBandwidthBps: 10e9,
      agentPort: 0,
      backend: 'qemu' as const,
    })),
  };
}

export async function benchQemu(stack: BenchStack, log: (line: string) => void): Promise<QemuFigures> {
  await stack.addFleet(qemuFleet(), 1, { qemu: { migrationDir: path.join(stack.stateDir, 'qemu-migrate'), maxVmMemoryMiB: 512, maxVmVcpus: 2 } });
  // An idle guest and two that rewrite 16 and 32 MiB of their memory (a guest's dirtier may use at most 1/8 of its RAM).
  const vms = [{ memoryMiB: 128 }, { memoryMiB: 192, dirtyRateMiBps: 24, workingSetMiB: 16 }, { memoryMiB: 256, dirtyRateMiBps: 64, workingSetMiB: 32 }];
  const host = await stack.createHost({ zone: ZONE, resourceClass: CLASS, vms, concurrency: 1, agentTimeoutMs: 60_000 });
  // QEMU has no per-stream cap below the NIC here: dhm's rule gives one stream at a time (which also keeps this
  // 2-core machine to one destination QEMU booting at once).
  const policy = autoSchedulePolicy({ nicBandwidthBps: 10e9, streamCapFraction: 1 });
  const handle = (await startMigration(stack.client, stack.taskQueue, {
    dedicatedHostId: host.hostId,
    policy,
    requestedBy: 'bench',
  })) as WorkflowHandleWithFirstExecutionRunId;
  const result = await handle.result();
  if (result.phase !== 'completed') throw new Error(`the qemu host's migration ended ${result.phase}: ${result.lastError ?? ''}`);
  const st = await handle.query(statusQuery);
  const source = await stack.inventory.getServer(st.source!.serverId);
  const agent = createAgentClient({ baseUrl: source.agentUrl, tls: stack.agentTls, serverId: source.id, timeoutMs: 30_000 });
  const out: QemuFigures['vms'] = [];
  let firstStart = Infinity;
  let lastEnd = 0;
  for (const vm of st.vms) {
    const job = vm.jobId ? await agent.getMigration(vm.jobId) : null;
    if (!job || job.state !== 'completed') throw new Error(`no completed job for ${vm.vmId} on the source agent`);
    firstStart = Math.min(firstStart, Date.parse(job.startedAt));
    lastEnd = Math.max(lastEnd, Date.parse(job.finishedAt ?? job.startedAt));
    out.push({
      vmId: vm.vmId,
      ramMiB: job.memoryBytes / 2 ** 20,
      downtimeMs: job.downtimeMs ?? NaN,
      totalTimeMs: job.totalTimeMs ?? NaN,
      mbps: (job.throughputBps * 8) / 1e6,
      bytesSent: job.bytesSent,
      rounds: job.round + 1,
    });
  }
  const bytesPerSec = out.reduce((s, v) => s + v.bytesSent, 0) / (out.reduce((s, v) => s + v.totalTimeMs, 0) / 1000);
  const boundMs = (out.reduce((s, v) => s + v.ramMiB * 2 ** 20, 0) / bytesPerSec) * 1000;
  const figures: QemuFigures = { vms: out, wallMs: lastEnd - firstStart, boundMs, measuredMbps: (bytesPerSec * 8) / 1e6, policy };
  log(
    `  ${out.length} VMs moved in ${(figures.wallMs / 1000).toFixed(1)} s (Σ ram.total / the ${figures.measuredMbps.toFixed(0)} Mbit/s QEMU measured: ${(boundMs / 1000).toFixed(1)} s); QEMU downtime ${out.map((v) => `${v.downtimeMs.toFixed(0)} ms`).join(', ')}`,
  );
  return figures;
}

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createLogger } from '../common/logger';
import { createAgentClient, type AgentClient } from '../compute/agent-client';
import type { MigrationJob, VmSpec } from '../compute/agent-api';
import { loadControlPlaneTls } from '../compute/agent-tls';
import { measureDirtyRate } from '../compute/qemu/dirty-rate';
import { QmpClient } from '../compute/qemu/qmp';
import { runQemuSetup } from '../compute/qemu/tools';
import { run } from '../compute/testbed/net';
import { vmQemu } from '../compute/testbed/disk-check';
import { downTestbed, upTestbed, type TestbedState } from '../compute/testbed/testbed';

/**
 * Testbed benchmark: host evacuation with real QEMU between two namespaced servers over shaped NICs (htb, TLS).
 *
 * 1. multifd: one VM moved with 1 and with 4 channels, on the shaped link and (the NIC's htb raised to 4 Gbit/s) unshaped.
 * 2. Evacuation: the same VMs (128–384 MiB, each with a local disk and a known writer) moved off a server under each
 *    schedule, back and forth: sequential 1-at-a-time (Nova / Proxmox-like: Proxmox with auto-converge), 2 outbound
 *    (KubeVirt-like), and dhm-like: inputs measured here only (each VM's dirty rate with calc-dirty-rate, one stream's
 *    throughput S from step 1), ⌈B/S⌉ streams, largest first, auto-converge where the measured rate is above S/8.
 *    (The workflow's own scheduler lives on the perf-sim branch; this arm applies the same rule to measured inputs.)
 *    Every arm: downtime target 300 ms. The figure: makespan against Σ(bytes on the wire)/B.
 * 3. Calibration for the sim: switchover cost (downtime, setup time), one stream's throughput per channel, and the
 *    writers' dirtying curve (distinct MiB changed over windows of 250 ms – 2 s), into bench/calibration/<stamp>.json.
 *
 *   npm run bench:testbed-evacuation -- [--vms 4] [--nic 300] [--reps 1]
 * Writes bench/results/<stamp>-testbed-evacuation.{json,md} and bench/calibration/<stamp>.json, never overwriting.
 * Needs root (a testbed). About 6–9 minutes on a 2-core machine.
 */

const MIB = 2 ** 20;
const DOWNTIME_MS = 300;

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}

const MIX: Array<{ memoryMiB: number; dirtyRateMiBps: number; workingSetMiB: number }> = [
  { memoryMiB: 384, dirtyRateMiBps: 8, workingSetMiB: 32 },
  { memoryMiB: 256, dirtyRateMiBps: 4, workingSetMiB: 24 },
  { memoryMiB: 192, dirtyRateMiBps: 4, workingSetMiB: 16 },
  { memoryMiB: 128, dirtyRateMiBps: 2, workingSetMiB: 8 },
  { memoryMiB: 256, dirtyRateMiBps: 2, workingSetMiB: 16 },
  { memoryMiB: 512, dirtyRateMiBps: 8, workingSetMiB: 32 },
];

interface Vm {
  vmId: string;
  spec: VmSpec;
  /** Where it runs now (0 or 1). */
  at: number;
  measuredDirtyMiBps?: number;
}

interface Move {
  vmId: string;
  state: string;
  error?: string;
  wallMs: number;
  startMs: number;
  endMs: number;
  ramMs?: number;
  downtimeMs?: number;
  rounds: number;
  memorySentMiB: number;
  diskDataMiB: number;
  throughputMBps: number;
}

const allocated = (files: Iterable<string>) => [...files].reduce((s, f) => s + fs.statSync(f).blocks * 512, 0);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function setNic(st: TestbedState, bitsPerSec: number): Promise<void> {
  const rate = `${Math.round(bitsPerSec / 1e6)}mbit`;
  for (const s of st.servers)
    await run('tc', ['-n', s.namespace, 'class', 'change', 'dev', 'eth0', 'parent', '1:', 'classid', '1:10', 'htb', 'rate', rate, 'ceil', rate]);
}

async function main(): Promise<void> {
  const nVms = Math.min(MIX.length, Math.max(3, arg('vms', 4)));
  const nicBps = arg('nic', 300) * 1e6;
  const B = nicBps / 8;
  const logger = createLogger('bench-testbed-evacuation', 'warn');
  await runQemuSetup();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-bench-evac-'));
  const started = new Date();
  const st = await upTestbed(
    {
      name: `be${process.pid.toString(36).slice(-5)}`,
      root,
      servers: 2,
      nicBandwidthBps: nicBps,
      transport: 'tls',
      diskFillMiB: 16,
      capacity: { vcpus: 8, memoryMiB: 4096, diskGiB: 20 },
    },
    logger,
  );
  const log = (msg: string) => process.stdout.write(`[${((Date.now() - started.getTime()) / 1000).toFixed(0)} s] ${msg}\n`);
  try {
    const tls = loadControlPlaneTls(st.controlPlaneDir, 'controlPlaneDir');
    const agents: AgentClient[] = st.servers.map((s) => createAgentClient({ baseUrl: s.agentUrl, tls, serverId: s.id, timeoutMs: 30_000 }));
    const cap = { vcpus: 8, memoryMiB: 4096, diskGiB: 20 };
    const inc = ['inc-0', 'inc-1'];
    await agents[0]!.prepareIncarnation({ incarnationId: inc[0]!, capacity: cap });
    await agents[1]!.prepareIncarnation({ incarnationId: inc[1]!, capacity: cap });
    let seq = 0;

    async function move(vm: Vm, opts: { autoConverge: boolean; channels?: number }, t0: number): Promise<Move> {
      const from = vm.at;
      const to = 1 - from;
      const q = vmQemu(st.servers[from]!, vm.vmId)!;
      const diskData = allocated(q.files.values());
      const jobId = `evac-${++seq}-${vm.vmId}`;
      const t = Date.now();
      await agents[from]!.startMigration({
        jobId,
        vmId: vm.vmId,
        target: { agentUrl: st.servers[to]!.agentUrl, incarnationId: inc[to]! },
        maxDowntimeMs: DOWNTIME_MS,
        autoConverge: opts.autoConverge,
        ...(opts.channels && opts.channels > 1 ? { channels: opts.channels } : {}),
      });
      let j: MigrationJob | null = null;
      while (!j || j.state === 'running') j = await agents[from]!.getMigration(jobId, { waitMs: 1_000 });
      const end = Date.now();
      if (j.state === 'completed') vm.at = to;
      return {
        vmId: vm.vmId,
        state: j.state,
        ...(j.error ? { error: `${j.error.code}: ${j.error.message}` } : {}),
        wallMs: end - t,
        startMs: t - t0,
        endMs: end - t0,
        ...(j.totalTimeMs !== undefined ? { ramMs: j.totalTimeMs } : {}),
        ...(j.downtimeMs !== undefined ? { downtimeMs: j.downtimeMs } : {}),
        rounds: j.round + 1,
        memorySentMiB: Number((j.memory.bytesTransferred / MIB).toFixed(1)),
        diskDataMiB: Number((diskData / MIB).toFixed(1)),
        throughputMBps: Number((j.throughputBps / 1e6).toFixed(1)),
      };
    }

    /** Moves every VM off the server they are on, at most `k` at a time, in `order`. */
    async function evacuate(name: string, vms: Vm[], k: number, settings: (vm: Vm) => { autoConverge: boolean; channels?: number }) {
      const t0 = Date.now();
      const queue = [...vms];
      const moves: Move[] = [];
      await Promise.all(
        Array.from({ length: k }, async () => {
          for (let vm = queue.shift(); vm; vm = queue.shift()) moves.push(await move(vm, settings(vm), t0));
        }),
      );
      const makespanMs = Date.now() - t0;
      const bytes = moves.reduce((s, m) => s + (m.memorySentMiB + m.diskDataMiB) * MIB, 0);
      const boundMs = (bytes / B) * 1000;
      log(
        `${name}: makespan ${makespanMs} ms, Σbytes/B ${Math.round(boundMs)} ms (× ${(makespanMs / boundMs).toFixed(2)}), ${moves.filter((m) => m.state !== 'completed').length} failed`,
      );
      return {
        schedule: name,
        concurrency: k,
        makespanMs,
        bytesMiB: Number((bytes / MIB).toFixed(1)),
        boundMs: Math.round(boundMs),
        ratio: Number((makespanMs / boundMs).toFixed(3)),
        moves,
      };
    }

    // ---- the VMs ------------------------------------------------------------------------------------------------
    const vms: Vm[] = MIX.slice(0, nVms).map((m, i) => ({
      vmId: `evac-vm-${i}`,
      spec: { vcpus: 1, memoryMiB: m.memoryMiB, diskGiB: 1, workload: { dirtyRateMiBps: m.dirtyRateMiBps, workingSetMiB: m.workingSetMiB } },
      at: 0,
    }));
    for (const vm of vms) await agents[0]!.createVm({ vmId: vm.vmId, incarnationId: inc[0]!, spec: vm.spec });
    const bootDeadline = Date.now() + 240_000;
    for (const vm of vms) {
      for (;;) {
        const c = await agents[0]!.guestOp(vm.vmId, { kind: 'read' }).catch(() => ({ counter: 0 }));
        if (c.counter >= 4) break;
        if (Date.now() > bootDeadline) throw new Error(`${vm.vmId} did not boot within 240 s`);
        await sleep(500); // poll interval within the deadline
      }
    }
    log(`${vms.length} VMs booted`);

    // ---- calibration: the writers' dirtying curve (calc-dirty-rate over windows), the dhm arm's measured input ---
    const dirtyCurve: Array<{ vmId: string; declaredMiBps: number; workingSetMiB: number; windowsMs: Record<string, number> }> = [];
    for (const vm of vms) {
      const qmp = await QmpClient.connect({ socketPath: vmQemu(st.servers[0]!, vm.vmId)!.inspectSocket!, connectTimeoutMs: 5_000 });
      const windowsMs: Record<string, number> = {};
      try {
        for (const w of [250, 500, 1000, 2000]) windowsMs[String(w)] = Number(((await measureDirtyRate(qmp, w)).dirtyRateBps / MIB).toFixed(2));
        vm.measuredDirtyMiBps = (await measureDirtyRate(qmp, 3_000)).dirtyRateBps / MIB;
      } finally {
        qmp.close();
      }
      dirtyCurve.push({ vmId: vm.vmId, declaredMiBps: vm.spec.workload!.dirtyRateMiBps, workingSetMiB: vm.spec.workload!.workingSetMiB, windowsMs });
    }
    log(`dirty rates measured: ${vms.map((v) => `${v.vmId} ${v.measuredDirtyMiBps!.toFixed(1)} MiB/s`).join(', ')}`);

    // ---- 1. multifd 1 vs 4, shaped and unshaped (the largest VM, back and forth) --------------------------------
    const probe = vms[0]!;
    const multifd: Array<{ nicMbps: number; channels: number; move: Move }> = [];
    for (const nic of [nicBps, 4e9]) {
      await setNic(st, nic);
      for (const channels of [1, 4, 1, 4]) {
        const m = await move(probe, { autoConverge: true, channels }, Date.now());
        multifd.push({ nicMbps: nic / 1e6, channels, move: m });
        log(`multifd ${channels} @ ${nic / 1e6} Mbit/s: ${m.state} ${m.ramMs} ms RAM, ${m.memorySentMiB} MiB, ${m.throughputMBps} MB/s`);
      }
    }
    await setNic(st, nicBps);
    const single = multifd.filter((x) => x.nicMbps === nicBps / 1e6 && x.channels === 1 && x.move.state === 'completed');
    // One stream's throughput S as measured: the RAM stream's average (QEMU's bytes over its total time) on the shaped NIC.
    const S = single.length ? single.reduce((s, x) => s + (x.move.memorySentMiB * MIB) / (x.move.ramMs! / 1000), 0) / single.length : B;
    log(`one stream measured at ${(S / 1e6).toFixed(1)} MB/s on a ${nicBps / 1e6} Mbit/s NIC (B = ${(B / 1e6).toFixed(1)} MB/s)`);

    // ---- 2. evacuation under each schedule ------------------------------------------------------------------------
    const reps = Math.max(1, arg('reps', 1));
    const arms: Array<{ name: string; k: number; order: (v: Vm[]) => Vm[]; settings: (vm: Vm) => { autoConverge: boolean; channels?: number } }> = [
      { name: 'sequential (Nova-like)', k: 1, order: (v) => v, settings: () => ({ autoConverge: false }) },
      { name: 'sequential + auto-converge (Proxmox-like)', k: 1, order: (v) => v, settings: () => ({ autoConverge: true }) },
      { name: '2 outbound (KubeVirt-like)', k: 2, order: (v) => v, settings: () => ({ autoConverge: false }) },
      {
        name: 'dhm-like (measured: ⌈B/S⌉ streams, largest first, AC above S/8)',
        k: Math.max(1, Math.ceil(B / S - 0.05)),
        order: (v) => [...v].sort((x, y) => y.spec.memoryMiB - x.spec.memoryMiB),
        settings: (vm) => ({ autoConverge: (vm.measuredDirtyMiBps ?? 0) * MIB > S / 8 }),
      },
      {
        // As perf-sim's workflow runs the qemu path: ⌈B/S⌉ streams, each with ⌈B/S⌉ multifd channels.
        name: 'dhm-like + multifd ⌈B/S⌉ channels',
        k: Math.max(1, Math.ceil(B / S - 0.05)),
        order: (v) => [...v].sort((x, y) => y.spec.memoryMiB - x.spec.memoryMiB),
        settings: (vm) => ({ autoConverge: (vm.measuredDirtyMiBps ?? 0) * MIB > S / 8, channels: Math.max(1, Math.ceil(B / S - 0.05)) }),
      },
    ];
    const evacuations = [];
    for (let r = 0; r < reps; r++)
      for (const arm of arms) {
        // Every VM is on one server before each arm (a failed move leaves a VM behind: bring it over first).
        for (const v of vms.filter((x) => x.at !== vms[0]!.at)) await move(v, { autoConverge: true }, Date.now());
        evacuations.push({ rep: r, ...(await evacuate(arm.name, arm.order(vms), arm.k, arm.settings)) });
      }

    // ---- results ----------------------------------------------------------------------------------------------
    const allMoves = [...multifd.map((x) => x.move), ...evacuations.flatMap((e) => e.moves)].filter((m) => m.state === 'completed');
    const calibration = {
      at: started.toISOString(),
      source: 'bench/testbed-evacuation.ts (real QEMU 10.0.2 under TCG between namespaced servers, TLS, htb-shaped NICs)',
      nicBytesPerSec: B,
      streamBytesPerSec: {
        channels1: Math.round(S),
        perChannelSamples: multifd.map((x) => ({
          nicMbps: x.nicMbps,
          channels: x.channels,
          bytesPerSec: x.move.ramMs ? Math.round((x.move.memorySentMiB * MIB) / (x.move.ramMs / 1000)) : null,
        })),
      },
      switchover: {
        downtimeMs: allMoves.map((m) => m.downtimeMs ?? 0),
        medianDowntimeMs: median(allMoves.map((m) => m.downtimeMs ?? 0)),
        note: "downtime as QEMU reports it (stop to resume on the target), at downtime-limit 300 ms; the wall time of a move minus QEMU total-time is the mirror and the agents' set-up",
        setupOverheadMs: median(allMoves.map((m) => m.wallMs - (m.ramMs ?? 0))),
      },
      dirtying: { method: 'calc-dirty-rate page sampling, distinct MiB/s changed over each window', writers: dirtyCurve },
      memorySentOverRam: allMoves.map((m) => Number((m.memorySentMiB / vms.find((v) => v.vmId === m.vmId)!.spec.memoryMiB).toFixed(3))),
    };
    const result = {
      benchmark: 'testbed host evacuation: real QEMU between namespaced servers over shaped NICs',
      at: started.toISOString(),
      machine: { cpus: os.cpus().length, loadavg: os.loadavg().map((l) => Number(l.toFixed(1))) },
      nicBandwidthBps: nicBps,
      downtimeTargetMs: DOWNTIME_MS,
      vms: vms.map((v) => ({
        vmId: v.vmId,
        memoryMiB: v.spec.memoryMiB,
        diskGiB: 1,
        diskFillMiB: 16,
        writer: v.spec.workload,
        measuredDirtyMiBps: Number(v.measuredDirtyMiBps!.toFixed(2)),
      })),
      multifd,
      evacuations,
      calibration,
    };
    const stamp = started.toISOString().slice(0, 19).replace(/:/g, '-');
    const out = path.resolve(__dirname, 'results', `${stamp}-testbed-evacuation`);
    const calFile = path.resolve(__dirname, 'calibration', `${stamp}.json`);
    fs.mkdirSync(path.dirname(calFile), { recursive: true });
    for (const f of [`${out}.json`, `${out}.md`, calFile]) if (fs.existsSync(f)) throw new Error(`${f} exists: results are never overwritten`);
    fs.writeFileSync(`${out}.json`, `${JSON.stringify(result, null, 2)}\n`);
    fs.writeFileSync(calFile, `${JSON.stringify(calibration, null, 2)}\n`);
    const md = [
      `# ${result.benchmark}`,
      '',
      `${result.at}; ${vms.length} VMs (${vms.map((v) => `${v.spec.memoryMiB} MiB + 1 GiB disk, writer ${v.spec.workload!.dirtyRateMiBps} MiB/s over ${v.spec.workload!.workingSetMiB} MiB`).join('; ')}); B = ${nicBps / 1e6} Mbit/s (htb), TLS, downtime target ${DOWNTIME_MS} ms; load ${result.machine.loadavg.join(' ')} on ${result.machine.cpus} cores.`,
      '',
      '## multifd (the largest VM, one move each)',
      '',
      '| NIC Mbit/s | channels | state | QEMU RAM ms | memory sent MiB | downtime ms | avg MB/s |',
      '|---|---|---|---|---|---|---|',
      ...multifd.map(
        (x) =>
          `| ${x.nicMbps} | ${x.channels} | ${x.move.state} | ${x.move.ramMs ?? '—'} | ${x.move.memorySentMiB} | ${x.move.downtimeMs ?? '—'} | ${x.move.throughputMBps} |`,
      ),
      '',
      `One stream measured at ${(S / 1e6).toFixed(1)} MB/s on B = ${(B / 1e6).toFixed(1)} MB/s.`,
      '',
      '## Evacuation',
      '',
      '| schedule | streams | makespan ms | Σ bytes MiB (RAM sent + disk data) | Σ bytes / B ms | makespan / bound | failed | max downtime ms |',
      '|---|---|---|---|---|---|---|---|',
      ...evacuations.map(
        (e) =>
          `| ${e.schedule} | ${e.concurrency} | ${e.makespanMs} | ${e.bytesMiB} | ${e.boundMs} | ${e.ratio} | ${e.moves.filter((m) => m.state !== 'completed').length} | ${Math.max(...e.moves.map((m) => m.downtimeMs ?? 0))} |`,
      ),
      '',
      "Bound: Σ(bytes on the wire)/B with each arm's own bytes (a schedule that makes VMs resend more memory pays for it in its bytes, not in the bound).",
      '',
      `Calibration constants: bench/calibration/${stamp}.json.`,
      '',
    ].join('\n');
    fs.writeFileSync(`${out}.md`, md);
    process.stdout.write(`${md}\nwritten ${out}.json, .md and ${calFile}\n`);
  } finally {
    await downTestbed(st.dir, logger);
    fs.rmSync(root, { recursive: true, force: true });
  }
}

function median(xs: number[]): number {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { loadEnv } from '../common/config';
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
import { startEmbeddedSystem, type EmbeddedSystem } from '../stack/embedded-system';
import { createApiClient } from '../cli/api-client';
import { statusQuery } from '../workflows/messages';
import { runDhmArm } from './testbed-dhm-arm';
import { allocated, evacuationOf, moveOf, type Move } from './testbed-figures';

/**
 * Testbed benchmark: host evacuation with real QEMU between two namespaced servers over shaped NICs (htb, TLS).
 *
 * 1. multifd: one VM moved with 1 and with 4 channels, on the shaped link and (the NIC's htb raised to 4 Gbit/s) unshaped.
 * 2. Evacuation: the same VMs (128–384 MiB, each with a local disk and a known writer; a tenant's dedicated host made
 *    through dhm's API) moved off their server under each schedule. The baselines are driven by this bench through the
 *    agents (their rules: bench/sim/schedules.ts): sequential 1-at-a-time (Nova-like; Proxmox-like with auto-converge),
 *    2 outbound (KubeVirt-like). dhm is dhm itself: the migration workflow (Temporal dev server, dhm's worker, the
 *    scheduler, the API) run on the host with its default policy (`policyForHost`: measured link and dirty rates,
 *    workflows/scheduler.ts deciding streams, channels and auto-converge), exactly as an operator's request runs it.
 *    Every arm: downtime target 300 ms. The figure: makespan (first move's start to last move's end, from the agents'
 *    jobs) against Σ(bytes on the wire)/B; for dhm also the whole workflow (clone, measurements, de-provisioning).
 * 3. Calibration for the sim: switchover cost (downtime, setup time), the per-move fixed cost phase by phase (the
 *    agents' `phasesMs`) and what dhm's workflow adds between moves, one stream's throughput per channel, and the
 *    writers' dirtying curve (distinct MiB changed over windows of 250 ms – 2 s), into bench/calibration/<stamp>.json.
 *
 *   npm run bench:testbed-evacuation -- [--vms 4] [--nic 300] [--reps 1] [--dry]
 * Writes bench/results/<stamp>-testbed-evacuation.{json,md} and bench/calibration/<stamp>.json, never overwriting.
 * Needs root (a testbed), starts Postgres and a Temporal dev server. About 9–11 minutes on a 2-core machine.
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
  /** `--dry`: only the dhm arm, nothing written (a check of the set-up). */
  const dry = process.argv.includes('--dry');
  const env = loadEnv();
  const logger = createLogger('bench-testbed-evacuation', 'warn');
  await runQemuSetup();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-bench-evac-'));
  fs.mkdirSync(env.DHM_HOME, { recursive: true });
  const stateDir = fs.mkdtempSync(path.join(env.DHM_HOME, 'bench-evac-'));
  fs.chmodSync(stateDir, 0o755); // the postgres system user must reach its data folder
  const started = new Date();
  const loadavgAtStart = os.loadavg().map((l) => Number(l.toFixed(1)));
  const cap = { vcpus: 8, memoryMiB: 4096, diskGiB: 20 };
  const st = await upTestbed(
    { name: `be${process.pid.toString(36).slice(-5)}`, root, servers: 2, nicBandwidthBps: nicBps, transport: 'tls', diskFillMiB: 16, capacity: cap },
    logger,
  );
  const log = (msg: string) => process.stdout.write(`[${((Date.now() - started.getTime()) / 1000).toFixed(0)} s] ${msg}\n`);
  let system: EmbeddedSystem | null = null;
  try {
    const tls = loadControlPlaneTls(st.controlPlaneDir, 'controlPlaneDir');
    const agents: AgentClient[] = st.servers.map((s) => createAgentClient({ baseUrl: s.agentUrl, tls, serverId: s.id, timeoutMs: 30_000 }));
    // dhm's control plane in the root namespace, over the testbed's agents: what the dhm arm runs.
    system = await startEmbeddedSystem({
      env,
      logger,
      fleet: st.fleet,
      stateDir,
      apiPort: 0,
      externalAgents: new Map(st.servers.map((s) => [s.id, s.agentUrl])),
      externalAgentTls: tls,
    });
    const operator = createApiClient(system.credentials.apiUrl, system.credentials.operatorToken);
    const key = () => ({ 'idempotency-key': randomUUID() });
    const tenant = await operator.request<{ id: string; token: string }>('POST', '/v1/tenants', { name: `bench-evac-${Date.now()}` }, key());
    const tenantApi = createApiClient(system.credentials.apiUrl, tenant.token);
    const host = await tenantApi.request<{ id: string }>(
      'POST',
      '/v1/dedicated-hosts',
      { name: 'bench-host', zone: 'tb-zone', resourceClass: 'tb-small' },
      key(),
    );
    log('control plane up; tenant and dedicated host made through the API');

    // ---- the VMs: the tenant's, made through the API (the workflow moves them; the baselines move the same ones) ----
    const vms: Vm[] = [];
    for (const [i, m] of MIX.slice(0, nVms).entries()) {
      const spec: VmSpec = { vcpus: 1, memoryMiB: m.memoryMiB, diskGiB: 1, workload: { dirtyRateMiBps: m.dirtyRateMiBps, workingSetMiB: m.workingSetMiB } };
      const v = await tenantApi.request<{ id: string }>('POST', `/v1/dedicated-hosts/${host.id}/vms`, { name: `evac-${i}`, ...spec }, key());
      vms.push({ vmId: v.id, spec, at: -1 });
    }
    const hostRow = await system.inventory.getHost(host.id);
    const home = st.servers.findIndex((s) => s.id === hostRow.serverId);
    if (home < 0) throw new Error(`the host landed on ${hostRow.serverId}, not a testbed server`);
    for (const vm of vms) vm.at = home;
    // The baselines move the VMs between the host's incarnation and one of the bench's on the other server.
    const inc: string[] = [];
    inc[home] = hostRow.currentIncarnationId;
    inc[1 - home] = 'bench-baselines';
    await agents[1 - home]!.prepareIncarnation({ incarnationId: inc[1 - home]!, capacity: cap });
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
      const acceptMs = Date.now() - t;
      let j: MigrationJob | null = null;
      while (!j || j.state === 'running') j = await agents[from]!.getMigration(jobId, { waitMs: 1_000 });
      const end = Date.now();
      if (j.state === 'completed') vm.at = to;
      return { ...moveOf(j, diskData, t - t0, end - t0), wallMs: end - t, acceptMs };
    }

    /** Moves every VM off the server they are on, at most `k` at a time, in `order`. */
    async function evacuate(name: string, vmsInOrder: Vm[], k: number, settings: (vm: Vm) => { autoConverge: boolean; channels?: number }) {
      const t0 = Date.now();
      const queue = [...vmsInOrder];
      const moves: Move[] = [];
      await Promise.all(
        Array.from({ length: k }, async () => {
          for (let vm = queue.shift(); vm; vm = queue.shift()) moves.push(await move(vm, settings(vm), t0));
        }),
      );
      const makespanMs = Date.now() - t0;
      const e = evacuationOf(name, k, makespanMs, moves, B);
      log(`${name}: makespan ${makespanMs} ms, Σbytes/B ${e.boundMs} ms (× ${e.ratio}), ${e.failed} failed`);
      return e;
    }

    const bootDeadline = Date.now() + 240_000;
    for (const vm of vms) {
      for (;;) {
        const c = await agents[home]!.guestOp(vm.vmId, { kind: 'read' }).catch(() => ({ counter: 0 }));
        if (c.counter >= 4) break;
        if (Date.now() > bootDeadline) throw new Error(`${vm.vmId} did not boot within 240 s`);
        await sleep(500); // poll interval within the deadline
      }
    }
    log(`${vms.length} VMs booted on ${st.servers[home]!.id}`);

    // ---- calibration: the writers' dirtying curve (calc-dirty-rate over windows) ----------------------------------
    const dirtyCurve: Array<{ vmId: string; declaredMiBps: number; workingSetMiB: number; windowsMs: Record<string, number> }> = [];
    for (const vm of vms) {
      const qmp = await QmpClient.connect({ socketPath: vmQemu(st.servers[home]!, vm.vmId)!.inspectSocket!, connectTimeoutMs: 5_000 });
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

    // ---- 1. multifd 1 vs 4, shaped and unshaped (the largest VM, back and forth: it ends where it began) ---------
    const probe = vms[0]!;
    const multifd: Array<{ nicMbps: number; channels: number; move: Move }> = [];
    for (const nic of dry ? [] : [nicBps, 4e9]) {
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

    // ---- 2. evacuation: the baselines (driven here), then dhm (its workflow) -------------------------------------
    const reps = Math.max(1, arg('reps', 1));
    const arms: Array<{ name: string; k: number; settings: (vm: Vm) => { autoConverge: boolean; channels?: number } }> = [
      { name: 'sequential (Nova-like)', k: 1, settings: () => ({ autoConverge: false }) },
      { name: 'sequential + auto-converge (Proxmox-like)', k: 1, settings: () => ({ autoConverge: true }) },
      { name: '2 outbound (KubeVirt-like)', k: 2, settings: () => ({ autoConverge: false }) },
    ];
    const evacuations: Array<ReturnType<typeof evacuationOf> & { rep: number; workflow?: unknown }> = [];
    for (let r = 0; r < (dry ? 0 : reps); r++)
      for (const arm of arms) {
        // Every VM is on one server before each arm (a failed move leaves a VM behind: bring it over first).
        for (const v of vms.filter((x) => x.at !== vms[0]!.at)) await move(v, { autoConverge: true }, Date.now());
        evacuations.push({ rep: r, ...(await evacuate(arm.name, vms, arm.k, arm.settings)) });
      }
    // Back home, in the host's own incarnation, and the bench's incarnation gone: the workflow finds the host as it was made.
    for (const v of vms.filter((x) => x.at !== home)) await move(v, { autoConverge: true }, Date.now());
    if (vms.some((v) => v.at !== home)) throw new Error('a VM could not be brought back to the host’s server; the dhm arm cannot run');
    await agents[1 - home]!.teardownIncarnation(inc[1 - home]!);
    const diskData = new Map(vms.map((v) => [v.vmId, allocated(vmQemu(st.servers[home]!, v.vmId)!.files.values())]));
    const temporal = system.temporal;
    const status = (id: string) => temporal.client.workflow.getHandle(id).query(statusQuery);
    const dhm = await runDhmArm({ operator, status, hostId: host.id, agent: agents[home]!, diskData, downtimeMs: DOWNTIME_MS, log });
    evacuations.push({ rep: 0, ...evacuationOf(dhm.name, dhm.concurrency, dhm.makespanMs, dhm.moves, B), workflow: dhm.workflow });
    log(
      `${dhm.name}: makespan ${dhm.makespanMs} ms (whole workflow ${dhm.workflow.wholeMs} ms), ${dhm.moves.filter((m) => m.state !== 'completed').length} failed`,
    );
    if (dry) {
      process.stdout.write(`${JSON.stringify(dhm, null, 1)}\n`);
      return;
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
      fixedCost: fixedCostOf(allMoves, dhm),
      dirtying: { method: 'calc-dirty-rate page sampling, distinct MiB/s changed over each window', writers: dirtyCurve },
      memorySentOverRam: allMoves.map((m) => Number((m.memorySentMiB / vms.find((v) => v.vmId === m.vmId)!.spec.memoryMiB).toFixed(3))),
    };
    const result = {
      benchmark: 'testbed host evacuation: real QEMU between namespaced servers over shaped NICs',
      at: started.toISOString(),
      machine: { cpus: os.cpus().length, loadavgAtStart, loadavg: os.loadavg().map((l) => Number(l.toFixed(1))) },
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
      `${result.at}; ${vms.length} VMs (${vms.map((v) => `${v.spec.memoryMiB} MiB + 1 GiB disk, writer ${v.spec.workload!.dirtyRateMiBps} MiB/s over ${v.spec.workload!.workingSetMiB} MiB`).join('; ')}); B = ${nicBps / 1e6} Mbit/s (htb), TLS, downtime target ${DOWNTIME_MS} ms; load ${loadavgAtStart.join(' ')} at the start, ${result.machine.loadavg.join(' ')} at the end, on ${result.machine.cpus} cores.`,
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
      `dhm's arm is its workflow (migration ${dhm.workflow.migrationId}, ${dhm.workflow.phase}): policy ${JSON.stringify(dhm.workflow.policy)}. Its makespan is the first move's start to the last move's end (agent jobs), as for the baselines; the whole workflow took ${dhm.workflow.wholeMs} ms (${dhm.workflow.beforeFirstMoveMs} ms before the first move: clone incarnation, link measurement, first dirty-rate sample; ${dhm.workflow.afterLastMoveMs} ms after the last: cut-over, de-provisioning). Between moves: ${dhm.workflow.gapsMs.join(', ')} ms.`,
      '',
      '## Fixed cost per move (medians over the completed moves, ms; the source agent’s phases)',
      '',
      '| phase | median ms |',
      '|---|---|',
      ...Object.entries(calibration.fixedCost.phasesMedianMs).map(([k, v]) => `| ${k} | ${v} |`),
      '',
      `Per move, the phases that do not scale with the bytes (all but ${calibration.fixedCost.scalingPhases.join(', ')}; \`target.*\` and \`qemu.*\` are inside others): median ${calibration.fixedCost.perMoveMs} ms over ${calibration.fixedCost.moves} moves; dhm's workflow adds ${calibration.fixedCost.workflowPerMoveMs} ms between two moves.`,
      '',
      `Calibration constants: bench/calibration/${stamp}.json.`,
      '',
    ].join('\n');
    fs.writeFileSync(`${out}.md`, md);
    process.stdout.write(`${md}\nwritten ${out}.json, .md and ${calFile}\n`);
  } finally {
    await system?.stop().catch((err: unknown) => process.stderr.write(`control plane stop: ${String(err)}\n`));
    await downTestbed(st.dir, logger);
    fs.rmSync(root, { recursive: true, force: true });
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

/**
 * The per-move fixed cost, phase by phase (medians over the completed moves; the agent job's \`phasesMs\`, see
 * compute/agent-api.ts): what a move costs besides its bytes. \`perMoveMs\` sums the phases that do not scale with the
 * bytes (everything but \`ram\` and \`mirrorCopy\`), for a move of one VM with a 1 GiB local disk; \`workflowPerMoveMs\` is
 * what dhm's workflow adds between two moves (its activities, the dirty-rate sample) when they run one after another.
 */
function fixedCostOf(moves: Move[], dhm: { workflow: { gapsMs: number[]; beforeFirstMoveMs: number; afterLastMoveMs: number } }) {
  const withPhases = moves.filter((m) => m.phasesMs);
  const keys = [...new Set(withPhases.flatMap((m) => Object.keys(m.phasesMs!)))];
  const phasesMedianMs: Record<string, number> = { accept: median(withPhases.map((m) => m.acceptMs ?? 0).filter((x) => x > 0)) };
  for (const k of keys) phasesMedianMs[k] = median(withPhases.map((m) => m.phasesMs![k] ?? 0));
  const scaling = new Set(['ram', 'mirrorCopy']);
  const perMove = (m: Move) => (m.acceptMs ?? 0) + Object.entries(m.phasesMs!).reduce((s, [k, v]) => s + (k.includes('.') || scaling.has(k) ? 0 : v), 0);
  return {
    method: 'phases measured by the source agent per move (agent job phasesMs); accept is the startMigration call as the bench saw it (baselines only)',
    moves: withPhases.length,
    phasesMedianMs,
    perMoveMs: median(withPhases.map(perMove)),
    perMoveSamplesMs: withPhases.map(perMove),
    scalingPhases: [...scaling],
    workflowPerMoveMs: median(dhm.workflow.gapsMs.filter((g) => g >= 0)),
    workflowGapsMs: dhm.workflow.gapsMs,
    workflowBeforeFirstMoveMs: dhm.workflow.beforeFirstMoveMs,
    workflowAfterLastMoveMs: dhm.workflow.afterLastMoveMs,
  };
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

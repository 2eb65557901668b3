import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createLogger } from '../common/logger';
import { createAgentClient } from '../compute/agent-client';
import type { MigrationJob } from '../compute/agent-api';
import { loadControlPlaneTls } from '../compute/agent-tls';
import { runQemuSetup } from '../compute/qemu/tools';
import { downTestbed, upTestbed } from '../compute/testbed/testbed';

/**
 * Where one move's wall time goes on the testbed: one VM (256 MiB, a writer, a 1 GiB local disk holding the fill)
 * moved back and forth between two namespaced servers (300 Mbit/s htb, TLS), each move's phases as the source agent
 * measured them (the job's `phasesMs`; `target.*` the destination's own set-up), plus the accept call as the caller
 * saw it and the gap from the job's end to the caller learning of it.
 *
 *   npm run bench:testbed-move-phases -- [--moves 4] [--memory 256] [--fill 16]
 * Writes bench/results/<stamp>-testbed-move-phases.{json,md}, never overwriting. Needs root. About 2 minutes.
 */

const MIB = 2 ** 20;

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}

async function main(): Promise<void> {
  const moves = arg('moves', 4);
  const memoryMiB = arg('memory', 256);
  const fillMiB = arg('fill', 16);
  const logger = createLogger('bench-move-phases', 'warn');
  await runQemuSetup();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-bench-phases-'));
  const started = new Date();
  const st = await upTestbed(
    {
      name: `bp${process.pid.toString(36).slice(-5)}`,
      root,
      servers: 2,
      nicBandwidthBps: 300e6,
      transport: 'tls',
      diskFillMiB: fillMiB,
      capacity: { vcpus: 8, memoryMiB: 4096, diskGiB: 20 },
    },
    logger,
  );
  try {
    const tls = loadControlPlaneTls(st.controlPlaneDir, 'controlPlaneDir');
    const agents = st.servers.map((s) => createAgentClient({ baseUrl: s.agentUrl, tls, serverId: s.id, timeoutMs: 30_000 }));
    const cap = { vcpus: 8, memoryMiB: 4096, diskGiB: 20 };
    const inc = ['inc-0', 'inc-1'];
    for (const [i, a] of agents.entries()) await a.prepareIncarnation({ incarnationId: inc[i]!, capacity: cap });
    const vmId = 'phases-vm';
    await agents[0]!.createVm({
      vmId,
      incarnationId: inc[0]!,
      spec: { vcpus: 1, memoryMiB, diskGiB: 1, workload: { dirtyRateMiBps: 4, workingSetMiB: 24 } },
    });
    const bootDeadline = Date.now() + 240_000;
    for (;;) {
      const c = await agents[0]!.guestOp(vmId, { kind: 'read' }).catch(() => ({ counter: 0 }));
      if (c.counter >= 4) break;
      if (Date.now() > bootDeadline) throw new Error(`${vmId} did not boot within 240 s`);
      await new Promise((r) => setTimeout(r, 500)); // poll interval within the deadline
    }
    const rows: Array<{ from: number; wallMs: number; acceptMs: number; reportLagMs: number; job: MigrationJob }> = [];
    let at = 0;
    for (let n = 0; n < moves; n++) {
      const to = 1 - at;
      const jobId = `phases-${n}`;
      const t = Date.now();
      await agents[at]!.startMigration({
        jobId,
        vmId,
        target: { agentUrl: st.servers[to]!.agentUrl, incarnationId: inc[to]! },
        maxDowntimeMs: 300,
        autoConverge: false,
      });
      const acceptMs = Date.now() - t;
      let j: MigrationJob | null = null;
      while (!j || j.state === 'running') j = await agents[at]!.getMigration(jobId, { waitMs: 1_000 });
      const end = Date.now();
      if (j.state !== 'completed') throw new Error(`move ${n}: ${j.state} ${j.error?.code}: ${j.error?.message}`);
      rows.push({ from: at, wallMs: end - t, acceptMs, reportLagMs: end - Date.parse(j.finishedAt!), job: j });
      process.stdout.write(`move ${n}: ${end - t} ms; accept ${acceptMs} ms; ${JSON.stringify(j.phasesMs)}\n`);
      at = to;
    }
    const keys = [...new Set(rows.flatMap((r) => Object.keys(r.job.phasesMs ?? {})))];
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
    const medians: Record<string, number> = { wall: median(rows.map((r) => r.wallMs)), accept: median(rows.map((r) => r.acceptMs)) };
    for (const k of keys) medians[k] = median(rows.map((r) => r.job.phasesMs?.[k] ?? 0));
    medians.reportLag = median(rows.map((r) => r.reportLagMs));
    const result = {
      benchmark: 'testbed: where one move’s wall time goes',
      at: started.toISOString(),
      machine: { cpus: os.cpus().length, loadavg: os.loadavg().map((l) => Number(l.toFixed(1))) },
      vm: { memoryMiB, diskGiB: 1, diskFillMiB: fillMiB, writer: { dirtyRateMiBps: 4, workingSetMiB: 24 } },
      nicBandwidthBps: 300e6,
      moves: rows.map((r) => ({
        from: r.from,
        wallMs: r.wallMs,
        acceptMs: r.acceptMs,
        reportLagMs: r.reportLagMs,
        phasesMs: r.job.phasesMs,
        memorySentMiB: Number((r.job.memory.bytesTransferred / MIB).toFixed(1)),
        downtimeMs: r.job.downtimeMs,
      })),
      medianMs: medians,
    };
    const stamp = started.toISOString().slice(0, 19).replace(/:/g, '-');
    const out = path.resolve(__dirname, 'results', `${stamp}-testbed-move-phases`);
    for (const f of [`${out}.json`, `${out}.md`]) if (fs.existsSync(f)) throw new Error(`${f} exists: results are never overwritten`);
    fs.writeFileSync(`${out}.json`, `${JSON.stringify(result, null, 2)}\n`);
    const md = [
      `# ${result.benchmark}`,
      '',
      `${result.at}; one VM of ${memoryMiB} MiB (writer 4 MiB/s over 24 MiB) with a 1 GiB local disk holding ${fillMiB} MiB, moved ${moves} times between two testbed servers (300 Mbit/s htb, TLS); load ${result.machine.loadavg.join(' ')} on ${result.machine.cpus} cores.`,
      '',
      '| phase | ' + rows.map((_, i) => `move ${i} ms`).join(' | ') + ' | median ms |',
      '|---|' + rows.map(() => '---|').join('') + '---|',
      `| wall (caller) | ${rows.map((r) => r.wallMs).join(' | ')} | ${medians.wall} |`,
      `| accept (startMigration call) | ${rows.map((r) => r.acceptMs).join(' | ')} | ${medians.accept} |`,
      ...keys.map((k) => `| ${k} | ${rows.map((r) => r.job.phasesMs?.[k] ?? '—').join(' | ')} | ${medians[k]} |`),
      `| report lag (job end → caller) | ${rows.map((r) => r.reportLagMs).join(' | ')} | ${medians.reportLag} |`,
      '',
      'Phases without a dot follow one another (their sum plus the accept is the wall time); `target.*` is the destination’s own set-up (inside accept + listenWait), `qemu.*` QEMU’s own figures (inside migrateSetup … finalCopy).',
      '',
    ].join('\n');
    fs.writeFileSync(`${out}.md`, md);
    process.stdout.write(`${md}\nwritten ${out}.json and .md\n`);
  } finally {
    await downTestbed(st.dir, logger);
    fs.rmSync(root, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { temporal } from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { checkInvariants } from '../../client/invariants';
import { deleteVmDuringMigration, provisionVmDuringMigration } from '../../client/migrations';
import { statusQuery } from '../../workflows/messages';
import { testFleet } from '../support/fleets';
import { eventually, startTestSystem } from '../support/system';
import { printFigure, shardOwner, type TestCluster } from './support';

export interface FailoverOutcome {
  phase: string;
  /** Longest time without an answer to the status query (history + matching + worker path), from the kill on. */
  stallMs: number;
  migrationMs: number;
  guestOps: number;
  guestFailures: string[];
  provisionAnsweredMs: number;
  violations: string[];
  /** The process killed, and for a history process the shard and who owns it afterwards. */
  victim: string;
  shard?: { id: number; ownerAfter: string };
  /** The replay of the finished history against today's workflow code: null when it replayed, else the error. */
  replayError: string | null;
  historyEvents: number;
}

/**
 * A host of 5 busy VMs migrates on the cluster while tenants keep using their VMs (guest operations through the
 * agents) and ask the migration for things (an Update to provision a VM, one to delete a VM); in the middle of the
 * moves one cluster process is SIGKILLed (and, for `restartAfterMs`, started again as a deployment would). The
 * migration must complete, every tenant request get its answer, no VM be lost and the invariants hold.
 */
export async function killDuringMigration(
  tc: TestCluster,
  victimName: string | 'shard owner',
  opts: { restartAfterMs?: number } = {},
): Promise<FailoverOutcome> {
  const { cluster } = tc;
  // Slow enough that the moves outlast the stall (~5-10 s): the requests sent after the kill must find it running.
  const sys = await startTestSystem({ temporalAddress: cluster.address, fleet: testFleet({ servers: 4 }), timeScale: 10 });
  try {
    const { hostId, vmIds } = await sys.createHostWithVms({ vms: 5, memoryMiB: [1024], dirtyRateMiBps: [0, 10, 20, 5] });
    const source = (await sys.inventory.getIncarnation((await sys.inventory.getHost(hostId))!.currentIncarnationId))!.serverId;

    // Tenants' guest operations, served wherever each VM runs; none may fail.
    let stopLoad = false;
    const guest = { ops: 0, failures: [] as string[] };
    const loops = vmIds.map(async (vmId) => {
      const agent = sys.agent(source);
      while (!stopLoad) {
        try {
          await agent.guestOp(vmId, { kind: 'increment' });
          guest.ops++;
        } catch (err) {
          if ((err as { code?: string }).code === 'NOT_FOUND') return; // deleted by the tenant below
          guest.failures.push(`${vmId}: ${String(err)}`);
          return;
        }
      }
    });

    const started = Date.now();
    const handle = await sys.startMigration(hostId, { maxParallel: 1, bandwidthCapBps: 40e6 });
    await eventually('the first VM moving', async () => (await sys.status(hostId)).vms.some((v) => v.state === 'moving'), 60_000, 100);

    // The status query needs the shard's history process, matching and a worker: its gaps are the stall.
    let lastAnswer = Date.now();
    let stallMs = 0;
    let probing = true;
    const probe = (async () => {
      while (probing) {
        try {
          await handle.query(statusQuery);
          const now = Date.now();
          stallMs = Math.max(stallMs, now - lastAnswer);
          lastAnswer = now;
        } catch {
          // no answer yet: the gap grows until one comes
        }
        await new Promise((r) => setTimeout(r, 100)); // probe interval
      }
    })();

    // 'shard owner': the history process that owns this migration's shard, so its shard must move.
    const owner = victimName === 'shard owner' ? await shardOwner(tc, handle.workflowId) : null;
    const victim = owner?.process ?? victimName;
    const p = cluster.process(victim);
    const killedPid = p.pid();
    await p.kill('SIGKILL');
    const killedAt = Date.now();
    lastAnswer = killedAt;
    const restart = opts.restartAfterMs === undefined ? Promise.resolve() : new Promise((r) => setTimeout(r, opts.restartAfterMs)).then(() => p.start());

    // Tenant requests through Temporal right after the kill: each must get its answer.
    const pending = (await sys.status(hostId).catch(() => null))?.vms.find((v) => v.state === 'pending');
    const provision = provisionVmDuringMigration(sys.temporal.client, hostId, {
      vmId: `vm-fo-${hostId}`,
      name: 'fo',
      spec: { vcpus: 1, memoryMiB: 512, diskGiB: 5 },
    }).then((r) => ({ r, ms: Date.now() - killedAt }));
    const del = pending ? deleteVmDuringMigration(sys.temporal.client, hostId, { vmId: pending.vmId }) : Promise.resolve(null);
    const [prov, deleted] = await Promise.all([provision, del]);
    await restart;

    const result = await handle.result();
    probing = false;
    await probe;
    stopLoad = true;
    await Promise.all(loops);
    const migrationMs = Date.now() - started;

    // The history a fault left must replay: a worker restarted later (or a query on a worker without it cached)
    // replays it from the start, and a determinism error there would wedge the migration. Kept when it does not.
    const history = (await handle.fetchHistory()) as temporal.api.history.v1.History;
    const replayError = await Worker.runReplayHistory({ workflowBundle: { codePath: process.env.DHM_TEST_WORKFLOW_BUNDLE! } }, history, handle.workflowId).then(
      () => null,
      (err: Error) => {
        const file = path.join(os.tmpdir(), `dhm-cluster-history-${handle.workflowId}-${Date.now()}.json`);
        fs.writeFileSync(file, JSON.stringify(temporal.api.history.v1.History.toObject(history, { longs: String, enums: String, bytes: String })));
        return `${err.message} (history kept in ${file})`;
      },
    );
    const st = await sys.status(hostId);
    const host = (await sys.inventory.getHost(hostId))!;
    const live = (await sys.inventory.listVms({ dedicatedHostId: hostId })).filter((v) => v.state === 'running');
    const expected = [...vmIds.filter((id) => id !== pending?.vmId), prov.r.vmId].sort();
    const violations: string[] = [];
    if (JSON.stringify(live.map((v) => v.id).sort()) !== JSON.stringify(expected)) violations.push(`live VMs ${live.map((v) => v.id)} ≠ ${expected}`);
    for (const vm of live) {
      if (vm.incarnationId !== host.currentIncarnationId) violations.push(`${vm.id} not on the clone`);
      const target = (await sys.inventory.getIncarnation(host.currentIncarnationId))!.serverId;
      if ((await sys.agent(target).getVm(vm.id))?.state !== 'running') violations.push(`${vm.id} not running on ${target}`);
    }
    if (prov.r.incarnationId !== host.currentIncarnationId) violations.push('the VM provisioned after the kill is not on the clone');
    // It was pending when asked; by the time the Update lands it may be moving or moved: deleted wherever it is (claim 8).
    if (pending && (deleted?.deleted !== true || !['pending', 'moving', 'moved'].includes(deleted.wasState)))
      violations.push(`delete of ${pending.vmId} answered ${JSON.stringify(deleted)}`);
    await eventually('old server de-provisioned', async () => (await sys.inventory.getServer(source))!.state === 'available', 30_000, 100);
    const inv = await checkInvariants({ inventory: sys.inventory, agentTls: sys.agentTls, temporal: sys.temporal.client });
    violations.push(...inv.violations);
    const after = owner ? await shardOwner(tc, handle.workflowId) : null;
    const outcome: FailoverOutcome = {
      phase: result.phase,
      stallMs,
      migrationMs,
      guestOps: guest.ops,
      guestFailures: guest.failures,
      provisionAnsweredMs: prov.ms,
      violations,
      victim,
      replayError,
      historyEvents: history.events.length,
      ...(owner && after ? { shard: { id: owner.shardId, ownerAfter: after.process } } : {}),
    };
    printFigure(`SIGKILL ${victim}${opts.restartAfterMs === undefined ? '' : `, restarted after ${opts.restartAfterMs} ms`}`, {
      killedPid,
      ...outcome,
      vms: st.vms.length,
    });
    return outcome;
  } finally {
    await sys.stop();
  }
}

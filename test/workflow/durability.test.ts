import { randomUUID } from 'node:crypto';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import type { MigrationStatus } from '../../common/migration';
import { createActivities } from '../../activities';
import { deleteVmDuringMigration, provisionVmDuringMigration, MigrationRequestRefused } from '../../client/migrations';
import { createLogger } from '../../common/logger';
import { startScheduler } from '../../workers/scheduler';
import { testFleet } from '../support/fleets';
import { eventually, startTestSystem, type TestSystem } from '../support/system';

describe('durability of a migration', () => {
  let sys: TestSystem;
  beforeAll(async () => {
    sys = await startTestSystem({ fleet: testFleet({ servers: 6 }), timeScale: 20 });
  });
  afterAll(async () => {
    await sys?.stop();
  });

  it('a worker that stops mid-move hands the move over: the next worker follows the same agent job instead of starting again', async () => {
    const { hostId } = await sys.createHostWithVms({ vms: 1, memoryMiB: [8192], dirtyRateMiBps: [0] });
    const handle = await sys.startMigration(hostId, { bandwidthCapBps: 150e6 });
    const moving = await eventually('move under way', async () => {
      const st = await sys.status(hostId);
      const vm = st.vms.find((v) => v.state === 'moving');
      if (!vm?.jobId) return null;
      const job = await sys.agent(st.source!.serverId).getMigration(vm.jobId);
      return job && job.bytesSent > 0 ? { st, vm, job } : null;
    });
    await sys.worker.stop();
    // The agent keeps moving the VM while no worker is there.
    const later = await eventually('agent progress without a worker', async () => {
      const job = await sys.agent(moving.st.source!.serverId).getMigration(moving.vm.jobId!);
      return job && job.bytesSent > moving.job.bytesSent ? job : null;
    });
    expect(later.state === 'running' || later.state === 'completed').toBe(true);
    const replacement = await sys.temporal.startWorker({
      activities: createActivities({ inventory: sys.inventory, agents: sys.agents }),
      maxHeartbeatThrottleInterval: '500ms',
      defaultHeartbeatThrottleInterval: '500ms',
    });
    sys.worker = replacement;
    const result = await handle.result();
    expect(result.phase).toBe('completed');
    const st = await sys.status(hostId);
    // Same job, first attempt: the move was resumed, not restarted.
    expect(st.vms[0]!.jobId).toBe(moving.vm.jobId);
    expect(st.vms[0]!.attempts).toBe(1);
    expect(st.vms[0]!.figures!.bytesSent).toBeLessThan(2 * 8192 * 2 ** 20);
  });

  it('the scheduler de-provisions a server whose incarnation was deleted while no scheduler ran, once one starts', async () => {
    await sys.scheduler.stop();
    const { hostId } = await sys.createHostWithVms({ vms: 1 });
    const host = (await sys.inventory.getHost(hostId))!;
    const oldIncarnation = host.currentIncarnationId;
    const oldServer = (await sys.inventory.getIncarnation(oldIncarnation))!.serverId;
    expect((await (await sys.startMigration(hostId)).result()).phase).toBe('completed');
    expect((await sys.inventory.getServer(oldServer)).state).toBe('deprovisioning');
    const logger = createLogger('test', 'warn');
    // Two schedulers start together: the row is done exactly once.
    const [a, b] = await Promise.all(
      ['sched-a', 'sched-b'].map((schedulerId) =>
        startScheduler({ inventory: sys.inventory, databaseUrl: sys.db.url, schedulerId, logger, sweepIntervalMs: 500, agentTls: sys.agentTls }),
      ),
    );
    sys.scheduler = a!;
    try {
      await eventually('server back in the pool', async () => (await sys.inventory.getServer(oldServer)).state === 'available', 20_000);
      const done = (await sys.inventory.listDeprovisionJobs({ state: 'done' })).filter((j) => j.incarnationId === oldIncarnation);
      expect(done).toHaveLength(1);
      expect(done[0]!.attempts).toBe(1);
      // This host's only teardown: enqueued by the finalize, claimed once and completed once, by one of the two.
      const teardowns = (await sys.inventory.listEvents({ dedicatedHostId: hostId })).filter((e) => e.action.startsWith('deprovision'));
      expect(teardowns.map((e) => e.action)).toEqual(['deprovision.enqueued', 'deprovision.claimed', 'deprovision.completed']);
      expect(new Set(teardowns.slice(1).map((e) => e.actor)).size).toBe(1);
    } finally {
      await b!.stop();
    }
  });

  it('a host of 200 VMs with up to 500 tenant requests sent back to back completes with history bounded by continue-as-new', async () => {
    const { hostId, vmIds } = await sys.createHostWithVms({ vms: 200, resourceClass: 'large', memoryMiB: [64, 128, 96, 32], dirtyRateMiBps: [0, 1, 0, 2] });
    // A low threshold makes the handover happen early whatever the machine's speed: several runs, each bounded.
    const handle = await sys.startMigration(hostId, { maxParallel: 8, bandwidthCapBps: 5e6, continueAsNewAfterEvents: 400 });
    await eventually('migrating', async () => (await sys.status(hostId)).phase === 'migrating-vms');
    const answers = { ok: 0, refused: new Map<string, number>(), lost: [] as string[] };
    const created: string[] = [];
    let next = 0;
    const victims = [...vmIds].reverse();
    // Eight clients (Temporal allows at most ten updates in flight per workflow) send back to back — there is always
    // a request in flight — until the migration has ended or 500 were sent. The hand-overs must not wait for a quiet
    // moment that never comes (requests meanwhile are refused with MIGRATION_CONTINUING and resent by the client).
    let ended = false;
    void handle
      .result()
      .catch(() => undefined)
      .finally(() => (ended = true));
    const client = async (c: number) => {
      for (;;) {
        if (next >= 500 || ended) return;
        const i = next++;
        const requestId = `req-${c}-${i}-${randomUUID().slice(0, 8)}`;
        try {
          if (i % 2 === 0) {
            const vmId = `vm-can-${i}-${hostId.slice(-6)}`;
            await provisionVmDuringMigration(sys.temporal.client, hostId, { requestId, vmId, name: `n${i}`, spec: { vcpus: 1, memoryMiB: 16, diskGiB: 1 } });
            created.push(vmId);
          } else {
            const vmId = victims.pop() ?? created.shift()!;
            await deleteVmDuringMigration(sys.temporal.client, hostId, { requestId, vmId });
          }
          answers.ok++;
        } catch (err) {
          if (err instanceof MigrationRequestRefused) {
            answers.refused.set(err.type, (answers.refused.get(err.type) ?? 0) + 1);
            if (err.type !== 'MIGRATION_ENDED') answers.lost.push(`${requestId}: ${err.type} ${err.message}`);
          } else answers.lost.push(`${requestId}: ${String(err)}`);
        }
      }
    };
    await Promise.all(Array.from({ length: 8 }, (_, c) => client(c)));
    const result = await handle.result();
    expect(result.phase).toBe('completed');
    expect(answers.lost).toEqual([]);
    // Every request got a definite answer; only the migration's end may refuse (then the normal path takes over).
    expect(answers.ok + [...answers.refused.values()].reduce((a, b) => a + b, 0)).toBe(next);
    expect([...answers.refused.keys()].filter((t) => t !== 'MIGRATION_ENDED')).toEqual([]);
    // The requests really ran during the migration, across its runs (refusals come only once it finalizes).
    expect(answers.ok).toBeGreaterThan(150);
    const st = await sys.status(hostId);
    // The migration object counted every request it carried out, across its runs: each answered one, and at most the
    // refusals at its end besides (a request refused inside its handler is recorded; one refused by the validator is not).
    const endedRefusals = answers.refused.get('MIGRATION_ENDED') ?? 0;
    expect(st.requestsHandled).toBeGreaterThanOrEqual(answers.ok);
    expect(st.requestsHandled).toBeLessThanOrEqual(answers.ok + endedRefusals);
    expect(st.run).toBeGreaterThan(1);
    // The carried state is bounded: the last run started without the VMs deleted before it (only their count) and
    // with at most 200 remembered outcomes, though more requests than that were answered before it.
    const history = await handle.fetchHistory();
    const started = history.events?.[0]?.workflowExecutionStartedEventAttributes;
    const input = defaultPayloadConverter.fromPayload<{ carried?: { status: MigrationStatus; outcomes: unknown[] } }>(started!.input!.payloads![0] as Payload);
    const carried = input.carried!;
    expect(carried.status.vms.filter((v) => v.state === 'deleted')).toEqual([]);
    expect(carried.status.deletedDropped).toBeGreaterThan(0);
    expect(carried.outcomes.length).toBeLessThanOrEqual(200);
    expect(st.counts.deleted).toBe(st.vms.filter((v) => v.state === 'deleted').length + (st.deletedDropped ?? 0));
    // Ordinals (in agent job ids) stayed unique across the drops.
    const ordinals = st.vms.map((v) => v.ordinal);
    expect(ordinals.every((o) => typeof o === 'number')).toBe(true);
    expect(new Set(ordinals).size).toBe(ordinals.length);
    // History of every run stays far below the 51,200-event limit.
    const desc = await handle.describe();
    expect(desc.historyLength).toBeLessThan(10_240);
    // The inventory agrees with the answers: provisioned VMs exist on the clone, no duplicates.
    const live = (await sys.inventory.listVms({ dedicatedHostId: hostId })).filter((v) => v.state === 'running');
    expect(new Set(live.map((v) => v.id)).size).toBe(live.length);
    for (const id of created) expect(live.some((v) => v.id === id)).toBe(true);
    const host = (await sys.inventory.getHost(hostId))!;
    expect(live.every((v) => v.incarnationId === host.currentIncarnationId)).toBe(true);
  }, 300_000);
});

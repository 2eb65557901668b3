import { randomBytes } from 'node:crypto';
import { MigrationAlreadyRunningError, MigrationRequestRefused } from '../../client/migrations';
import { createHostService, type HostService } from '../../api/host-service';
import { createLogger } from '../../common/logger';
import { InventoryError } from '../../inventory/errors';
import { statusQuery } from '../../workflows/messages';
import { testFleet } from '../support/fleets';
import { eventually, startTestSystem, type TestSystem } from '../support/system';
import { assertInvariants, count, FAULT_SEED, FAULT_TRIALS, faultMoment, figures, outcome, printFigures, suiteRandom } from './support';

/**
 * Races under load: tenant requests across a whole migration (finalize included), cancel racing completion, two
 * operators starting the same migration, many hosts competing for few free servers.
 */
describe(`races (seed ${FAULT_SEED}, ${FAULT_TRIALS} trials)`, () => {
  const rnd = suiteRandom('races');
  const fig = figures('races');
  let sys: TestSystem;
  let service: HostService;
  const invariants = (when: string) =>
    assertInvariants(fig, { inventory: sys.inventory, agents: sys.agentUrls, agentTls: sys.agentTls, temporal: sys.temporal.client }, when);
  const deprovisioned = () =>
    eventually('outbox drained', async () => (await sys.inventory.listDeprovisionJobs({ state: 'pending' })).length === 0, 30_000, 100);
  /** Where a VM runs per the agents: the servers that have it. */
  const runningOn = async (vmId: string) => {
    const at: string[] = [];
    for (const serverId of sys.agentUrls.keys()) if (await sys.agent(serverId).getVm(vmId)) at.push(serverId);
    return at;
  };

  beforeAll(async () => {
    process.stdout.write(`races: FAULT_SEED=${FAULT_SEED} FAULT_TRIALS=${FAULT_TRIALS}\n`);
    sys = await startTestSystem({ timeScale: 20, fleet: testFleet({ zones: ['zone-a', 'zone-b'], servers: 4 }) });
    service = createHostService({
      inventory: sys.inventory,
      agents: sys.agents,
      temporal: { client: sys.temporal.client, taskQueue: sys.temporal.taskQueue },
      logger: createLogger('test', 'warn'),
      settleTimeoutMs: 30_000,
    });
  }, 60_000);
  afterAll(async () => {
    await sys?.stop();
    printFigures(fig);
  }, 60_000);

  /** A definite answer: a success, or a refusal the API maps to a 4xx. Anything else is a lost request. */
  const definiteRefusal = (err: unknown) => err instanceof InventoryError || err instanceof MigrationRequestRefused;

  it(
    'provision/delete from several clients across whole migrations, finalize included: none lost, no duplicate, no leak',
    async () => {
      const { hostId, tenantId } = await sys.createHostWithVms({ vms: 3, memoryMiB: [2048], dirtyRateMiBps: [10] });
      const clients = 4;
      // ~20 s a trial: one in CI, FAULT_TRIALS when set.
      const trials = process.env.FAULT_TRIALS ? FAULT_TRIALS : 1;
      for (let trial = 0; trial < trials; trial++) {
        const handle = await sys.startMigration(hostId, { maxParallel: rnd.int(1, 2), bandwidthCapBps: 300e6 });
        let endedAt = 0;
        void handle
          .result()
          .catch(() => undefined)
          .finally(() => (endedAt = Date.now()));
        const created: string[] = [];
        const deleted: string[] = [];
        const refusedCreates: string[] = [];
        const lost: string[] = [];
        // Each client keeps going until a while after the migration ended, so requests meet every phase, finalize included.
        await Promise.all(
          Array.from({ length: clients }, async (_, c) => {
            const mine: string[] = [];
            let n = 0;
            while (!endedAt || Date.now() - endedAt < 700) {
              n++;
              fig.requestsSent++;
              const requestId = `r-${trial}-${c}-${n}-${randomBytes(3).toString('hex')}`;
              if (mine.length > 0 && (mine.length >= 3 || rnd.next() < 0.4)) {
                const vmId = mine.splice(rnd.int(0, mine.length - 1), 1)[0]!;
                try {
                  await service.deleteVm({ vmId, tenantId, requestId, actor: `tenant:${tenantId}` });
                  deleted.push(vmId);
                  count(fig.faults, 'delete request');
                } catch (err) {
                  if (!definiteRefusal(err)) lost.push(`delete ${vmId}: ${String(err)}`);
                  else mine.push(vmId);
                }
              } else {
                const vmId = `vm-race-${trial}-${c}-${n}-${randomBytes(2).toString('hex')}`;
                try {
                  await service.createVm({
                    dedicatedHostId: hostId,
                    tenantId,
                    vmId,
                    name: `race-${c}-${n}`,
                    spec: { vcpus: 1, memoryMiB: 512, diskGiB: 1 },
                    requestId,
                    actor: `tenant:${tenantId}`,
                  });
                  created.push(vmId);
                  mine.push(vmId);
                  count(fig.faults, 'provision request');
                } catch (err) {
                  if (!definiteRefusal(err)) lost.push(`create ${vmId}: ${String(err)}`);
                  else refusedCreates.push(vmId);
                }
              }
              await faultMoment(rnd.int(0, 60));
            }
          }),
        );
        const st = await outcome(handle);
        count(fig.migrations, st.phase);
        fig.requestsLost += lost.length;
        expect(lost).toEqual([]);
        expect(st.phase).toBe('completed');
        const host = await sys.inventory.getHost(hostId);
        expect(host.state).toBe('active');
        // Every answer held: created VMs run once, on the host's server; deleted ones are gone; refused ones never existed.
        for (const vmId of created) {
          const vm = await sys.inventory.getVm(vmId);
          if (deleted.includes(vmId)) {
            expect(vm.state).toBe('deleted');
            expect(await runningOn(vmId)).toEqual([]);
          } else {
            expect(vm.state).toBe('running');
            expect(await runningOn(vmId)).toEqual([host.serverId]);
          }
        }
        for (const vmId of refusedCreates) {
          await expect(sys.inventory.getVm(vmId)).rejects.toThrow();
          expect(await runningOn(vmId)).toEqual([]);
        }
        await deprovisioned();
        await invariants(`after load trial ${trial}`);
        fig.trials++;
      }
    },
    60_000 + FAULT_TRIALS * 60_000,
  );

  it(
    'cancel racing completion: it either completed or rolled back, never half of each',
    async () => {
      const { hostId, vmIds } = await sys.createHostWithVms({ vms: 2, memoryMiB: [1024], dirtyRateMiBps: [0] });
      for (let trial = 0; trial < FAULT_TRIALS; trial++) {
        const source = (await sys.inventory.getHost(hostId)).serverId;
        const handle = await sys.startMigration(hostId, { maxParallel: 2, bandwidthCapBps: 300e6 });
        // Aim at the end: once the last move runs, a random delay that lands before, at or after finalize.
        await eventually(
          'moves running',
          async () => (await handle.query(statusQuery)).vms.some((v) => v.state === 'moving' || v.state === 'moved'),
          30_000,
          20,
        );
        await faultMoment(rnd.int(0, 2500));
        await handle.cancel().catch(() => undefined);
        count(fig.faults, 'cancel near completion');
        const st = await outcome(handle);
        count(fig.migrations, `${st.phase} (cancel raced)`);
        expect(['completed', 'rolled-back']).toContain(st.phase);
        const host = await sys.inventory.getHost(hostId);
        expect(host.state).toBe('active');
        if (st.phase === 'rolled-back') expect(host.serverId).toBe(source);
        else expect(host.serverId).not.toBe(source);
        for (const vmId of vmIds) expect(await runningOn(vmId)).toEqual([host.serverId]);
        await deprovisioned();
        await invariants(`after cancel trial ${trial}`);
        fig.trials++;
      }
    },
    60_000 + FAULT_TRIALS * 30_000,
  );

  it('two operators start the same migration at once: exactly one runs', async () => {
    const { hostId } = await sys.createHostWithVms({ vms: 1 });
    const starts = await Promise.allSettled([sys.startMigration(hostId), sys.startMigration(hostId)]);
    count(fig.faults, 'concurrent start', 2);
    expect(starts.filter((s) => s.status === 'fulfilled')).toHaveLength(1);
    const refused = starts.find((s) => s.status === 'rejected') as PromiseRejectedResult;
    expect(refused.reason).toBeInstanceOf(MigrationAlreadyRunningError);
    const handle = (starts.find((s) => s.status === 'fulfilled') as PromiseFulfilledResult<Awaited<ReturnType<TestSystem['startMigration']>>>).value;
    const st = await outcome(handle);
    count(fig.migrations, st.phase);
    expect(st.phase).toBe('completed');
    const migrations = await sys.db.pool.query('SELECT count(*)::int AS n FROM host_migrations WHERE dedicated_host_id = $1', [hostId]);
    expect(migrations.rows[0].n).toBe(1);
    await deprovisioned();
    await invariants('after two operators');
    fig.trials++;
  }, 60_000);

  it('many hosts competing for one free server: they take turns (waitForCapacitySeconds), none leaks a reservation', async () => {
    // zone-b has 4 servers: 3 hosts take 3, one is free; each migration frees its source for the next one.
    const hosts = [];
    for (let i = 0; i < 3; i++) hosts.push((await sys.createHostWithVms({ vms: 1, zone: 'zone-b', memoryMiB: [512] })).hostId);
    const handles = await Promise.all(hosts.map((h) => sys.startMigration(h, { waitForCapacitySeconds: 60 })));
    count(fig.faults, 'migrations competing for 1 free server', hosts.length);
    const outcomes = await Promise.all(handles.map((h) => outcome(h)));
    for (const st of outcomes) count(fig.migrations, st.phase);
    expect(outcomes.map((s) => s.phase)).toEqual(['completed', 'completed', 'completed']);
    await deprovisioned();
    await invariants('after competing hosts');
    fig.trials++;
  }, 120_000);
});

import { testAgentPki } from '../support/agent-pki';
import { randomBytes } from 'node:crypto';
import { createActivities, createAgentDirectory } from '../../activities';
import { startMigration } from '../../client/migrations';
import { createLogger } from '../../common/logger';
import { FailureTypes, type MigrationStatus } from '../../common/migration';
import { createAgentClient, type AgentClient } from '../../compute/agent-client';
import { startAgent, type RunningAgent } from '../../compute/agent-service';
import { createInventory, type Inventory } from '../../inventory';
import { statusQuery } from '../../workflows/messages';
import { startScheduler, type RunningScheduler } from '../../workers/scheduler';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { testFleet } from '../support/fleets';
import { eventually } from '../support/system';
import { connectTestTemporal, type TestTemporal } from '../support/temporal';
import { assertInvariants, count, outcome, FAULT_SEED, FAULT_TRIALS, faultMoment, figures, printFigures, suiteRandom } from './support';

/**
 * Host agents failing mid-move. An agent that becomes unreachable for a while (its VMs keep running: the control
 * daemon is down, not the server): no VM is lost, it runs on exactly one side, or the migration rolled back and it runs
 * on the source; the policy (rollback) decides the rest. And an agent process restarted on the same port (a fresh boot
 * id: the sim keeps VMs in memory, so everything it had is gone, as when a server reboots): dhm cannot save those
 * VMs, but it never hides them — the migration ends `failed` naming them and the inventory records them `lost`.
 */
describe(`host agents failing mid-move (seed ${FAULT_SEED}, ${FAULT_TRIALS} trials)`, () => {
  const rnd = suiteRandom('agent-crash');
  const fig = figures('agent-crash');
  let pki: Awaited<ReturnType<typeof testAgentPki>>;
  const logger = createLogger('test', 'warn');
  const fleet = testFleet({ servers: 5 });
  let db: TestDatabase;
  let inventory: Inventory;
  let temporal: TestTemporal;
  let scheduler: RunningScheduler;
  const agents = new Map<string, RunningAgent>();
  const ports = new Map<string, number>();

  async function startServerAgent(serverId: string): Promise<RunningAgent> {
    const s = fleet.servers.find((x) => x.id === serverId)!;
    const a = await startAgent({
      serverId,
      capacity: s.capacity,
      nicBandwidthBps: s.nicBandwidthBps,
      timeScale: 20,
      port: ports.get(serverId) ?? 0,
      tls: (pki ??= await testAgentPki(fleet.servers.map((x) => x.id))).server(serverId),
      faultRoutes: true,
      logger,
    });
    ports.set(serverId, Number(new URL(a.url).port));
    agents.set(serverId, a);
    return a;
  }
  /** The agent process dies and a fresh one starts on the same port: a new boot id, nothing in memory. */
  async function restartAgent(serverId: string): Promise<void> {
    await agents.get(serverId)!.stop();
    await startServerAgent(serverId);
  }
  const client = (serverId: string): AgentClient => createAgentClient({ baseUrl: agents.get(serverId)!.url, tls: pki.controlPlane, serverId });

  beforeAll(async () => {
    process.stdout.write(`agent-crash: FAULT_SEED=${FAULT_SEED} FAULT_TRIALS=${FAULT_TRIALS}\n`);
    db = await createTestDatabase();
    inventory = createInventory(db.pool);
    for (const s of fleet.servers) await startServerAgent(s.id);
    await inventory.seedFleet(fleet, new Map([...agents].map(([id, a]) => [id, a.url])));
    temporal = await connectTestTemporal();
    const directory = createAgentDirectory({ lookupAgentUrl: async (id) => (await inventory.getServer(id)).agentUrl, tls: pki.controlPlane });
    await temporal.startWorker({
      activities: createActivities({ inventory, agents: directory }),
      maxHeartbeatThrottleInterval: '500ms',
      defaultHeartbeatThrottleInterval: '500ms',
    });
    scheduler = await startScheduler({
      inventory,
      databaseUrl: db.url,
      schedulerId: 'sched-agent-crash',
      logger,
      agentTls: pki.controlPlane,
      sweepIntervalMs: 500,
      staleClaimMs: 5000,
    });
  }, 60_000);

  afterAll(async () => {
    await scheduler?.stop();
    await temporal?.close();
    await Promise.all([...agents.values()].map((a) => a.stop()));
    await db?.drop();
    printFigures(fig);
  }, 60_000);

  async function createHost(tag: string, vms: number) {
    const tenant = await inventory.createTenant(`agent-${tag}`);
    const host = await inventory.createDedicatedHost({ tenantId: tenant.id, name: tag, zone: 'zone-a', resourceClass: 'std', actor: 'test' });
    const inc = await inventory.getIncarnation(host.currentIncarnationId);
    const agent = client(inc.serverId);
    await agent.prepareIncarnation({ incarnationId: inc.id, capacity: inc.capacity });
    const vmIds: string[] = [];
    for (let i = 0; i < vms; i++) {
      const spec = { vcpus: 1, memoryMiB: 2048, diskGiB: 10, workload: { dirtyRateMiBps: rnd.pick([0, 10]), workingSetMiB: 128 } };
      const vmId = `vm-${tag}-${i}`;
      await inventory.placeVm({ vmId, tenantId: tenant.id, dedicatedHostId: host.id, name: `vm${i}`, spec, actor: 'test' });
      await agent.createVm({ vmId, incarnationId: inc.id, spec });
      vmIds.push(vmId);
    }
    return { hostId: host.id, vmIds, sourceServerId: inc.serverId };
  }

  /** Where each VM runs, per the agents: server ids. */
  async function whereRunning(vmIds: string[]): Promise<Map<string, string[]>> {
    const at = new Map<string, string[]>(vmIds.map((v) => [v, []]));
    for (const [serverId] of agents) for (const vmId of vmIds) if (await client(serverId).getVm(vmId)) at.get(vmId)!.push(serverId);
    return at;
  }

  const invariants = (when: string) => assertInvariants(fig, { inventory, agentTls: pki.controlPlane, temporal: temporal.client }, when);
  const settled = () => eventually('de-provisioning done', async () => (await inventory.listDeprovisionJobs({ state: 'pending' })).length === 0, 30_000, 100);

  it(
    'an agent unreachable for a while (source or target): every VM runs exactly once, where the inventory says',
    async () => {
      // One host, migrated back and forth: each trial starts from where the previous one left it. A trial counts only if
      // its outage began while the migration ran; one that ended first is checked all the same, then run again (bounded).
      const { hostId, vmIds } = await createHost(`u${randomBytes(2).toString('hex')}`, 3);
      let faulted = 0;
      for (let trial = 0; faulted < FAULT_TRIALS && trial < 3 * FAULT_TRIALS; trial++) {
        const sourceServerId = (await inventory.getHost(hostId)).serverId;
        const handle = await startMigration(temporal.client, temporal.taskQueue, {
          dedicatedHostId: hostId,
          policy: { maxParallel: rnd.int(1, 2), bandwidthCapBps: 200e6 },
          requestedBy: 'operator:faults',
        });
        const result = handle.result();
        let ended = false;
        void result.catch(() => undefined).finally(() => (ended = true));
        // A moment once the target is known (so either side can be hit), within the 1–2 s the three moves take (three
        // 2 GiB VMs at 200 MB/s, time scale 20), then a random outage.
        const st = await eventually('target reserved', async () => (await handle.query(statusQuery)).target?.serverId ?? (ended ? 'ended' : null), 30_000, 25);
        await faultMoment(rnd.int(0, 1000), () => ended);
        const side = rnd.pick(['source', 'target'] as const);
        const serverId = side === 'source' ? sourceServerId : st;
        const fired = !ended && serverId !== 'ended';
        if (fired) {
          await client(serverId).setFaults({ unreachable: true });
          count(fig.faults, `${side} agent unreachable`);
          await faultMoment(rnd.int(500, 4000), () => ended);
          await client(serverId).setFaults({ unreachable: false });
        }
        const r = await outcome(handle);
        count(fig.migrations, r.phase);
        expect(['completed', 'rolled-back']).toContain(r.phase);
        const at = await whereRunning(vmIds);
        const host = await inventory.getHost(hostId);
        for (const vmId of vmIds) {
          expect(at.get(vmId)).toEqual([host.serverId]); // once, on the host's current server (source after a rollback)
        }
        if (r.phase === 'rolled-back') expect(host.serverId).toBe(sourceServerId);
        await settled();
        await invariants(`after unreachable trial ${trial}`);
        if (fired) {
          faulted++;
          fig.trials++;
        } else count(fig.faults, 'none (the migration ended before the outage)');
      }
      expect(faulted).toBe(FAULT_TRIALS);
    },
    60_000 + 2 * FAULT_TRIALS * 60_000,
  );

  it(
    'an agent daemon restarts mid-move (source or target) while its server keeps running: no VM is lost, the policy decides the rest',
    async () => {
      // The daemon, not the server: unreachable for a while, then back with its migration jobs aborted and forgotten.
      // One host, migrated back and forth: each trial starts from where the previous one left it.
      const { hostId, vmIds } = await createHost(`d${randomBytes(2).toString('hex')}`, 3);
      for (let trial = 0; trial < Math.max(2, Math.ceil(FAULT_TRIALS / 2)); trial++) {
        const side = trial % 2 === 0 ? 'source' : 'target';
        const sourceServerId = (await inventory.getHost(hostId)).serverId;
        const handle = await startMigration(temporal.client, temporal.taskQueue, {
          dedicatedHostId: hostId,
          policy: { maxParallel: rnd.int(1, 2), bandwidthCapBps: 100e6 },
        });
        const st = await eventually(
          'a VM moving',
          async () => {
            const x: MigrationStatus = await handle.query(statusQuery);
            return x.vms.some((v) => v.state === 'moving') && x.target ? x : null;
          },
          60_000,
          10,
        );
        const serverId = side === 'source' ? sourceServerId : st.target!.serverId;
        await agents.get(serverId)!.restartDaemon(rnd.int(0, 1500));
        count(fig.faults, `${side} agent daemon restarted`);
        const r = await outcome(handle);
        count(fig.migrations, `${r.phase} (${side} daemon restarted)`);
        expect(['completed', 'rolled-back']).toContain(r.phase);
        expect(r.vms.filter((v) => v.state === 'lost')).toEqual([]);
        const host = await inventory.getHost(hostId);
        if (r.phase === 'rolled-back') expect(host.serverId).toBe(sourceServerId);
        const at = await whereRunning(vmIds);
        for (const vmId of vmIds) expect(at.get(vmId)).toEqual([host.serverId]); // once, where the inventory says
        await settled();
        await invariants(`after a ${side} daemon restart`);
        fig.trials++;
      }
    },
    120_000 + FAULT_TRIALS * 40_000,
  );

  /**
   * A server "reboots" (its agent restarts: the sim keeps VMs in the agent's memory, so they die with it) after one VM
   * switched over and while the next one moves. dhm cannot bring the dead VMs back; what it owes is the truth: the
   * migration ends `failed` naming exactly the VMs that run nowhere, records them `lost` in the inventory, brings every
   * surviving VM home to the source (policy: rollback), and leaves a fleet on which every invariant holds.
   */
  async function rebootMidMigration(side: 'source' | 'target') {
    const { hostId, vmIds, sourceServerId } = await createHost(`${side[0]}${randomBytes(2).toString('hex')}`, 3);
    // One move at a time, ~1 s each, so the reboot lands between the first switchover and the last.
    const handle = await startMigration(temporal.client, temporal.taskQueue, { dedicatedHostId: hostId, policy: { maxParallel: 1, bandwidthCapBps: 100e6 } });
    const st = await eventually(
      'one VM moved, the next one moving',
      async () => {
        const s: MigrationStatus = await handle.query(statusQuery);
        return s.vms.some((v) => v.state === 'moved') && s.vms.some((v) => v.state === 'moving') ? s : null;
      },
      60_000,
      10,
    );
    const rebooted = side === 'source' ? sourceServerId : st.target!.serverId;
    await restartAgent(rebooted);
    count(fig.faults, `${side} agent restarted (server reboot)`);
    const failure = await handle.result().then(
      () => null,
      (err: unknown) => err as { cause?: { type?: string; message?: string } },
    );
    const r = await outcome(handle);
    count(fig.migrations, `${r.phase} (${side} rebooted)`);

    const at = await whereRunning(vmIds);
    const lost = vmIds.filter((v) => at.get(v)!.length === 0).sort();
    // A reboot of either side kills at least the VM that had switched over (target) or the ones still waiting (source).
    expect(lost.length).toBeGreaterThan(0);
    expect(r.phase).toBe('failed');
    expect(failure?.cause?.type).toBe(FailureTypes.VmsLost);
    expect(
      r.vms
        .filter((v) => v.state === 'lost')
        .map((v) => v.vmId)
        .sort(),
    ).toEqual(lost);
    for (const vmId of lost) expect(r.lastError).toContain(vmId);
    // The survivors run once, on the source, where the inventory says; the host is active there again.
    const host = await inventory.getHost(hostId);
    expect(host.state).toBe('active');
    expect(host.serverId).toBe(sourceServerId);
    for (const vmId of vmIds.filter((v) => !lost.includes(v))) expect(at.get(vmId)).toEqual([sourceServerId]);
    // The inventory tells the tenant: lost VMs are `lost` with a reason, and their resources are free again.
    for (const vmId of lost) {
      const vm = await inventory.getVm(vmId);
      expect(vm.state).toBe('lost');
      expect(vm.lostReason).toContain(rebooted);
    }
    await settled();
    const { checkInvariants } = await import('../../client/invariants');
    const report = await checkInvariants({ inventory, agentTls: pki.controlPlane, temporal: temporal.client });
    expect(report.violations).toEqual([]);
    expect(
      report.lostVms
        .filter((l) => l.dedicatedHostId === hostId)
        .map((l) => l.vmId)
        .sort(),
    ).toEqual(lost);
    fig.invariantChecks++;
    // The tenant can close the record; deleting a lost VM frees nothing twice.
    await inventory.deleteVm({ vmId: lost[0]!, actor: 'test' });
    expect((await inventory.getVm(lost[0]!)).state).toBe('deleted');
    await invariants(`after deleting a lost VM (${side} reboot)`);
    fig.trials++;
    return { lost, survivors: vmIds.length - lost.length };
  }

  it('the target server reboots after a switchover: the migration fails naming the lost VM, the others stay on the source', async () => {
    const { lost } = await rebootMidMigration('target');
    process.stdout.write(`target reboot: lost ${lost.join(', ')}\n`);
  }, 120_000);

  it('the source server reboots mid-move: the migration fails naming the lost VMs, the moved one comes home', async () => {
    const { lost, survivors } = await rebootMidMigration('source');
    // The VM that had already switched over to the target survived the source's reboot and was moved back.
    expect(survivors).toBeGreaterThan(0);
    process.stdout.write(`source reboot: lost ${lost.join(', ')}\n`);
  }, 120_000);
});

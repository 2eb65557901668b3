import { randomBytes } from 'node:crypto';
import { createActivities, createAgentDirectory } from '../../activities';
import { startMigration } from '../../client/migrations';
import { createLogger } from '../../common/logger';
import type { MigrationStatus } from '../../common/migration';
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
 * daemon is down, not the server) and an agent process restarted on the same port (a fresh boot id: the sim keeps VMs
 * in memory, so everything it had is gone, as when a server reboots). The VM is never lost by dhm: it runs on exactly
 * one side, or the migration rolled back and it runs on the source; the policy (rollback) decides the rest.
 */
describe(`host agents failing mid-move (seed ${FAULT_SEED}, ${FAULT_TRIALS} trials)`, () => {
  const rnd = suiteRandom('agent-crash');
  const fig = figures('agent-crash');
  const secret = randomBytes(18).toString('base64url');
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
    const a = await startAgent({ serverId, capacity: s.capacity, nicBandwidthBps: s.nicBandwidthBps, timeScale: 20, port: ports.get(serverId) ?? 0, secret, logger });
    ports.set(serverId, Number(new URL(a.url).port));
    agents.set(serverId, a);
    return a;
  }
  /** The agent process dies and a fresh one starts on the same port: a new boot id, nothing in memory. */
  async function restartAgent(serverId: string): Promise<void> {
    await agents.get(serverId)!.stop();
    await startServerAgent(serverId);
  }
  const client = (serverId: string): AgentClient => createAgentClient({ baseUrl: agents.get(serverId)!.url, secret });

  beforeAll(async () => {
    process.stdout.write(`agent-crash: FAULT_SEED=${FAULT_SEED} FAULT_TRIALS=${FAULT_TRIALS}\n`);
    db = await createTestDatabase();
    inventory = createInventory(db.pool);
    for (const s of fleet.servers) await startServerAgent(s.id);
    await inventory.seedFleet(fleet, new Map([...agents].map(([id, a]) => [id, a.url])));
    temporal = await connectTestTemporal();
    const directory = createAgentDirectory({ lookupAgentUrl: async (id) => (await inventory.getServer(id)).agentUrl, secret });
    await temporal.startWorker({ activities: createActivities({ inventory, agents: directory }), maxHeartbeatThrottleInterval: '500ms', defaultHeartbeatThrottleInterval: '500ms' });
    scheduler = await startScheduler({ inventory, databaseUrl: db.url, schedulerId: 'sched-agent-crash', logger, agentSecret: secret, sweepIntervalMs: 500, staleClaimMs: 5000 });
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

  const invariants = (when: string) => assertInvariants(fig, { inventory, agentSecret: secret, temporal: temporal.client }, when);
  const settled = () => eventually('de-provisioning done', async () => (await inventory.listDeprovisionJobs({ state: 'pending' })).length === 0, 30_000, 100);

  it('an agent unreachable for a while (source or target): every VM runs exactly once, where the inventory says', async () => {
    // One host, migrated back and forth: each trial starts from where the previous one left it.
    const { hostId, vmIds } = await createHost(`u${randomBytes(2).toString('hex')}`, 3);
    for (let trial = 0; trial < FAULT_TRIALS; trial++) {
      const sourceServerId = (await inventory.getHost(hostId)).serverId;
      const handle = await startMigration(temporal.client, temporal.taskQueue, { dedicatedHostId: hostId, policy: { maxParallel: rnd.int(1, 2), bandwidthCapBps: 200e6 }, requestedBy: 'operator:faults' });
      const result = handle.result();
      let ended = false;
      void result.catch(() => undefined).finally(() => (ended = true));
      // A moment once the target is known (so either side can be hit), then a random outage.
      const st = await eventually('target reserved', async () => (await handle.query(statusQuery)).target?.serverId ?? (ended ? 'ended' : null), 30_000, 25);
      await faultMoment(rnd.int(0, 3000), () => ended);
      const side = rnd.pick(['source', 'target'] as const);
      const serverId = side === 'source' ? sourceServerId : st;
      if (!ended && serverId !== 'ended') {
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
      fig.trials++;
    }
  }, 60_000 + FAULT_TRIALS * 60_000);

  it('the target agent restarts mid-move: the move fails, the migration rolls back, every VM runs on the source', async () => {
    const { hostId, vmIds, sourceServerId } = await createHost(`t${randomBytes(2).toString('hex')}`, 3);
    const handle = await startMigration(temporal.client, temporal.taskQueue, { dedicatedHostId: hostId, policy: { maxParallel: 3, bandwidthCapBps: 200e6 } });
    const st = await eventually('moves running', async () => {
      const s: MigrationStatus = await handle.query(statusQuery);
      return s.vms.some((v) => v.state === 'moving') && s.target ? s : null;
    }, 30_000, 25);
    await faultMoment(rnd.int(0, 300));
    await restartAgent(st.target!.serverId);
    count(fig.faults, 'target agent restarted');
    const r = await outcome(handle);
    count(fig.migrations, r.phase);
    // A VM that had already switched over to the target died with it: then the migration cannot roll it back.
    const at = await whereRunning(vmIds);
    const movedBeforeCrash = vmIds.filter((v) => at.get(v)!.length === 0);
    if (movedBeforeCrash.length === 0) {
      expect(r.phase).toBe('rolled-back');
      for (const vmId of vmIds) expect(at.get(vmId)).toEqual([sourceServerId]);
      await settled();
      await invariants('after a target agent restart');
    } else {
      // Those VMs died with the restarted target (a rebooted server). Either the migration saw it (failed, naming
      // them) or the restart came after their switchover and it completed; either way the checker names them as lost
      // (the known gap in docs/reliability.md: dhm does not yet watch agents' boot ids).
      expect(['failed', 'completed']).toContain(r.phase);
      if (r.phase === 'failed') expect(JSON.stringify(r)).toContain(movedBeforeCrash[0]!);
      const { checkInvariants } = await import('../../client/invariants');
      const report = await checkInvariants({ inventory, agentSecret: secret, temporal: temporal.client });
      for (const vmId of movedBeforeCrash) expect(report.violations.some((l) => l.startsWith(`vm ${vmId}:`) && l.includes('(lost)'))).toBe(true);
    }
    fig.trials++;
  }, 90_000);

  it('the source agent restarts mid-move: its VMs are gone, and the checker says so (known gap, see docs/reliability.md)', async () => {
    const { hostId, vmIds, sourceServerId } = await createHost(`s${randomBytes(2).toString('hex')}`, 3);
    const handle = await startMigration(temporal.client, temporal.taskQueue, { dedicatedHostId: hostId, policy: { maxParallel: 1, bandwidthCapBps: 200e6 } });
    await eventually('a move running', async () => (await handle.query(statusQuery)).vms.some((v) => v.state === 'moving'), 30_000, 25);
    await restartAgent(sourceServerId);
    count(fig.faults, 'source agent restarted');
    const r = await outcome(handle);
    count(fig.migrations, `${r.phase} (source restarted)`);
    // The sim keeps VMs in the agent's memory: a restarted source agent is a rebooted server, its VMs died with it.
    // The migration cannot bring them back; it ends (today: rolled back, see the report), and what matters here is
    // that nothing hides it: the invariant checker names every VM that is no longer running anywhere.
    expect(['rolled-back', 'failed']).toContain(r.phase);
    const at = await whereRunning(vmIds);
    const lost = vmIds.filter((v) => at.get(v)!.length === 0);
    expect(lost.length).toBeGreaterThan(0);
    for (const vmId of vmIds) expect(at.get(vmId)!.length).toBeLessThanOrEqual(1);
    const { checkInvariants } = await import('../../client/invariants');
    const report = await checkInvariants({ inventory, agentSecret: secret, temporal: temporal.client });
    for (const vmId of lost) expect(report.violations.some((l) => l.startsWith(`vm ${vmId}:`) && l.includes('(lost)'))).toBe(true);
    fig.trials++;
  }, 90_000);
});

import { WorkflowFailedError } from '@temporalio/client';
import { MigrationAlreadyRunningError, MigrationRequestRefused, deleteVmDuringMigration, provisionVmDuringMigration } from '../../client/migrations';
import { FailureTypes, type MigrationStatus } from '../../common/migration';
import { eventually, startTestSystem, type TestSystem } from '../support/system';
import { testFleet } from '../support/fleets';
import { saveHistory } from '../support/histories';

/**
 * Keeps incrementing every VM's guest counter through whichever agent runs it, recording failures and order. A VM's
 * loop ends at its first failure; NOT_FOUND counts as the end of a delete only for a VM the test is deleting.
 */
function guestLoad(sys: TestSystem, firstServerId: string, vmIds: string[]) {
  let stop = false;
  const beingDeleted = new Set<string>();
  const stats = { ops: 0, failures: [] as string[], outOfOrder: [] as string[], endedByDelete: [] as string[] };
  const loops = vmIds.map(async (vmId) => {
    const agent = sys.agent(firstServerId);
    let last: number | null = null;
    while (!stop) {
      try {
        const r = await agent.guestOp(vmId, { kind: 'increment' });
        if (last !== null && r.counter !== last + 1) stats.outOfOrder.push(`${vmId}: ${last} -> ${r.counter}`);
        last = r.counter;
        stats.ops++;
      } catch (err) {
        const code = (err as { code?: string }).code;
        // A VM the tenant deleted answers NOT_FOUND: that is the delete working, not a lost operation.
        if (code === 'NOT_FOUND' && beingDeleted.has(vmId)) {
          stats.endedByDelete.push(vmId);
          return;
        }
        stats.failures.push(`${vmId}: ${String(err)}`);
        return;
      }
    }
  });
  return {
    stats,
    /** Called before the test asks to delete `vmId`. */
    deleting(vmId: string) {
      beingDeleted.add(vmId);
    },
    async stop() {
      stop = true;
      await Promise.all(loops);
    },
  };
}

const vmState = (st: MigrationStatus, vmId: string) => st.vms.find((v) => v.vmId === vmId)?.state;

describe('migrating a dedicated host (claims.md, one test per row)', () => {
  let sys: TestSystem;
  beforeAll(async () => {
    sys = await startTestSystem({ fleet: testFleet({ servers: 8 }), timeScale: 10 });
  });
  afterAll(async () => {
    await sys?.stop();
  });

  it('claims 1a–1g, 2–8: a host with 8 VMs moves to a clone while tenants operate, provision and delete; the old server is de-provisioned', async () => {
    const { hostId, tenantId, vmIds } = await sys.createHostWithVms({ vms: 8, memoryMiB: [4096, 2048, 3072, 1024], dirtyRateMiBps: [20, 0, 50, 5] });
    const hostBefore = (await sys.inventory.getHost(hostId))!;
    const sourceIncarnation = (await sys.inventory.getIncarnation(hostBefore.currentIncarnationId))!;
    const sourceServerId = sourceIncarnation.serverId;
    const load = guestLoad(sys, sourceServerId, vmIds);

    // 1a, 1b: the request creates the migration object.
    const handle = await sys.startMigration(hostId, { maxParallel: 1, bandwidthCapBps: 150e6, maxDowntimeMs: 300 });
    expect(handle.workflowId).toBe(`migration-${hostId}`);

    // The tenant's requests, recorded before they are sent and once answered, so the view can be checked against them.
    const asked = { deleting: new Set<string>(), deleted: new Set<string>(), creating: new Set<string>(), created: new Set<string>() };
    const deleteVm = async (args: { vmId: string; requestId?: string }) => {
      asked.deleting.add(args.vmId);
      load.deleting(args.vmId);
      const r = await deleteVmDuringMigration(sys.temporal.client, hostId, args);
      asked.deleted.add(args.vmId);
      return r;
    };
    const provisionVm = async (args: { vmId: string; name: string; spec: { vcpus: number; memoryMiB: number; diskGiB: number } }) => {
      asked.creating.add(args.vmId);
      const r = await provisionVmDuringMigration(sys.temporal.client, hostId, args);
      asked.created.add(args.vmId);
      return r;
    };

    // The tenant's view of the host never loses a VM, never shows one twice or one it should not (claim 3): at every
    // poll, the running VMs listed are all of the host's VMs — the first ones and those provisioned, less those
    // deleted — where a request in flight may or may not show yet.
    let listChecks = 0;
    const viewProblems: string[] = [];
    const watchList = (async () => {
      for (;;) {
        const st = await sys.status(hostId).catch(() => null);
        const createdBefore = [...asked.created];
        const deletedBefore = new Set(asked.deleted);
        const live = (await sys.inventory.listVms({ dedicatedHostId: hostId })).filter((v) => v.state === 'running').map((v) => v.id);
        const required = [...vmIds, ...createdBefore].filter((id) => !asked.deleting.has(id));
        const allowed = new Set([...vmIds, ...asked.creating].filter((id) => !deletedBefore.has(id)));
        const missing = required.filter((id) => !live.includes(id));
        const extra = live.filter((id) => !allowed.has(id));
        if (missing.length || extra.length || new Set(live).size !== live.length)
          viewProblems.push(`check ${listChecks}: missing [${missing}], extra [${extra}], listed [${live}]`);
        listChecks++;
        if (st && (st.phase === 'completed' || st.phase === 'rolled-back' || st.phase === 'failed')) return;
        await new Promise((r) => setTimeout(r, 100)); // poll interval; the loop ends on the terminal phase condition
      }
    })();

    // 1c, 1d: a second server is identified and a clone made there.
    const migrating = await eventually('VMs moving', async () => {
      const st = await sys.status(hostId);
      return st.phase === 'migrating-vms' && st.vms.some((v) => v.state === 'moving') ? st : null;
    });
    const targetServerId = migrating.target!.serverId;
    expect(targetServerId).not.toBe(sourceServerId);
    const target = (await sys.inventory.getServer(targetServerId))!;
    const source = (await sys.inventory.getServer(sourceServerId))!;
    // Claim 2: the target's configuration substantially matches the source's.
    expect(target.zone).toBe(source.zone);
    expect(target.resourceClass).toBe(source.resourceClass);
    expect(target.capacity.vcpus).toBeGreaterThanOrEqual(source.capacity.vcpus);
    expect(target.capacity.memoryMiB).toBeGreaterThanOrEqual(source.capacity.memoryMiB);
    expect(target.capacity.diskGiB).toBeGreaterThanOrEqual(source.capacity.diskGiB);
    // Claim 4: the clone gets the same types and amounts of resources as the logical host.
    const clone = (await sys.inventory.getIncarnation(migrating.target!.incarnationId))!;
    expect(clone.capacity).toEqual(hostBefore.capacity);
    expect(clone.role).toBe('clone');

    // Claim 8: delete a VM while it is moving.
    const moving = migrating.vms.find((v) => v.state === 'moving')!;
    const delMoving = await deleteVm({ vmId: moving.vmId });
    expect(delMoving.wasState).toBe('moving');

    // Claims 1f, 6, 7: two VMs provisioned mid-migration land on the clone.
    const p1 = await provisionVm({ vmId: 'vm-new-1', name: 'new-1', spec: { vcpus: 2, memoryMiB: 4096, diskGiB: 20 } });
    const p2 = await provisionVm({ vmId: 'vm-new-2', name: 'new-2', spec: { vcpus: 2, memoryMiB: 2048, diskGiB: 20 } });
    for (const p of [p1, p2]) {
      expect(p.incarnationId).toBe(clone.id);
      expect(p.dedicatedHostId).toBe(hostId);
      expect((await sys.agent(targetServerId).getVm(p.vmId))?.state).toBe('running');
    }
    // Claim 6: added to the clone's VM list, and the clone's available resources updated.
    const cloneAfter = (await sys.inventory.getIncarnation(clone.id))!;
    expect(cloneAfter.allocated.memoryMiB).toBeGreaterThanOrEqual(4096 + 2048);
    expect(cloneAfter.available.memoryMiB).toBe(cloneAfter.capacity.memoryMiB - cloneAfter.allocated.memoryMiB);
    // Claim 7: the aggregate check refuses what the host and clone together cannot hold, with the reason.
    const refused = await provisionVm({ vmId: 'vm-too-big', name: 'too-big', spec: { vcpus: 2, memoryMiB: 60000, diskGiB: 20 } }).catch((e) => e);
    expect(refused).toBeInstanceOf(MigrationRequestRefused);
    expect(refused.type).toBe('INSUFFICIENT_CAPACITY');
    expect(refused.message).toMatch(/memoryMiB/);
    await expect(sys.inventory.getVm('vm-too-big')).rejects.toThrow(/no VM/);

    // Claim 8: delete a VM that already moved, and one still waiting.
    const moved = await eventually('a VM moved', async () => (await sys.status(hostId)).vms.find((v) => v.state === 'moved'));
    const delMoved = await deleteVm({ vmId: moved.vmId });
    expect(delMoved.wasState).toBe('moved');
    const pending = (await sys.status(hostId)).vms.find((v) => v.state === 'pending');
    expect(pending).toBeDefined();
    const delPending = await deleteVm({ vmId: pending!.vmId });
    expect(delPending.wasState).toBe('pending');
    // A repeated request (same id) gets the first answer and deletes nothing twice.
    const again = await deleteVm({ vmId: pending!.vmId, requestId: 'del-pending-twice' });
    expect(again.deleted).toBe(true);

    // 1g, 5: completion, de-provisioning by the scheduler, migration object completed.
    const result = await handle.result();
    await watchList;
    await load.stop();
    expect(result.phase).toBe('completed');
    const st = await sys.status(hostId);
    expect(st.phase).toBe('completed');
    for (const id of [moving.vmId, moved.vmId, pending!.vmId]) expect(vmState(st, id)).toBe('deleted');

    // Claim 1e: no guest operation failed or was lost while the VMs moved.
    expect(load.stats.failures).toEqual([]);
    expect(load.stats.outOfOrder).toEqual([]);
    expect(load.stats.ops).toBeGreaterThan(vmIds.length * 5);
    // Exactly the deleted VMs' loops ended, each on NOT_FOUND once its VM was gone.
    expect([...load.stats.endedByDelete].sort()).toEqual([moving.vmId, moved.vmId, pending!.vmId].sort());
    expect(viewProblems).toEqual([]);
    expect(listChecks).toBeGreaterThan(3);

    // Claim 3: same id, tenant and capacity; the clone is now the host.
    const hostAfter = (await sys.inventory.getHost(hostId))!;
    expect(hostAfter.id).toBe(hostId);
    expect(hostAfter.tenantId).toBe(tenantId);
    expect(hostAfter.capacity).toEqual(hostBefore.capacity);
    expect(hostAfter.state).toBe('active');
    expect(hostAfter.currentIncarnationId).toBe(clone.id);
    const liveVms = (await sys.inventory.listVms({ dedicatedHostId: hostId })).filter((v) => v.state === 'running');
    expect(liveVms.map((v) => v.id).sort()).toEqual(
      [...vmIds.filter((id) => ![moving.vmId, moved.vmId, pending!.vmId].includes(id)), 'vm-new-1', 'vm-new-2'].sort(),
    );
    for (const vm of liveVms) {
      expect(vm.incarnationId).toBe(clone.id);
      expect((await sys.agent(targetServerId).getVm(vm.id))?.state).toBe('running');
      expect(await sys.agent(sourceServerId).getVm(vm.id)).toBeNull();
    }
    // Claim 5: the old incarnation is deleted and the scheduler returned its server to the pool.
    expect((await sys.inventory.getIncarnation(sourceIncarnation.id))!.state).toBe('deleted');
    await eventually('old server back in the pool', async () => (await sys.inventory.getServer(sourceServerId))!.state === 'available', 20_000);
    expect((await sys.agent(sourceServerId).info()).incarnations).not.toContain(sourceIncarnation.id);
    expect((await sys.inventory.getServer(targetServerId))!.state).toBe('allocated');
    await saveHistory(sys, hostId, 'completed-with-requests');
  });

  it('one live migration per host: a second request is refused, a later one after the first ended is allowed', async () => {
    const { hostId } = await sys.createHostWithVms({ vms: 2, memoryMiB: [1024] });
    const first = await sys.startMigration(hostId, { maxParallel: 2 });
    await expect(sys.startMigration(hostId)).rejects.toBeInstanceOf(MigrationAlreadyRunningError);
    expect((await first.result()).phase).toBe('completed');
    const second = await sys.startMigration(hostId);
    expect((await second.result()).phase).toBe('completed');
  });

  it('cancel mid-way rolls everything back: VMs on the source, clone gone, target available, nothing leaked', async () => {
    const { hostId, vmIds } = await sys.createHostWithVms({ vms: 4, memoryMiB: [4096, 2048] });
    const host = (await sys.inventory.getHost(hostId))!;
    const sourceInc = (await sys.inventory.getIncarnation(host.currentIncarnationId))!;
    const serversBefore = await sys.inventory.listServers();
    const handle = await sys.startMigration(hostId, { maxParallel: 1, bandwidthCapBps: 200e6 });
    const st = await eventually('one VM moved and one moving', async () => {
      const s = await sys.status(hostId);
      return s.vms.some((v) => v.state === 'moved') && s.vms.some((v) => v.state === 'moving') ? s : null;
    });
    // A VM provisioned mid-way must come home too.
    await provisionVmDuringMigration(sys.temporal.client, hostId, {
      vmId: `vm-cancel-new-${hostId}`,
      name: 'new',
      spec: { vcpus: 1, memoryMiB: 1024, diskGiB: 10 },
    });
    await handle.cancel();
    const err = await handle.result().catch((e) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const final = await sys.status(hostId);
    expect([final.phase, final.lastError, final.vms.filter((v) => v.error).map((v) => v.error)]).toEqual(['rolled-back', 'cancelled by request', []]);
    const after = (await sys.inventory.getHost(hostId))!;
    expect(after.state).toBe('active');
    expect(after.currentIncarnationId).toBe(sourceInc.id);
    for (const vm of (await sys.inventory.listVms({ dedicatedHostId: hostId })).filter((v) => v.state === 'running')) {
      expect(vm.incarnationId).toBe(sourceInc.id);
      expect((await sys.agent(sourceInc.serverId).getVm(vm.id))?.state).toBe('running');
    }
    expect(vmIds.length).toBe(4);
    const target = st.target!;
    expect((await sys.inventory.getIncarnation(target.incarnationId))!.state).toBe('deleted');
    expect((await sys.inventory.getServer(target.serverId))!.state).toBe('available');
    expect((await sys.agent(target.serverId).info()).incarnations).not.toContain(target.incarnationId);
    // No capacity leaked: the source incarnation holds exactly its VMs, every server is as it was.
    const inc = (await sys.inventory.getIncarnation(sourceInc.id))!;
    const sum = (await sys.inventory.listVms({ dedicatedHostId: hostId })).filter((v) => v.state === 'running').reduce((a, v) => a + v.spec.memoryMiB, 0);
    expect(inc.allocated.memoryMiB).toBe(sum);
    const serversAfter = await sys.inventory.listServers();
    expect(serversAfter.map((s) => [s.id, s.state])).toEqual(serversBefore.map((s) => [s.id, s.state]));
    await saveHistory(sys, hostId, 'cancelled');
  });

  it('a VM that cannot converge: policy rollback rolls back and says why; retry-with-auto-converge completes', async () => {
    const { hostId } = await sys.createHostWithVms({ vms: 2, memoryMiB: [2048], dirtyRateMiBps: [400] });
    const handle = await sys.startMigration(hostId, { bandwidthCapBps: 100e6, autoConverge: false, onVmFailure: 'rollback' });
    const err = await handle.result().catch((e) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const st = await sys.status(hostId);
    expect(st.phase).toBe('rolled-back');
    expect(st.lastError).toContain(FailureTypes.NotConverging);
    expect(st.vms.some((v) => v.state === 'failed' && (v.error ?? '').includes(FailureTypes.NotConverging))).toBe(true);
    expect((await sys.inventory.getHost(hostId))!.state).toBe('active');

    const retry = await sys.startMigration(hostId, { bandwidthCapBps: 100e6, autoConverge: false, onVmFailure: 'retry-with-auto-converge' });
    expect((await retry.result()).phase).toBe('completed');
    const st2 = await sys.status(hostId);
    expect(st2.vms.every((v) => v.state === 'moved' && v.attempts === 2)).toBe(true);
    await saveHistory(sys, hostId, 'retry-auto-converge');
  });

  it('two hosts racing for one free server: one gets it, the other fails cleanly; nothing double-booked', async () => {
    const race = await startTestSystem({ fleet: testFleet({ servers: 3 }), timeScale: 200 });
    try {
      const a = await race.createHostWithVms({ vms: 1 });
      const b = await race.createHostWithVms({ vms: 1 });
      const [ha, hb] = await Promise.all([race.startMigration(a.hostId), race.startMigration(b.hostId)]);
      const results = await Promise.all([
        ha.result().then(
          (r) => r.phase,
          () => 'failed',
        ),
        hb.result().then(
          (r) => r.phase,
          () => 'failed',
        ),
      ]);
      expect([...results].sort()).toEqual(['completed', 'failed']);
      const loser = results[0] === 'completed' ? b.hostId : a.hostId;
      const lst = await race.status(loser);
      expect(lst.lastError).toMatch(/no .*server|NO_MATCHING_SERVER|matching/i);
      expect((await race.inventory.getHost(loser))!.state).toBe('active');
      const servers = await race.inventory.listServers();
      expect(servers.filter((s) => s.state === 'reserved')).toEqual([]);
    } finally {
      await race.stop();
    }
  });

  it('bad input is refused before anything changes, naming the field', async () => {
    const { hostId } = await sys.createHostWithVms({ vms: 1 });
    await expect(sys.startMigration(hostId, { maxParallel: 0 })).rejects.toThrow(/policy\.maxParallel/);
    await expect(sys.startMigration(hostId, { maxDowntimeMs: -5 })).rejects.toThrow(/policy\.maxDowntimeMs/);
    await expect(sys.startMigration(hostId, { bogus: 1 } as never)).rejects.toThrow(/bogus/);
    // Unknown host: the first activity refuses it and nothing is created.
    const unknown = await sys.startMigration('no-such-host');
    await expect(unknown.result()).rejects.toThrow(WorkflowFailedError);
    expect((await sys.status('no-such-host')).phase).toBe('failed');
    // A target that is the source, or of another class: refused with the field named, host back to active.
    const host = (await sys.inventory.getHost(hostId))!;
    const src = (await sys.inventory.getIncarnation(host.currentIncarnationId))!.serverId;
    const same = await sys.startMigration(hostId, {}, src);
    await expect(same.result()).rejects.toThrow(WorkflowFailedError);
    expect((await sys.status(hostId)).lastError).toMatch(/targetServerId/);
    expect((await sys.inventory.getHost(hostId))!.state).toBe('active');
    const other = await sys.startMigration(hostId, {}, 'zone-a-small-1');
    await expect(other.result()).rejects.toThrow(WorkflowFailedError);
    expect((await sys.status(hostId)).lastError).toMatch(/targetServerId/);
    expect((await sys.inventory.getServer('zone-a-small-1'))!.state).toBe('available');
    // Malformed update arguments are rejected by the validator.
    const { hostId: h2 } = await sys.createHostWithVms({ vms: 2, memoryMiB: [4096] });
    const run = await sys.startMigration(h2, { maxParallel: 1, bandwidthCapBps: 100e6 });
    await eventually('migrating', async () => (await sys.status(h2)).phase === 'migrating-vms');
    const bad = await provisionVmDuringMigration(sys.temporal.client, h2, {
      vmId: 'vm-bad',
      name: 'bad',
      spec: { vcpus: 0, memoryMiB: 1024, diskGiB: 1 },
    }).catch((e) => e);
    expect(bad).toBeInstanceOf(MigrationRequestRefused);
    expect(bad.message).toMatch(/spec\.vcpus/);
    await expect(sys.inventory.getVm('vm-bad')).rejects.toThrow(/no VM/);
    expect((await run.result()).phase).toBe('completed');
  });

  // Last in this file: it leaves a clone (and its server) behind on purpose, for an operator.
  it('a rollback that cannot move a VM back ends failed: the VM is stranded on the clone, which is kept', async () => {
    const { hostId } = await sys.createHostWithVms({ vms: 2, memoryMiB: [2048], dirtyRateMiBps: [0] });
    const handle = await sys.startMigration(hostId, { maxParallel: 1, bandwidthCapBps: 200e6 });
    const st = await eventually('one VM moved and one moving', async () => {
      const s = await sys.status(hostId);
      return s.vms.some((v) => v.state === 'moved') && s.vms.some((v) => v.state === 'moving') ? s : null;
    });
    const moved = st.vms.find((v) => v.state === 'moved')!;
    const target = st.target!;
    // The next move out of the clone's server (the move back) fails at its first round.
    await sys.agent(target.serverId).setFaults({ failMigrationAtRound: 0 });
    try {
      await handle.cancel();
      const err = await handle.result().catch((e) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect((err as WorkflowFailedError).cause).toMatchObject({ type: FailureTypes.RollbackIncomplete });
      const final = await sys.status(hostId);
      expect(final.phase).toBe('failed');
      expect(final.lastError).toContain(`1 VM(s) remain on the clone (${moved.vmId})`);
      expect(final.vms.filter((v) => v.state === 'stranded').map((v) => v.vmId)).toEqual([moved.vmId]);
      expect(final.vms.find((v) => v.vmId === moved.vmId)!.error).toMatch(/^could not move back: /);
      expect(final.counts.stranded).toBe(1);
      // The clone is kept with the VM running on it: deleting it would lose the VM.
      expect((await sys.inventory.getIncarnation(target.incarnationId))!.state).not.toBe('deleted');
      expect((await sys.agent(target.serverId).getVm(moved.vmId))?.state).toBe('running');
      await saveHistory(sys, hostId, 'rollback-incomplete');
    } finally {
      await sys.agent(target.serverId).setFaults({ failMigrationAtRound: null });
    }
  });
});

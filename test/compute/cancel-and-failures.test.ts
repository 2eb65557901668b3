import { AgentError } from '../../compute/agent-client';
import { peerClientTls } from '../../compute/agent-tls';
import { testAgentPki } from '../support/agent-pki';
import { createPeerClient } from '../../compute/peer-client';
import { Agents, finished, GIB, HOST_CAPACITY, spec, startPair, waitFor } from './helpers';

const rejection = async (p: Promise<unknown>): Promise<AgentError> => {
  try {
    await p;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected an AgentError');
};

describe('cancel, completion and failures', () => {
  const agents = new Agents();
  afterEach(() => agents.stopAll());

  async function setup(timeScale: number, memoryMiB = 8192, workload = { dirtyRateMiBps: 100, workingSetMiB: 1024 }) {
    const pair = await startPair(agents, { timeScale });
    await pair.source.client.createVm({ vmId: 'vm', incarnationId: 'src', spec: spec(memoryMiB, workload) });
    for (let i = 0; i < 7; i++) await pair.source.client.guestOp('vm', { kind: 'increment' });
    const start = (jobId: string, maxDowntimeMs = 300) =>
      pair.source.client.startMigration({
        jobId,
        vmId: 'vm',
        target: { agentUrl: pair.target.url, incarnationId: 'dst' },
        maxDowntimeMs,
        autoConverge: false,
      });
    return { ...pair, start };
  }

  test('cancel before switchover: the VM stays on the source, the job is cancelled, the target is freed', async () => {
    const { source, target, start } = await setup(50); // ~20 s simulated, ~0.4 s of wall time
    await start('c-1');
    await waitFor('1 GiB sent', async () => (await source.client.getMigration('c-1'))!.bytesSent >= GIB);
    expect((await target.client.getIncarnation('dst'))!.free.memoryMiB).toBe(HOST_CAPACITY.memoryMiB - 8192);

    const cancelled = await source.client.cancelMigration('c-1');
    expect(cancelled).toMatchObject({ state: 'cancelled', error: { code: 'Cancelled' } });
    expect(cancelled.totalTimeMs).toBeGreaterThan(0);
    expect(await source.client.getVm('vm')).toMatchObject({ state: 'running', serverId: 'server-a', counter: 7 });
    expect(await source.client.guestOp('vm', { kind: 'increment' })).toEqual({ vmId: 'vm', counter: 8, servedBy: 'server-a' });
    expect(await target.client.getVm('vm')).toBeNull();
    expect((await target.client.getIncarnation('dst'))!.free.memoryMiB).toBe(HOST_CAPACITY.memoryMiB);

    // Idempotent, and frozen: no more progress after a cancel.
    expect(await source.client.cancelMigration('c-1')).toEqual(cancelled);
    expect(await source.client.getMigration('c-1')).toEqual(cancelled);
    // The same job id again returns the cancelled job; a new id may start over.
    expect(await start('c-1')).toEqual(cancelled);
    expect((await start('c-2')).state).toBe('running');
  });

  test('cancel during the stop-and-copy: parked guest operations are served by the source', async () => {
    // Round 0 (2.1 s simulated) leaves 859 MiB dirty, which fits a 5 s downtime limit: the VM pauses for ~1.8 s.
    const { source, start } = await setup(10, 1024, { dirtyRateMiBps: 400, workingSetMiB: 1024 });
    await start('p-1', 5000);
    await waitFor('the VM to pause for switchover', async () => (await source.client.getVm('vm'))!.state === 'paused-for-switchover');
    await source.client.setFaults({ linkSlowdown: 1e6 }); // hold the stop-and-copy open for as long as the test needs
    let answered = false;
    const op = source.client.guestOp('vm', { kind: 'increment' }).finally(() => (answered = true));
    expect(answered).toBe(false);

    const cancelled = await source.client.cancelMigration('p-1');
    expect(cancelled.state).toBe('cancelled');
    expect(await op).toEqual({ vmId: 'vm', counter: 8, servedBy: 'server-a' });
    expect((await source.client.getVm('vm'))!.state).toBe('running');
  });

  test('after completion: cancel is a clean 409, and the migration cannot complete a second time', async () => {
    const { source, target, start } = await setup(1000);
    await start('done-1');
    const done = await finished(source.client, 'done-1');
    expect(done.state).toBe('completed');
    for (let i = 0; i < 3; i++) await target.client.guestOp('vm', { kind: 'increment' });

    const err = await rejection(source.client.cancelMigration('done-1'));
    expect(err).toMatchObject({ status: 409, code: 'MIGRATION_COMPLETED', retryable: false });
    expect(await source.client.getMigration('done-1')).toEqual(done);

    // The same job id returns the finished job; nothing runs again.
    expect(await start('done-1')).toEqual(done);
    // A new job for the VM on its old server: it is not there any more.
    const moved = await rejection(start('done-2'));
    expect(moved).toMatchObject({ status: 409, code: 'VM_MOVED', movedTo: target.url, field: 'vmId' });
    // A replayed commit (as after a lost reply) changes nothing on the target; the reservation cannot be undone.
    const peer = createPeerClient({ tls: peerClientTls((await testAgentPki()).server('server-a')) });
    expect(await peer.commit(target.url, 'done-1', { vmId: 'vm', spec: spec(8192, { dirtyRateMiBps: 100, workingSetMiB: 1024 }), counter: 0 })).toMatchObject({
      counter: 10,
    });
    expect(await rejection(peer.release(target.url, 'done-1'))).toMatchObject({ status: 409, code: 'INCOMING_COMMITTED' });

    expect(await source.client.getVm('vm')).toBeNull();
    expect(await target.client.getVm('vm')).toMatchObject({ counter: 10, state: 'running', serverId: 'server-b' });
    expect((await target.client.getIncarnation('dst'))!.vmIds).toEqual(['vm']);
    expect((await source.client.getIncarnation('src'))!.free).toEqual(HOST_CAPACITY);
  });

  test('deleting a VM mid-migration cancels the migration first; deleting a moved VM follows it', async () => {
    const { source, target, start } = await setup(50);
    await start('d-1');
    await waitFor('some progress', async () => (await source.client.getMigration('d-1'))!.bytesSent > 0);
    await source.client.deleteVm('vm');
    expect(await source.client.getMigration('d-1')).toMatchObject({ state: 'cancelled' });
    expect(await source.client.getVm('vm')).toBeNull();
    expect((await source.client.getIncarnation('src'))!.free).toEqual(HOST_CAPACITY);
    expect((await target.client.getIncarnation('dst'))!.free).toEqual(HOST_CAPACITY);
    await source.client.deleteVm('vm'); // already gone: fine

    await source.client.createVm({ vmId: 'vm2', incarnationId: 'src', spec: spec(1024) });
    await source.client.startMigration({
      jobId: 'd-2',
      vmId: 'vm2',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 300,
      autoConverge: false,
    });
    expect((await finished(source.client, 'd-2')).state).toBe('completed');
    await source.client.deleteVm('vm2'); // through the old server: followed to the new one
    expect(await target.client.getVm('vm2')).toBeNull();
    expect((await target.client.getIncarnation('dst'))!.free).toEqual(HOST_CAPACITY);
  });

  test('tearing down an incarnation deletes its VMs and cancels their migrations', async () => {
    const { source, target, start } = await setup(50);
    await start('t-1');
    await waitFor('some progress', async () => (await source.client.getMigration('t-1'))!.bytesSent > 0);
    await source.client.teardownIncarnation('src');
    expect(await source.client.getMigration('t-1')).toMatchObject({ state: 'cancelled' });
    expect(await source.client.getVm('vm')).toBeNull();
    expect(await source.client.getIncarnation('src')).toBeNull();
    expect((await source.client.info()).incarnations).toEqual([]);
    expect((await target.client.getIncarnation('dst'))!.free).toEqual(HOST_CAPACITY);
    await source.client.teardownIncarnation('src'); // idempotent
  });

  test('a target that becomes unreachable before switchover: TargetUnavailable, the VM stays on the source', async () => {
    const { source, target, start } = await setup(100); // ~20 s simulated, ~0.2 s of wall time
    await start('u-1');
    await target.client.setFaults({ unreachable: true });
    const job = await finished(source.client, 'u-1');
    expect(job).toMatchObject({ state: 'failed', error: { code: 'TargetUnavailable' } });
    expect(await source.client.getVm('vm')).toMatchObject({ state: 'running', counter: 7 });
    expect(await source.client.guestOp('vm', { kind: 'increment' })).toMatchObject({ counter: 8, servedBy: 'server-a' });

    // While unreachable, a new migration fails at once with the same reason (nothing reserved anywhere).
    const early = await start('u-2');
    expect(early).toMatchObject({ state: 'failed', error: { code: 'TargetUnavailable' } });

    await target.client.setFaults({ unreachable: false });
    expect(await target.client.getVm('vm')).toBeNull();
    // u-1's reservation could not be released while the target was down; the next attempt for the VM replaces it.
    await start('u-3');
    expect((await finished(source.client, 'u-3')).state).toBe('completed');
    expect(await target.client.getVm('vm')).toMatchObject({ counter: 8 });
    expect((await target.client.getIncarnation('dst'))!.used.memoryMiB).toBe(8192);
  });

  test('a target that restarts mid-migration has lost the reservation: TargetUnavailable, the VM stays on the source', async () => {
    const { source, target, start } = await setup(100);
    const port = Number(new URL(target.url).port);
    await start('r-1');
    await target.agent.stop();
    const restarted = await agents.start('server-b', { port, timeScale: 100 });
    expect(restarted.url).toBe(target.url);
    const job = await finished(source.client, 'r-1');
    expect(job).toMatchObject({ state: 'failed', error: { code: 'TargetUnavailable' } });
    expect(await source.client.getVm('vm')).toMatchObject({ state: 'running', counter: 7 });
  });
});

import { eventually, startTestSystem, type TestSystem } from '../support/system';
import { testFleet } from '../support/fleets';
import { MAX_ATTEMPTS_TARGET_UNAVAILABLE } from '../../workflows/moves';
import type { MigrationJob } from '../../compute/agent-api';
import { saveHistory } from '../support/histories';

/**
 * A move whose target's agent does not answer (a busy or restarting agent: benchmark 4 at 64 hosts had accepts and
 * commits time out) is tried again after a backoff; it used to roll the whole host back. A target that stays away
 * still ends the migration, after a bounded number of attempts. The sim's move sends everything, then its commit to the
 * unreachable target fails: `TargetUnavailable`, the VM resumed on the source.
 */
describe('a target agent that does not answer', () => {
  let sys: TestSystem;
  beforeAll(async () => {
    sys = await startTestSystem({ fleet: testFleet({ servers: 4 }), timeScale: 20 });
  });
  afterAll(async () => {
    await sys?.stop();
  });

  /** Starts a migration, makes its target unreachable during the first move, and returns what is needed to watch it. */
  async function migrateWithUnreachableTarget() {
    const { hostId, vmIds } = await sys.createHostWithVms({ vms: 2, memoryMiB: [2048, 1024], dirtyRateMiBps: [5, 5] });
    // 2 GiB at 50 MB/s: ~43 s of sim time, ~2 s here, long enough to cut the target while it runs.
    const handle = await sys.startMigration(hostId, { maxParallel: 1, bandwidthCapBps: 50e6 });
    const st = await eventually('source and target chosen', async () => {
      const st = await sys.status(hostId);
      return st.source && st.target ? { source: st.source.serverId, target: st.target.serverId } : null;
    });
    const first = { ...st, jobId: await runningMove(hostId, vmIds[0]!, st.source) };
    await sys.agent(first.target).setFaults({ unreachable: true });
    return { hostId, vmIds, handle, ...first };
  }

  /** The job id of the VM's move once it runs on the source (a job other than `previous`). */
  const runningMove = (hostId: string, vmId: string, source: string, previous?: string) =>
    eventually(
      `a move of ${vmId} running on the source`,
      async () => {
        const vm = (await sys.status(hostId)).vms.find((v) => v.vmId === vmId);
        if (vm?.state !== 'moving' || !vm.jobId || vm.jobId === previous) return null;
        const job = await sys.agent(source).getMigration(vm.jobId);
        return job?.state === 'running' ? vm.jobId : null;
      },
      60_000,
      25,
    );

  const failedJob = (serverId: string, jobId: string) =>
    eventually(
      `job ${jobId} failed on the source`,
      async () => {
        const job = await sys.agent(serverId).getMigration(jobId);
        return job && job.state !== 'running' ? job : null;
      },
      60_000,
      50,
    );

  const expectTargetUnavailable = (job: MigrationJob) => {
    // The fault fired: the move failed because the target did not answer, not for another reason.
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('TargetUnavailable');
  };

  it('back within the backoff: the move is tried again and the migration completes', async () => {
    const m = await migrateWithUnreachableTarget();
    expectTargetUnavailable(await failedJob(m.source, m.jobId));
    await sys.agent(m.target).setFaults({ unreachable: false });

    const result = await m.handle.result();
    expect(result.phase).toBe('completed');
    await saveHistory(sys, m.hostId, 'target-unavailable-retried');
    const st = await sys.status(m.hostId);
    const first = st.vms.find((v) => v.vmId === m.vmIds[0])!;
    expect(first.state).toBe('moved');
    expect(first.attempts).toBe(2);
    expect(first.jobId).not.toBe(m.jobId); // a new job, not the failed one followed again
    expect((await sys.inventory.getHost(m.hostId)).serverId).toBe(m.target);
    for (const vmId of m.vmIds) expect(await sys.agent(m.target).getVm(vmId)).not.toBeNull();
  }, 120_000);

  it(`every attempt meets it: after ${MAX_ATTEMPTS_TARGET_UNAVAILABLE} attempts the migration rolls back, the VMs on the source`, async () => {
    const m = await migrateWithUnreachableTarget();
    // The target is cut during each attempt's move and back in between: settling a failed move asks both agents where
    // the VM is, so a target away for good would hold the migration there (never guessing) rather than roll it back.
    let jobId = m.jobId;
    for (let attempt = 1; ; attempt++) {
      expectTargetUnavailable(await failedJob(m.source, jobId));
      await sys.agent(m.target).setFaults({ unreachable: false });
      if (attempt === MAX_ATTEMPTS_TARGET_UNAVAILABLE) break;
      jobId = await runningMove(m.hostId, m.vmIds[0]!, m.source, jobId);
      await sys.agent(m.target).setFaults({ unreachable: true });
    }

    // A rollback ends the workflow failed, with the reason.
    await expect(m.handle.result()).rejects.toMatchObject({ cause: { message: expect.stringContaining('TARGET_UNAVAILABLE') } });
    const st = await sys.status(m.hostId);
    expect(st.phase).toBe('rolled-back');
    expect(st.vms.find((v) => v.vmId === m.vmIds[0])!.attempts).toBe(MAX_ATTEMPTS_TARGET_UNAVAILABLE);
    expect((await sys.inventory.getHost(m.hostId)).serverId).toBe(m.source);
    for (const vmId of m.vmIds) expect(await sys.agent(m.source).getVm(vmId)).not.toBeNull();
  }, 180_000);
});

import { CancellationScope, allHandlersFinished, condition, patched } from '@temporalio/workflow';
import { FailureTypes, type VmMigrationStatus } from '../common/migration';
import { call, moveSteps, steps } from './activity-calls';
import { failureOf, nonRetryable } from './failures';
import { findLost, recordLost } from './lost-vms';
import type { MigrationState } from './migration-state';
import type { Moves } from './moves';
import { escapeMarkdown } from './details';

/**
 * Cancel or an unrecoverable failure: the compensations, in reverse, where no cancel can interrupt them. Stop the
 * moves in flight, let accepted tenant requests finish, bring every VM on the clone (moved or newly provisioned) home
 * to the source, then delete the clone and release the target. It always ends the workflow with a failure that says
 * how it ended: rolled back (cancelled or failed), VMs lost, or a rollback that could not bring every VM home.
 */
export async function rollBack(state: MigrationState, moves: Moves, reason: string, cancelled: boolean): Promise<never> {
  state.rollingBack(reason);
  await CancellationScope.nonCancellable(async () => {
    await moves.cancelAll();
    const parallel = patched('rollback-concurrency-from-link')
      ? (back: readonly VmMigrationStatus[]) => moves.rollbackConcurrency(back)
      : () => state.policy.maxParallel;
    await condition(allHandlersFinished);
    const reportsLost = patched('report-lost-vms');
    const { source, target } = state;
    if (reportsLost && target && source) {
      // Only VMs that still run somewhere can be brought home, and the host stays on the source: a source agent
      // that restarted (a rebooted server) needs its incarnation back.
      await findLost(
        state,
        state.vms.filter((v) => v.state !== 'deleted' && v.state !== 'lost'),
      );
      await call(steps.ensureIncarnationOnAgent, `make sure ${source.incarnationId} exists on ${source.serverId}`, {
        server: source,
        capacity: state.status.capacity!,
      });
    }
    if (target && source) {
      await bringHome(state, source, target, parallel);
      const stranded = state.vmsIn('stranded');
      if (reportsLost) await recordLost(state);
      if (stranded.length) {
        // The clone still runs VMs: deleting it would lose them. Leave it for an operator, say so loudly.
        state.finish('failed', `${reason}; rollback incomplete: ${stranded.length} VM(s) remain on the clone (${stranded.map((v) => v.vmId).join(', ')})`);
        return;
      }
    }
    state.backHome();
    if (reportsLost) await recordLost(state); // before the inventory's rollback, which refuses a clone that still has VMs
    await call(steps.rollbackMigration, `roll back: delete clone, release target`, {
      migrationId: state.migrationId,
      dedicatedHostId: state.dedicatedHostId,
      target,
    });
    const lost = state.vmsIn('lost');
    // Rolled back, but not to where it started: say what is missing instead of "rolled back".
    if (lost.length)
      state.finish('failed', `${reason}; rolled back, but ${lost.length} VM(s) were lost with their server: ${lost.map((v) => v.vmId).join(', ')}`);
    else state.finish('rolled-back');
  });
  const message = state.status.lastError ?? reason;
  if (state.phase === 'failed' && state.vmsIn('stranded').length) throw nonRetryable(FailureTypes.RollbackIncomplete, message, [state.result()]);
  if (state.phase === 'failed') throw nonRetryable(FailureTypes.VmsLost, message, [state.result()]);
  if (cancelled) throw nonRetryable(FailureTypes.MigrationCancelled, `rolled back: ${reason}`, [state.result()]);
  throw nonRetryable(FailureTypes.MigrationRolledBack, `rolled back: ${reason}`, [state.result()]);
}

/** Moves the clone's VMs back a few at a time; auto-converge on, since staying split is worse than a throttled guest. */
async function bringHome(
  state: MigrationState,
  source: { serverId: string; incarnationId: string },
  target: { serverId: string; incarnationId: string },
  parallel: (back: readonly VmMigrationStatus[]) => number,
): Promise<void> {
  const queue = state.vmsIn('moved', 'provisioned-on-clone');
  const workers = parallel(queue);
  const policy = state.policy;
  const worker = async () => {
    for (let vm = queue.shift(); vm; vm = queue.shift()) {
      state.movingBack(vm);
      try {
        await call(moveSteps.liveMigrateVm, `move ${escapeMarkdown(vm.name)} (${vm.vmId}) back to ${source.serverId}`, {
          migrationId: state.migrationId,
          jobId: vm.jobId!,
          vmId: vm.vmId,
          from: target,
          to: source,
          maxDowntimeMs: policy.maxDowntimeMs,
          bandwidthCapBps: policy.bandwidthCapBps,
          autoConverge: true,
        });
        state.returned(vm);
      } catch (err) {
        state.stranded(vm, failureOf(err).message);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(workers, queue.length) }, worker));
}

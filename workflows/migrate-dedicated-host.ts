import {
  CancellationScope,
  ContinueAsNew,
  allHandlersFinished,
  condition,
  continueAsNew,
  isCancellation,
  patched,
  setHandler,
  sleep,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { FailureTypes, TERMINAL_PHASES, migrationWorkflowId, migrationRequestSchema, type MigrationRequest, type MigrationResult } from '../common/migration';
import { describeZodError } from '../common/errors';
import { DedicatedHostIdKey, MigrationPhaseKey } from '../common/search-attributes';
import { call, steps } from './activity-calls';
import { failureOf, nonRetryable, reasonOf } from './failures';
import { findLost } from './lost-vms';
import { statusQuery, type RequestOutcome } from './messages';
import { MigrationState, type CarriedMigration } from './migration-state';
import { Moves } from './moves';
import { rollBack } from './rollback';
import { TenantRequests, type DeferredRequest } from './tenant-requests';

/** What a run hands to the next one when it continues as new. */
export interface CarriedState extends CarriedMigration {
  outcomes: RequestOutcome[];
  /** Requests signalled while this run handed over: the next run carries them out. */
  deferred?: DeferredRequest[];
}

export type MigrateDedicatedHostInput = Omit<MigrationRequest, 'policy'> & {
  policy?: MigrationRequest['policy'] | Record<string, unknown>;
  carried?: CarriedState;
};

/**
 * The migration object (claim 1b): one workflow per host migration, id `migration-<hostId>`. It moves every VM of a
 * dedicated host to a clone incarnation on a matching server while tenants keep creating and deleting VMs, then makes
 * the clone the host and hands the old server to the scheduler. Cancel or an unrecoverable failure rolls it all back.
 *
 * Phases: validating → reserving-target → provisioning-clone → migrating-vms → finalizing → completed, or
 * rolling-back → rolled-back | failed. A run that continues as new resumes at the phase it reached. Where the work
 * is: the migration object and its transitions (migration-state.ts), tenant requests (tenant-requests.ts), the moves
 * (moves.ts), the compensations (rollback.ts), VMs that died with their server (lost-vms.ts).
 */
export async function migrateDedicatedHost(input: MigrateDedicatedHostInput): Promise<MigrationResult> {
  // ---- setup: the request, the migration object, the handlers (registered before anything awaits) ----------------
  const request = parseRequest(input);
  const carried = input.carried;
  // Unique per migration (a host may migrate again later under the same workflow id) and stable across continue-as-new.
  const migrationId = `${workflowInfo().workflowId}.${workflowInfo().firstExecutionRunId.replace(/-/g, '').slice(-12)}`; // run ids are UUIDv7: the tail is the random part
  const state = MigrationState.start(migrationId, request, carried);
  const policy = state.policy;
  const moves = new Moves(state, () => requests.pending());
  const requests = new TenantRequests(state, (vmId) => moves.cancel(vmId), carried);
  requests.register(carried?.deferred ?? []);
  setHandler(statusQuery, () => state.view());

  upsertSearchAttributes([
    { key: DedicatedHostIdKey, value: state.dedicatedHostId },
    { key: MigrationPhaseKey, value: state.phase },
  ]);
  state.changed();

  // ---- run: the phase ladder, from wherever this run starts ---------------------------------------------------
  try {
    if (state.phase === 'validating') {
      // Validation that needs the inventory (unknown host, already migrating) ends the workflow before anything changed.
      state.begun(
        await call(steps.beginMigration, `mark ${state.dedicatedHostId} migrating, snapshot its VMs`, {
          migrationId,
          dedicatedHostId: state.dedicatedHostId,
          actor: state.status.requestedBy,
        }),
      );
    }
    if (state.phase === 'reserving-target') {
      // Same zone and class, at least the host's capacity (claim 2). None free: wait until the policy's deadline.
      for (;;) {
        try {
          const reserved = await call(steps.reserveTarget, `reserve a server matching ${state.source!.serverId}`, {
            migrationId,
            dedicatedHostId: state.dedicatedHostId,
            targetServerId: request.targetServerId,
          });
          state.targetReserved(reserved.serverId);
          break;
        } catch (err) {
          const waited = waitForCapacity(state, err);
          if (!waited) throw err;
          await waited;
        }
      }
    }
    if (state.phase === 'provisioning-clone') {
      // Exactly the host's resources (claim 4), in the inventory and on the target's agent.
      await call(steps.provisionClone, `provision clone ${state.target!.incarnationId} on ${state.target!.serverId}`, {
        migrationId,
        dedicatedHostId: state.dedicatedHostId,
        target: state.target!,
      });
      state.cloneProvisioned();
    }
    if (state.phase === 'migrating-vms') {
      if ((await moves.moveAll()) === 'continue-as-new') {
        // Requests already accepted finish here; new ones go to the next run.
        requests.handOver();
        await condition(allHandlersFinished);
        return await continueAsNew<typeof migrateDedicatedHost>({ ...request, carried: { ...state.carry(), ...requests.carry() } });
      }
      if (state.failure === undefined && patched('report-lost-vms')) {
        // Everything on the clone must really run there before the clone becomes the host. Taken in turn with the
        // tenants' requests: a delete half done (gone from the agent, not yet from the status) is not a lost VM.
        const lost = await requests.serialized(() => findLost(state, state.vmsIn('moved', 'provisioned-on-clone')));
        if (lost.length) state.fail(`${lost.length} VM(s) lost before finalize: ${lost.map((v) => v.vmId).join(', ')}`);
      }
      if (state.failure !== undefined) return await rollBack(state, moves, state.failure, false);
      state.setPhase('finalizing');
    }
    if (state.phase === 'finalizing') {
      // Requests accepted before this point finish first; later ones are refused with MIGRATION_ENDED.
      await condition(allHandlersFinished);
      // The point of no return (claims 3, 5): once the clone is the host, a cancel can no longer roll it back.
      await CancellationScope.nonCancellable(() =>
        call(steps.finalizeMigration, `make ${state.target!.incarnationId} the host; hand ${state.source!.serverId} to the scheduler`, {
          migrationId,
          dedicatedHostId: state.dedicatedHostId,
          afterState: policy.afterDeprovision,
          actor: state.status.requestedBy,
        }),
      );
      state.finish('completed');
    }
    await condition(allHandlersFinished);
    return state.result();
  } catch (err) {
    // ---- how a run that did not complete ends ----------------------------------------------------------------
    if (err instanceof ContinueAsNew) throw err; // not a failure: this run hands over to the next
    if (TERMINAL_PHASES.has(state.phase)) throw err; // it ended already (the rollback's own failure, or a cancel after completing)
    if (state.phase === 'validating') {
      state.finish('failed', reasonOf(err));
      throw err;
    }
    if (isCancellation(err)) return await rollBack(state, moves, 'cancelled by request', true);
    return await rollBack(state, moves, reasonOf(err), false);
  }
}

/** The request, validated; a bad one ends the workflow at once, naming the field. */
function parseRequest(input: MigrateDedicatedHostInput): MigrationRequest {
  const { carried: _carried, ...requested } = input;
  const parsed = migrationRequestSchema.safeParse(requested);
  if (!parsed.success) throw nonRetryable(FailureTypes.InvalidInput, describeZodError(parsed.error));
  return parsed.data;
}

/**
 * After a failed reservation: when no server was free and the policy's deadline is not reached, notes the wait and
 * returns the sleep before the next try; otherwise nothing (the failure stands).
 */
function waitForCapacity(state: MigrationState, err: unknown): Promise<void> | undefined {
  const left = new Date(state.status.startedAt).getTime() + state.policy.waitForCapacitySeconds * 1000 - new Date().getTime();
  if (!failureOf(err).is('NoMatchingServer') || left <= 0) return undefined;
  state.waitingForCapacity();
  return sleep(Math.min(left, 5_000));
}

export { migrationWorkflowId };

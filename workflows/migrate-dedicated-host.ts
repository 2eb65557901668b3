import {
  ApplicationFailure,
  CancellationScope,
  condition,
  continueAsNew,
  isCancellation,
  log,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertSearchAttributes,
  workflowInfo,
  allHandlersFinished,
  patched,
  ActivityCancellationType,
  ActivityFailure,
  CancelledFailure,
  ContinueAsNew,
  type RetryPolicy,
} from '@temporalio/workflow';
import type { MigrationActivities } from '../activities';
import {
  FailureTypes,
  TERMINAL_PHASES,
  VM_MIGRATION_STATES,
  deleteVmArgsSchema,
  migrationIdFor,
  migrationRequestSchema,
  provisionVmArgsSchema,
  type DeleteVmArgs,
  type DeleteVmResult,
  type MigrationPhase,
  type MigrationRequest,
  type MigrationResult,
  type MigrationStatus,
  type ProvisionVmArgs,
  type ProvisionVmResult,
  type VmMigrationState,
  type VmMigrationStatus,
} from '../common/migration';
import { describeZodError } from '../common/errors';
import { DedicatedHostIdKey, MigrationPhaseKey, SourceServerIdKey, TargetServerIdKey } from '../common/search-attributes';
import { renderMigrationDetails } from './details';
import { autoConvergeFor, orderVms } from './vm-order';
import {
  deleteVmSignal,
  deleteVmUpdate,
  provisionVmSignal,
  provisionVmUpdate,
  requestOutcomeQuery,
  statusQuery,
  type RequestOutcome,
} from './messages';

const NON_RETRYABLE = [
  FailureTypes.NoCapacity,
  FailureTypes.InsufficientCapacity,
  FailureTypes.NotConverging,
  FailureTypes.InvalidInput,
  FailureTypes.NotFound,
  FailureTypes.WrongState,
  FailureTypes.Conflict,
  FailureTypes.MoveFailed,
];

const retry: RetryPolicy = { initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '20s', nonRetryableErrorTypes: NON_RETRYABLE };

/**
 * Short inventory/agent steps. Retried until they succeed unless the error says a retry cannot help. They do not
 * heartbeat, so the timeout is what notices a worker that died mid-step: keep it short (fault tests saw 2 minutes lost
 * per kill with a 2-minute timeout); every step is idempotent, so a retry after a slow success is harmless.
 */
const steps = proxyActivities<MigrationActivities>({ startToCloseTimeout: '30 seconds', retry });

/**
 * One VM's live migration: long, heartbeating (so a lost worker is noticed in seconds and the move resumes on another
 * worker from the agent's job), and cancellable: the workflow waits until the agent has really stopped the move.
 */
const moves = proxyActivities<MigrationActivities>({
  startToCloseTimeout: '12 hours',
  heartbeatTimeout: '15 seconds',
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry,
});

/** What a run hands to the next one when it continues as new. */
export interface CarriedState {
  status: MigrationStatus;
  outcomes: RequestOutcome[];
  deleteRequested: string[];
  forceAutoConverge: string[];
  failure?: string;
}

export type MigrateDedicatedHostInput = Omit<MigrationRequest, 'policy'> & {
  policy?: MigrationRequest['policy'] | Record<string, unknown>;
  carried?: CarriedState;
};

const MAX_REMEMBERED_OUTCOMES = 2000;

/**
 * The migration object (claim 1b): one workflow per host migration, id `migration-<hostId>`. It moves every VM of a
 * dedicated host to a clone incarnation on a matching server while tenants keep creating and deleting VMs, then makes
 * the clone the host and hands the old server to the scheduler. Cancel or an unrecoverable failure rolls it all back.
 */
export async function migrateDedicatedHost(rawInput: MigrateDedicatedHostInput): Promise<MigrationResult> {
  const { carried: _carried, ...requested } = rawInput;
  const parsed = migrationRequestSchema.safeParse(requested);
  if (!parsed.success) {
    throw ApplicationFailure.create({ type: FailureTypes.InvalidInput, message: describeZodError(parsed.error), nonRetryable: true });
  }
  const request = parsed.data;
  // Unique per migration (a host may migrate again later under the same workflow id) and stable across continue-as-new.
  const migrationId = `${workflowInfo().workflowId}.${workflowInfo().firstExecutionRunId.replace(/-/g, "").slice(-12)}`; // run ids are UUIDv7: the tail is the random part
  const now = () => new Date().toISOString();

  const st: MigrationStatus = rawInput.carried?.status ?? {
    migrationId,
    dedicatedHostId: request.dedicatedHostId,
    phase: 'validating',
    policy: request.policy,
    requestedBy: request.requestedBy,
    vms: [],
    counts: emptyCounts(),
    startedAt: now(),
    updatedAt: now(),
    run: 1,
    requestsHandled: 0,
  };
  if (rawInput.carried) st.run += 1;
  const policy = st.policy;
  const outcomes = new Map<string, RequestOutcome>((rawInput.carried?.outcomes ?? []).map((o) => [o.requestId, o]));
  const inFlightRequests = new Map<string, Promise<RequestOutcome>>();
  const deleteRequested = new Set(rawInput.carried?.deleteRequested ?? []);
  const forceAutoConverge = new Set(rawInput.carried?.forceAutoConverge ?? []);
  let failure: string | undefined = rawInput.carried?.failure;
  let tick = 0; // bumped whenever something the scheduling loop waits on changes
  const cancelMove = new Map<string, () => void>();
  const movesInFlight = new Map<string, Promise<void>>();
  let cloneReady = st.target !== undefined && st.phase !== 'provisioning-clone';

  // Short and unique per agent: the migration's random tail, the VM's ordinal (VMs are only ever appended), the try.
  const jobIdFor = (vm: VmMigrationStatus, direction: 'out' | 'back') => `mig-${migrationId.slice(-12)}-${st.vms.indexOf(vm)}-${direction}-${vm.attempts}`;
  const vmById = (vmId: string) => st.vms.find((v) => v.vmId === vmId);
  const changed = () => {
    tick++;
    st.updatedAt = now();
    setCurrentDetails(renderMigrationDetails(st));
  };
  const setPhase = (phase: MigrationPhase) => {
    st.phase = phase;
    upsertSearchAttributes([{ key: MigrationPhaseKey, value: phase }]);
    log.info('migration phase', { migrationId, phase });
    changed();
  };

  // ---- Tenant requests during the migration (claims 1f, 6, 7, 8) ---------------------------------------------
  // One at a time: each reads and changes placement, and the inventory's capacity check must see the previous one.
  let lock: Promise<void> = Promise.resolve();
  const serialized = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = lock.then(fn, fn);
    lock = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  };

  const acceptsRequests = () => st.phase !== 'finalizing' && !TERMINAL_PHASES.has(st.phase) && st.phase !== 'rolling-back';
  const endedError = () =>
    ApplicationFailure.create({
      type: FailureTypes.MigrationEnded,
      message: `the migration of ${st.dedicatedHostId} is ${st.phase}; send the request through the normal path`,
      nonRetryable: true,
    });

  const remember = (o: RequestOutcome) => {
    outcomes.set(o.requestId, o);
    st.requestsHandled++;
    if (outcomes.size > MAX_REMEMBERED_OUTCOMES) outcomes.delete(outcomes.keys().next().value as string);
    return o;
  };

  /** Runs a request once per request id; a repeat (update retry, signal resent, or after continue-as-new) gets the first outcome. */
  const once = (requestId: string, fn: () => Promise<ProvisionVmResult | DeleteVmResult>): Promise<RequestOutcome> => {
    const known = outcomes.get(requestId);
    if (known) return Promise.resolve(known);
    const pending = inFlightRequests.get(requestId);
    if (pending) return pending;
    const p = serialized(fn).then(
      (result) => remember({ requestId, ok: true, result }),
      (err: unknown) => remember({ requestId, ok: false, error: requestError(err) }),
    );
    inFlightRequests.set(requestId, p);
    void p.finally(() => inFlightRequests.delete(requestId)).catch(() => undefined);
    return p;
  };

  const unwrap = <T>(o: RequestOutcome): T => {
    if (o.ok) return o.result as T;
    throw ApplicationFailure.create({ type: o.error.type, message: o.error.message, nonRetryable: true });
  };

  const provisionVm = async (args: ProvisionVmArgs): Promise<ProvisionVmResult> => {
    // A request that arrives before the clone exists waits for it: the VM belongs on the clone (claim 1f).
    await condition(() => cloneReady || !acceptsRequests());
    if (!acceptsRequests() || !st.target) throw endedError();
    if (vmById(args.vmId)) {
      const existing = vmById(args.vmId)!;
      if (existing.state === 'provisioned-on-clone') {
        return { vmId: existing.vmId, name: existing.name, dedicatedHostId: st.dedicatedHostId, incarnationId: st.target.incarnationId, spec: existing.spec, state: 'provisioned-on-clone' };
      }
      throw ApplicationFailure.create({ type: FailureTypes.Conflict, message: `VM ${args.vmId} already exists`, nonRetryable: true });
    }
    const target = st.target;
    const result = await CancellationScope.nonCancellable(() =>
      steps.provisionVmOnClone.executeWithOptions({ summary: `provision ${args.name} on clone ${target.incarnationId}` } as never, [
        { migrationId, dedicatedHostId: st.dedicatedHostId, target, vmId: args.vmId, name: args.name, spec: args.spec, tenantId: args.tenantId },
      ]),
    );
    st.vms.push({ vmId: args.vmId, name: args.name, spec: resourcesOf(args.spec), state: 'provisioned-on-clone', attempts: 0 });
    changed();
    return result;
  };

  const deleteVm = async (args: DeleteVmArgs): Promise<DeleteVmResult> => {
    const vm = vmById(args.vmId);
    if (!vm) throw ApplicationFailure.create({ type: FailureTypes.NotFound, message: `VM ${args.vmId} is not on dedicated host ${st.dedicatedHostId}`, nonRetryable: true });
    const wasState = vm.state;
    if (vm.state === 'deleted') return { vmId: vm.vmId, deleted: true, wasState };
    if (!acceptsRequests()) throw endedError();
    deleteRequested.add(vm.vmId); // the scheduler will not start (or restart) a move for it from now on
    if (vm.state === 'moving') {
      cancelMove.get(vm.vmId)?.();
      await condition(() => vm.state !== 'moving');
    }
    await CancellationScope.nonCancellable(() =>
      steps.deleteVm.executeWithOptions({ summary: `delete ${vm.name} (${vm.vmId}), was ${wasState}` } as never, [{ migrationId, vmId: vm.vmId }]),
    );
    vm.state = 'deleted';
    changed();
    return { vmId: vm.vmId, deleted: true, wasState };
  };

  // Validators refuse before anything is recorded in history; the failure's type is the reason's code.
  const refuse = (type: string, message: string) => ApplicationFailure.create({ type, message, nonRetryable: true });
  const validateProvision = (args: ProvisionVmArgs) => {
    const r = provisionVmArgsSchema.safeParse(args);
    if (!r.success) throw refuse(FailureTypes.InvalidInput, `invalid provisionVm request: ${describeZodError(r.error)}`);
    if (!outcomes.has(args.requestId) && !acceptsRequests()) throw endedError();
  };
  const validateDelete = (args: DeleteVmArgs) => {
    const r = deleteVmArgsSchema.safeParse(args);
    if (!r.success) throw refuse(FailureTypes.InvalidInput, `invalid deleteVm request: ${describeZodError(r.error)}`);
    if (outcomes.has(args.requestId)) return;
    const vm = vmById(args.vmId);
    if (!vm) throw refuse(FailureTypes.NotFound, `VM ${args.vmId} is not on dedicated host ${st.dedicatedHostId}`);
    if (!acceptsRequests() && vm.state !== 'deleted') throw endedError();
  };

  setHandler(provisionVmUpdate, async (args) => unwrap<ProvisionVmResult>(await once(args.requestId, () => provisionVm(args))), {
    validator: validateProvision,
  });
  setHandler(deleteVmUpdate, async (args) => unwrap<DeleteVmResult>(await once(args.requestId, () => deleteVm(args))), {
    validator: validateDelete,
  });
  // Signals cannot be refused, so a bad one is recorded as a failed outcome instead of failing the workflow task.
  setHandler(provisionVmSignal, async (args) => {
    try {
      validateProvision(args);
    } catch (err) {
      if (typeof args?.requestId === 'string') remember({ requestId: args.requestId, ok: false, error: { type: FailureTypes.InvalidInput, message: (err as Error).message } });
      return;
    }
    await once(args.requestId, () => provisionVm(args));
  });
  setHandler(deleteVmSignal, async (args) => {
    try {
      validateDelete(args);
    } catch (err) {
      if (typeof args?.requestId === 'string') remember({ requestId: args.requestId, ok: false, error: { type: FailureTypes.InvalidInput, message: (err as Error).message } });
      return;
    }
    await once(args.requestId, () => deleteVm(args));
  });
  setHandler(statusQuery, () => ({ ...st, counts: countStates(st.vms) }));
  setHandler(requestOutcomeQuery, (requestId) => outcomes.get(requestId) ?? null);

  // ---- The migration ---------------------------------------------------------------------------------------------
  const shouldContinueAsNew = () => workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > policy.continueAsNewAfterEvents;

  const runMove = async (vm: VmMigrationStatus): Promise<void> => {
    const source = st.source!;
    const target = st.target!;
    vm.state = 'moving';
    vm.attempts += 1;
    vm.jobId = jobIdFor(vm, 'out');
    vm.error = undefined;
    changed();
    const autoConverge = autoConvergeFor(policy, vm, forceAutoConverge.has(vm.vmId));
    const scope = new CancellationScope();
    cancelMove.set(vm.vmId, () => scope.cancel());
    try {
      const figures = await scope.run(() =>
        moves.liveMigrateVm.executeWithOptions({ summary: `live-migrate ${vm.name} (${vm.vmId}) ${source.serverId} → ${target.serverId}` } as never, [
          {
            migrationId,
            jobId: vm.jobId!,
            vmId: vm.vmId,
            from: source,
            to: target,
            maxDowntimeMs: policy.maxDowntimeMs,
            bandwidthCapBps: policy.bandwidthCapBps,
            autoConverge,
          },
        ]),
      );
      vm.state = 'moved';
      vm.figures = figures;
    } catch (err) {
      // Whatever stopped the move, ask the agents where the VM really is before deciding anything.
      const where = await CancellationScope.nonCancellable(() =>
        steps.settleVm.executeWithOptions({ summary: `settle ${vm.vmId} after an interrupted move` } as never, [
          { migrationId, vmId: vm.vmId, jobId: vm.jobId!, from: source, to: target },
        ]),
      );
      if (where.location === 'target') {
        vm.state = 'moved';
        vm.figures = where.figures;
      } else if (isCancellation(err)) {
        vm.state = 'pending';
      } else {
        const cause = (err as { cause?: ApplicationFailure }).cause;
        const type = cause?.type ?? 'Error';
        vm.error = `${type}: ${cause?.message ?? (err as Error).message}`;
        if (type === FailureTypes.NotConverging && policy.onVmFailure === 'retry-with-auto-converge' && !autoConverge) {
          forceAutoConverge.add(vm.vmId);
          vm.state = 'pending';
          log.warn('VM did not converge; it will be retried with auto-converge', { vmId: vm.vmId });
        } else {
          vm.state = 'failed';
          failure ??= `VM ${vm.vmId} could not be moved: ${vm.error}`;
        }
      }
    } finally {
      cancelMove.delete(vm.vmId);
      changed();
    }
  };

  const nextToMove = (): VmMigrationStatus | undefined => {
    const waiting = st.vms.filter((v) => v.state === 'pending' && !deleteRequested.has(v.vmId));
    // VMs that already failed once go last, after everything that can move on the first try.
    const fresh = waiting.filter((v) => !forceAutoConverge.has(v.vmId));
    return orderVms(fresh.length ? fresh : waiting, policy.order)[0];
  };

  const moveAll = async (): Promise<'done' | 'continue-as-new'> => {
    for (;;) {
      const stopLaunching = failure !== undefined || shouldContinueAsNew();
      while (!stopLaunching && movesInFlight.size < policy.maxParallel) {
        const vm = nextToMove();
        if (!vm) break;
        const p = runMove(vm).finally(() => {
          movesInFlight.delete(vm.vmId);
          tick++;
        });
        movesInFlight.set(vm.vmId, p);
      }
      if (movesInFlight.size === 0) {
        if (failure !== undefined) return 'done';
        if (!nextToMove()) {
          // Requests in flight may still change the set of VMs (a delete cancelling a move puts it back first).
          // Only those already in flight: with nothing left to move, a later request can only touch the clone, and
          // waiting for *all* handlers would never end while tenants keep sending requests (found by
          // test/faults/races.test.ts: the migration never reached finalize under continuous load).
          if (patched('moves-done-waits-for-earlier-requests-only')) await Promise.allSettled([...inFlightRequests.values()]);
          else await condition(allHandlersFinished);
          if (!nextToMove() && !st.vms.some((v) => v.state === 'moving')) return 'done';
          continue;
        }
        if (shouldContinueAsNew()) return 'continue-as-new';
      }
      const seen = tick;
      await condition(() => tick !== seen);
    }
  };

  const rollBack = async (reason: string, cancelled: boolean): Promise<never> => {
    st.lastError = reason;
    setPhase('rolling-back');
    await CancellationScope.nonCancellable(async () => {
      for (const cancel of cancelMove.values()) cancel();
      await Promise.allSettled(movesInFlight.values());
      await condition(allHandlersFinished);
      if (st.target && st.source) {
        const back = st.vms.filter((v) => v.state === 'moved' || v.state === 'provisioned-on-clone');
        const source = st.source;
        const target = st.target;
        // Bring VMs home a few at a time; auto-converge on, since staying split is worse than a throttled guest.
        const queue = [...back];
        const worker = async () => {
          for (let vm = queue.shift(); vm; vm = queue.shift()) {
            vm.state = 'moving-back';
            vm.jobId = jobIdFor(vm, 'back');
            changed();
            try {
              await moves.liveMigrateVm.executeWithOptions({ summary: `move ${vm.name} (${vm.vmId}) back to ${source.serverId}` } as never, [
                { migrationId, jobId: vm.jobId, vmId: vm.vmId, from: target, to: source, maxDowntimeMs: policy.maxDowntimeMs, bandwidthCapBps: policy.bandwidthCapBps, autoConverge: true },
              ]);
              vm.state = 'returned';
            } catch (err) {
              vm.state = 'failed';
              const cause = (err as { cause?: Error }).cause;
              vm.error = `could not move back: ${cause?.message ?? (err as Error).message}`;
            }
            changed();
          }
        };
        await Promise.all(Array.from({ length: Math.min(policy.maxParallel, queue.length) }, worker));
        const stranded = st.vms.filter((v) => v.state === 'failed' && v.error?.startsWith('could not move back'));
        if (stranded.length) {
          // The clone still runs VMs: deleting it would lose them. Leave it for an operator, say so loudly.
          st.lastError = `${reason}; rollback incomplete: ${stranded.length} VM(s) remain on the clone (${stranded.map((v) => v.vmId).join(', ')})`;
          st.finishedAt = now();
          setPhase('failed');
          return;
        }
      }
      for (const vm of st.vms) if (vm.state === 'returned' || vm.state === 'moving') vm.state = 'pending';
      await steps.rollbackMigration.executeWithOptions({ summary: `roll back: delete clone, release target` } as never, [
        { migrationId, dedicatedHostId: st.dedicatedHostId, target: st.target },
      ]);
      st.finishedAt = now();
      setPhase('rolled-back');
    });
    if (st.phase === 'failed') {
      throw ApplicationFailure.create({ type: 'RollbackIncomplete', message: st.lastError ?? reason, nonRetryable: true, details: [result()] });
    }
    if (cancelled) throw ApplicationFailure.create({ type: 'MigrationCancelled', message: `rolled back: ${reason}`, nonRetryable: true, details: [result()] });
    throw ApplicationFailure.create({ type: 'MigrationRolledBack', message: `rolled back: ${reason}`, nonRetryable: true, details: [result()] });
  };

  const result = (): MigrationResult => ({
    migrationId,
    dedicatedHostId: st.dedicatedHostId,
    phase: st.phase,
    source: st.source,
    target: st.target,
    counts: countStates(st.vms),
    finishedAt: st.finishedAt,
    lastError: st.lastError,
  });

  upsertSearchAttributes([
    { key: DedicatedHostIdKey, value: st.dedicatedHostId },
    { key: MigrationPhaseKey, value: st.phase },
  ]);
  changed();

  try {
    if (st.phase === 'validating') {
      // Validation that needs the inventory (unknown host, already migrating) ends the workflow before anything changed.
      const snapshot = await steps.beginMigration.executeWithOptions({ summary: `mark ${st.dedicatedHostId} migrating, snapshot its VMs` } as never, [
        { migrationId, dedicatedHostId: st.dedicatedHostId, actor: st.requestedBy },
      ]);
      st.source = snapshot.source;
      st.capacity = snapshot.capacity;
      st.vms = snapshot.vms.map((v) => ({ vmId: v.vmId, name: v.name, spec: resourcesOf(v.spec), dirtyRateMiBps: v.spec.workload?.dirtyRateMiBps, state: 'pending' as VmMigrationState, attempts: 0 }));
      upsertSearchAttributes([{ key: SourceServerIdKey, value: snapshot.source.serverId }]);
      setPhase('reserving-target');
    }
    if (st.phase === 'reserving-target') {
      const deadline = new Date(st.startedAt).getTime() + policy.waitForCapacitySeconds * 1000;
      for (;;) {
        try {
          const reserved = await steps.reserveTarget.executeWithOptions({ summary: `reserve a server matching ${st.source!.serverId}` } as never, [
            { migrationId, dedicatedHostId: st.dedicatedHostId, targetServerId: request.targetServerId },
          ]);
          st.target = { serverId: reserved.serverId, incarnationId: `${st.dedicatedHostId}.${migrationId.slice(-12)}` };
          st.waitingForCapacitySince = undefined;
          break;
        } catch (err) {
          const type = (err as { cause?: ApplicationFailure }).cause?.type;
          const left = deadline - new Date().getTime();
          if (type !== FailureTypes.NoCapacity || left <= 0) throw err;
          st.waitingForCapacitySince ??= now();
          changed();
          await sleep(Math.min(left, 5_000));
        }
      }
      upsertSearchAttributes([{ key: TargetServerIdKey, value: st.target.serverId }]);
      setPhase('provisioning-clone');
    }
    if (st.phase === 'provisioning-clone') {
      await steps.provisionClone.executeWithOptions({ summary: `provision clone ${st.target!.incarnationId} on ${st.target!.serverId}` } as never, [
        { migrationId, dedicatedHostId: st.dedicatedHostId, target: st.target! },
      ]);
      cloneReady = true;
      setPhase('migrating-vms');
    }
    cloneReady = true;
    if (st.phase === 'migrating-vms') {
      const outcome = await moveAll();
      if (outcome === 'continue-as-new') {
        await condition(allHandlersFinished);
        const carried: CarriedState = {
          status: st,
          outcomes: [...outcomes.values()],
          deleteRequested: [...deleteRequested],
          forceAutoConverge: [...forceAutoConverge],
          failure,
        };
        return await continueAsNew<typeof migrateDedicatedHost>({ ...request, carried });
      }
      if (failure !== undefined) return await rollBack(failure, false);
      setPhase('finalizing');
    }
    if (st.phase === 'finalizing') {
      // Requests accepted before this point finish first; later ones are refused with MIGRATION_ENDED.
      await condition(allHandlersFinished);
      // The point of no return: once the clone is the host, a cancel can no longer roll it back.
      await CancellationScope.nonCancellable(() =>
        steps.finalizeMigration.executeWithOptions({ summary: `make ${st.target!.incarnationId} the host; hand ${st.source!.serverId} to the scheduler` } as never, [
          { migrationId, dedicatedHostId: st.dedicatedHostId, afterState: policy.afterDeprovision, actor: st.requestedBy },
        ]),
      );
      st.finishedAt = now();
      setPhase('completed');
    }
    await condition(allHandlersFinished);
    return result();
  } catch (err) {
    if (err instanceof ContinueAsNew) throw err; // not a failure: this run hands over to the next
    if (st.phase === 'completed' || st.phase === 'rolled-back' || st.phase === 'failed') throw err;
    if (st.phase === 'validating') {
      const cause = err instanceof ApplicationFailure ? err : (err as { cause?: ApplicationFailure }).cause;
      st.lastError = cause?.message ?? (err as Error).message;
      st.finishedAt = now();
      setPhase('failed');
      throw err;
    }
    if (isCancellation(err)) return await rollBack('cancelled by request', true);
    const cause = (err as { cause?: ApplicationFailure }).cause;
    return await rollBack(cause?.message ?? (err as Error).message, false);
  }
}

/** A failed request's reason as the caller should see it; anything unexpected is a bug and fails the task. */
function requestError(err: unknown): { type: string; message: string } {
  if (err instanceof ApplicationFailure) return { type: err.type ?? 'Error', message: err.message };
  if (err instanceof ActivityFailure && err.cause instanceof ApplicationFailure) return { type: err.cause.type ?? 'Error', message: err.cause.message };
  if (err instanceof CancelledFailure) return { type: FailureTypes.MigrationEnded, message: 'the migration was cancelled; send the request through the normal path' };
  throw err;
}

function emptyCounts(): Record<VmMigrationState, number> {
  return Object.fromEntries(VM_MIGRATION_STATES.map((s) => [s, 0])) as Record<VmMigrationState, number>;
}

export function countStates(vms: VmMigrationStatus[]): Record<VmMigrationState, number> {
  const counts = emptyCounts();
  for (const v of vms) counts[v.state] += 1;
  return counts;
}

function resourcesOf(spec: { vcpus: number; memoryMiB: number; diskGiB: number }) {
  return { vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, diskGiB: spec.diskGiB };
}

export { migrationIdFor };

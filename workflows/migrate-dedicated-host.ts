import {
  ApplicationFailure,
  CancellationScope,
  condition,
  continueAsNew,
  isCancellation,
  log,
  proxyActivities,
  proxyLocalActivities,
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
import { autoConvergeFor, bandwidthCapFor, orderVms } from './vm-order';
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
 * A tenant's request runs its one short step as a local activity: it executes inside the workflow task that accepted
 * the request, so the answer needs one workflow task instead of an activity task plus a second workflow task — the
 * difference a tenant waits for while the host migrates (benchmark 3). Same timeout and retries as `steps`.
 */
const requestSteps = proxyLocalActivities<MigrationActivities>({ startToCloseTimeout: '30 seconds', retry });

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
  /** Requests signalled while this run handed over: the next run carries them out. */
  deferred?: DeferredRequest[];
}

type DeferredRequest = { kind: 'provision'; args: ProvisionVmArgs } | { kind: 'delete'; args: DeleteVmArgs };

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
  // Set while this run waits for its requests to finish before continuing as new: new requests go to the next run
  // (updates are refused with MIGRATION_CONTINUING and retried by the client; signals are carried over), so a steady
  // stream of requests cannot keep the hand-over waiting for ever.
  let handingOver = false;
  const deferred: DeferredRequest[] = [];
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

  // ---- VMs that died with their server ----------------------------------------------------------------------
  // An agent restart in the sim (a server reboot with real VMs) takes its VMs with it; a move's failure does not say
  // so and the inventory cannot know. Before the two points of no return (finalize, and the end of a rollback) the
  // migration asks both agents where its VMs run, and a VM that runs nowhere is reported lost instead of being
  // declared moved or rolled back.
  const where = () => `neither on ${st.source?.serverId ?? '?'} nor on ${st.target?.serverId ?? '?'} (its server restarted or failed)`;
  const markLost = (vm: VmMigrationStatus) => {
    vm.state = 'lost';
    vm.error = `running ${where()}`;
    changed();
  };
  const lostVms = () => st.vms.filter((v) => v.state === 'lost');
  /** Asks the agents about `vms` and marks the ones running nowhere lost; returns them. */
  const findLost = async (vms: VmMigrationStatus[]): Promise<VmMigrationStatus[]> => {
    if (vms.length === 0 || !st.source) return [];
    const at = await steps.locateVms.executeWithOptions({ summary: `where do ${vms.length} VM(s) run?` } as never, [
      { vmIds: vms.map((v) => v.vmId), source: st.source, target: st.target },
    ]);
    const lost = vms.filter((v) => at[v.vmId] === 'none');
    for (const vm of lost) markLost(vm);
    if (lost.length) log.error('VMs run on no server', { migrationId, vmIds: lost.map((v) => v.vmId) });
    return lost;
  };
  const recordLost = async () => {
    const lost = lostVms();
    if (lost.length === 0) return;
    await steps.recordLostVms.executeWithOptions({ summary: `record ${lost.length} lost VM(s)` } as never, [
      { migrationId, vmIds: lost.map((v) => v.vmId), reason: `migration ${migrationId} found it running ${where()}` },
    ]);
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
    const via = patched('tenant-requests-as-local-activities') ? requestSteps : steps;
    const result = await CancellationScope.nonCancellable(() =>
      via.provisionVmOnClone.executeWithOptions({ summary: `provision ${args.name} on clone ${target.incarnationId}` } as never, [
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
    const via = patched('tenant-requests-as-local-activities') ? requestSteps : steps;
    await CancellationScope.nonCancellable(() =>
      via.deleteVm.executeWithOptions({ summary: `delete ${vm.name} (${vm.vmId}), was ${wasState}` } as never, [{ migrationId, vmId: vm.vmId }]),
    );
    vm.state = 'deleted';
    changed();
    return { vmId: vm.vmId, deleted: true, wasState };
  };

  // Validators refuse before anything is recorded in history; the failure's type is the reason's code.
  const refuse = (type: string, message: string) => ApplicationFailure.create({ type, message, nonRetryable: true });
  const continuingError = () =>
    refuse(FailureTypes.MigrationContinuing, `the migration of ${st.dedicatedHostId} is handing over to its next run; send the request again`);
  const validateProvision = (args: ProvisionVmArgs) => {
    const r = provisionVmArgsSchema.safeParse(args);
    if (!r.success) throw refuse(FailureTypes.InvalidInput, `invalid provisionVm request: ${describeZodError(r.error)}`);
    if (!outcomes.has(args.requestId) && !acceptsRequests()) throw endedError();
    if (!outcomes.has(args.requestId) && !inFlightRequests.has(args.requestId) && handingOver) throw continuingError();
  };
  const validateDelete = (args: DeleteVmArgs) => {
    const r = deleteVmArgsSchema.safeParse(args);
    if (!r.success) throw refuse(FailureTypes.InvalidInput, `invalid deleteVm request: ${describeZodError(r.error)}`);
    if (outcomes.has(args.requestId)) return;
    if (!inFlightRequests.has(args.requestId) && handingOver) throw continuingError();
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
  // Signals cannot be refused: a bad one is recorded as a failed outcome instead of failing the workflow task, and
  // one that arrives during a hand-over is carried to the next run.
  const signalled = async (req: DeferredRequest, validate: () => void) => {
    try {
      validate();
    } catch (err) {
      const type = (err as ApplicationFailure).type;
      if (type === FailureTypes.MigrationContinuing) deferred.push(req);
      else if (typeof req.args?.requestId === 'string') remember({ requestId: req.args.requestId, ok: false, error: { type: FailureTypes.InvalidInput, message: (err as Error).message } });
      return;
    }
    await (req.kind === 'provision' ? once(req.args.requestId, () => provisionVm(req.args)) : once(req.args.requestId, () => deleteVm(req.args)));
  };
  setHandler(provisionVmSignal, (args) => signalled({ kind: 'provision', args }, () => validateProvision(args)));
  setHandler(deleteVmSignal, (args) => signalled({ kind: 'delete', args }, () => validateDelete(args)));
  // Requests a previous run received while it handed over.
  for (const req of rawInput.carried?.deferred ?? []) void signalled(req, () => (req.kind === 'provision' ? validateProvision(req.args) : validateDelete(req.args)));
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
    // A critical-path VM gets a whole stream and the moves around it share the rest (only when the policy knows the link).
    const bandwidthCapBps = bandwidthCapFor(policy, vm, st.vms);
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
            bandwidthCapBps,
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
      } else if (where.location === 'lost') {
        markLost(vm);
        failure ??= `VM ${vm.vmId} was lost: ${vm.error}`;
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
      const reportsLost = patched('report-lost-vms');
      if (reportsLost && st.target && st.source) {
        // Only VMs that still run somewhere can be brought home, and the host stays on the source: a source agent
        // that restarted (a rebooted server) needs its incarnation back.
        await findLost(st.vms.filter((v) => v.state !== 'deleted' && v.state !== 'lost'));
        await steps.ensureIncarnationOnAgent.executeWithOptions({ summary: `make sure ${st.source.incarnationId} exists on ${st.source.serverId}` } as never, [
          { server: st.source, capacity: st.capacity! },
        ]);
      }
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
        if (reportsLost) await recordLost();
        if (stranded.length) {
          // The clone still runs VMs: deleting it would lose them. Leave it for an operator, say so loudly.
          st.lastError = `${reason}; rollback incomplete: ${stranded.length} VM(s) remain on the clone (${stranded.map((v) => v.vmId).join(', ')})`;
          st.finishedAt = now();
          setPhase('failed');
          return;
        }
      }
      for (const vm of st.vms) if (vm.state === 'returned' || vm.state === 'moving') vm.state = 'pending';
      if (reportsLost) await recordLost(); // before the inventory's rollback, which refuses a clone that still has VMs
      await steps.rollbackMigration.executeWithOptions({ summary: `roll back: delete clone, release target` } as never, [
        { migrationId, dedicatedHostId: st.dedicatedHostId, target: st.target },
      ]);
      st.finishedAt = now();
      const lost = lostVms();
      if (lost.length) {
        // Rolled back, but not to where it started: say what is missing instead of "rolled back".
        st.lastError = `${reason}; rolled back, but ${lost.length} VM(s) were lost with their server: ${lost.map((v) => v.vmId).join(', ')}`;
        setPhase('failed');
        return;
      }
      setPhase('rolled-back');
    });
    if (st.phase === 'failed' && lostVms().length && !st.vms.some((v) => v.error?.startsWith('could not move back'))) {
      throw ApplicationFailure.create({ type: FailureTypes.VmsLost, message: st.lastError ?? reason, nonRetryable: true, details: [result()] });
    }
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
    ...(lostVms().length ? { lostVms: lostVms().map((v) => v.vmId) } : {}),
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
        // Requests already accepted finish here; new ones go to the next run (see `handingOver`).
        handingOver = patched('hand-over-requests-on-continue-as-new');
        await condition(allHandlersFinished);
        const carried: CarriedState = {
          status: st,
          outcomes: [...outcomes.values()],
          deleteRequested: [...deleteRequested],
          forceAutoConverge: [...forceAutoConverge],
          failure,
          ...(deferred.length ? { deferred } : {}),
        };
        return await continueAsNew<typeof migrateDedicatedHost>({ ...request, carried });
      }
      if (failure === undefined && patched('report-lost-vms')) {
        // Everything on the clone must really run there before the clone becomes the host. Taken in turn with the
        // tenants' requests: a delete half done (gone from the agent, not yet from the status) is not a lost VM.
        const lost = await serialized(() => findLost(st.vms.filter((v) => v.state === 'moved' || v.state === 'provisioned-on-clone')));
        if (lost.length) failure = `${lost.length} VM(s) lost before finalize: ${lost.map((v) => v.vmId).join(', ')}`;
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

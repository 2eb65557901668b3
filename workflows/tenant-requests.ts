import { ActivityFailure, ApplicationFailure, CancellationScope, CancelledFailure, condition, patched, setHandler } from '@temporalio/workflow';
import {
  FailureTypes,
  deleteVmArgsSchema,
  provisionVmArgsSchema,
  type DeleteVmArgs,
  type DeleteVmResult,
  type ProvisionVmArgs,
  type ProvisionVmResult,
} from '../common/migration';
import { describeZodError } from '../common/errors';
import { call, localSteps, steps } from './activity-calls';
import { escapeMarkdown } from './details';
import { nonRetryable } from './failures';
import { deleteVmSignal, deleteVmUpdate, provisionVmSignal, provisionVmUpdate, requestOutcomeQuery, type RequestOutcome } from './messages';
import type { MigrationState } from './migration-state';

/** A request signalled while a run handed over: the next run carries it out. */
export type DeferredRequest = { kind: 'provision'; args: ProvisionVmArgs } | { kind: 'delete'; args: DeleteVmArgs };

const MAX_REMEMBERED_OUTCOMES = 2000;
/**
 * Outcomes handed to the next run: the newest ones. They answer a client's retry of a request (seconds later), not
 * the whole migration's requests, and 2,000 of them could take most of Temporal's payload limit.
 */
const MAX_CARRIED_OUTCOMES = 200;

/**
 * Tenants' requests during the migration (claims 1f, 6, 7, 8): `provisionVm` and `deleteVm`, as Updates (validated
 * before anything is recorded, answered) and as signals (fire-and-forget; the outcome is kept under the request id).
 * They run one at a time, since each reads and changes placement and the inventory's capacity check must see the
 * previous one, and once per request id, also across continue-as-new.
 */
export class TenantRequests {
  private readonly outcomes: Map<string, RequestOutcome>;
  private readonly inFlight = new Map<string, Promise<RequestOutcome>>();
  private lock: Promise<void> = Promise.resolve();
  /**
   * Set while this run waits for its requests to finish before continuing as new: new requests go to the next run
   * (updates are refused with MIGRATION_CONTINUING and retried by the client; signals are carried over), so a steady
   * stream of requests cannot keep the hand-over waiting for ever.
   */
  private handingOver = false;
  private readonly deferred: DeferredRequest[] = [];

  constructor(
    private readonly state: MigrationState,
    /** Stops a VM's move (a delete of a moving VM). */
    private readonly cancelMove: (vmId: string) => void,
    carried?: { outcomes: RequestOutcome[] },
  ) {
    this.outcomes = new Map((carried?.outcomes ?? []).map((o) => [o.requestId, o]));
  }

  /** Registers the handlers (synchronously, at the workflow's start) and takes up what the previous run deferred. */
  register(deferredByLastRun: DeferredRequest[]): void {
    setHandler(provisionVmUpdate, async (args) => unwrap<ProvisionVmResult>(await this.once(args.requestId, () => this.provisionVm(args))), {
      validator: (args) => this.validateProvision(args),
    });
    setHandler(deleteVmUpdate, async (args) => unwrap<DeleteVmResult>(await this.once(args.requestId, () => this.deleteVm(args))), {
      validator: (args) => this.validateDelete(args),
    });
    setHandler(provisionVmSignal, (args) => this.signalled({ kind: 'provision', args }));
    setHandler(deleteVmSignal, (args) => this.signalled({ kind: 'delete', args }));
    for (const req of deferredByLastRun) void this.signalled(req);
    setHandler(requestOutcomeQuery, (requestId) => this.outcomes.get(requestId) ?? null);
  }

  /** Runs `fn` after the requests before it, and before the ones after it. */
  serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lock.then(fn, fn);
    this.lock = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** The requests accepted and not yet answered. */
  pending(): Promise<RequestOutcome>[] {
    return [...this.inFlight.values()];
  }

  /** From now on new requests go to the next run (called once the run decided to continue as new). */
  handOver(): void {
    this.handingOver = patched('hand-over-requests-on-continue-as-new');
  }

  /** What the next run needs: the outcomes (so a resent request gets its first answer) and the deferred signals. */
  carry(): { outcomes: RequestOutcome[]; deferred?: DeferredRequest[] } {
    const all = [...this.outcomes.values()];
    const outcomes = patched('bounded-carried-state') ? all.slice(-MAX_CARRIED_OUTCOMES) : all;
    return { outcomes, ...(this.deferred.length ? { deferred: this.deferred } : {}) };
  }

  // ---- the two requests ---------------------------------------------------------------------------------------
  private async provisionVm(args: ProvisionVmArgs): Promise<ProvisionVmResult> {
    const { state } = this;
    // A request that arrives before the clone exists waits for it: the VM belongs on the clone (claim 1f).
    await condition(() => state.cloneReady || !state.acceptsRequests());
    if (!state.acceptsRequests() || !state.target) throw this.ended();
    const existing = state.vm(args.vmId);
    if (existing) {
      if (existing.state === 'provisioned-on-clone') {
        return {
          vmId: existing.vmId,
          name: existing.name,
          dedicatedHostId: state.dedicatedHostId,
          incarnationId: state.target.incarnationId,
          spec: existing.spec,
          state: 'provisioned-on-clone',
        };
      }
      throw nonRetryable(FailureTypes.Conflict, `VM ${args.vmId} already exists`);
    }
    const target = state.target;
    const via = requestSteps();
    const result = await CancellationScope.nonCancellable(() =>
      call(via.provisionVmOnClone, `provision ${escapeMarkdown(args.name)} on clone ${target.incarnationId}`, {
        migrationId: state.migrationId,
        dedicatedHostId: state.dedicatedHostId,
        target,
        vmId: args.vmId,
        name: args.name,
        spec: args.spec,
        tenantId: args.tenantId,
      }),
    );
    state.provisionedOnClone(args);
    return result;
  }

  private async deleteVm(args: DeleteVmArgs): Promise<DeleteVmResult> {
    const { state } = this;
    const vm = state.vm(args.vmId);
    if (!vm) throw this.notHere(args.vmId);
    const wasState = vm.state;
    if (vm.state === 'deleted') return { vmId: vm.vmId, deleted: true, wasState };
    if (!state.acceptsRequests()) throw this.ended();
    state.deleteAsked(vm);
    if (vm.state === 'moving') {
      this.cancelMove(vm.vmId);
      await condition(() => vm.state !== 'moving');
    }
    const via = requestSteps();
    await CancellationScope.nonCancellable(() =>
      call(via.deleteVm, `delete ${escapeMarkdown(vm.name)} (${vm.vmId}), was ${wasState}`, { migrationId: state.migrationId, vmId: vm.vmId }),
    );
    state.deleted(vm);
    return { vmId: vm.vmId, deleted: true, wasState };
  }

  // ---- once per request id, one at a time ---------------------------------------------------------------------
  /** Runs a request once per request id; a repeat (update retry, signal resent, or after continue-as-new) gets the first outcome. */
  private once(requestId: string, fn: () => Promise<ProvisionVmResult | DeleteVmResult>): Promise<RequestOutcome> {
    const known = this.outcomes.get(requestId);
    if (known) return Promise.resolve(known);
    const pending = this.inFlight.get(requestId);
    if (pending) return pending;
    const p = this.serialized(fn).then(
      (result) => this.remember({ requestId, ok: true, result }),
      (err: unknown) => this.remember({ requestId, ok: false, error: requestError(err) }),
    );
    this.inFlight.set(requestId, p);
    void p.finally(() => this.inFlight.delete(requestId)).catch(() => undefined);
    return p;
  }

  private remember(o: RequestOutcome): RequestOutcome {
    this.outcomes.set(o.requestId, o);
    this.state.countRequest();
    if (this.outcomes.size > MAX_REMEMBERED_OUTCOMES) this.outcomes.delete(this.outcomes.keys().next().value as string);
    return o;
  }

  // ---- validation: refusals before anything is recorded in history; the failure's type is the reason's code ------
  private validateProvision(args: ProvisionVmArgs): void {
    const r = provisionVmArgsSchema.safeParse(args);
    if (!r.success) throw nonRetryable(FailureTypes.InvalidInput, `invalid provisionVm request: ${describeZodError(r.error)}`);
    if (!this.outcomes.has(args.requestId) && !this.state.acceptsRequests()) throw this.ended();
    if (!this.outcomes.has(args.requestId) && !this.inFlight.has(args.requestId) && this.handingOver) throw this.continuing();
  }

  private validateDelete(args: DeleteVmArgs): void {
    const r = deleteVmArgsSchema.safeParse(args);
    if (!r.success) throw nonRetryable(FailureTypes.InvalidInput, `invalid deleteVm request: ${describeZodError(r.error)}`);
    if (this.outcomes.has(args.requestId)) return;
    if (!this.inFlight.has(args.requestId) && this.handingOver) throw this.continuing();
    const vm = this.state.vm(args.vmId);
    if (!vm) throw this.notHere(args.vmId);
    if (!this.state.acceptsRequests() && vm.state !== 'deleted') throw this.ended();
  }

  /**
   * Signals cannot be refused: a bad one is recorded as a failed outcome instead of failing the workflow task, and one
   * that arrives during a hand-over is carried to the next run.
   */
  private async signalled(req: DeferredRequest): Promise<void> {
    try {
      if (req.kind === 'provision') this.validateProvision(req.args);
      else this.validateDelete(req.args);
    } catch (err) {
      const type = (err as ApplicationFailure).type;
      if (type === FailureTypes.MigrationContinuing) this.deferred.push(req);
      else if (typeof req.args?.requestId === 'string')
        this.remember({ requestId: req.args.requestId, ok: false, error: { type: FailureTypes.InvalidInput, message: (err as Error).message } });
      return;
    }
    await (req.kind === 'provision'
      ? this.once(req.args.requestId, () => this.provisionVm(req.args))
      : this.once(req.args.requestId, () => this.deleteVm(req.args)));
  }

  private ended(): ApplicationFailure {
    return nonRetryable(
      FailureTypes.MigrationEnded,
      `the migration of ${this.state.dedicatedHostId} is ${this.state.phase}; send the request through the normal path`,
    );
  }
  private continuing(): ApplicationFailure {
    return nonRetryable(
      FailureTypes.MigrationContinuing,
      `the migration of ${this.state.dedicatedHostId} is handing over to its next run; send the request again`,
    );
  }
  private notHere(vmId: string): ApplicationFailure {
    return nonRetryable(FailureTypes.NotFound, `VM ${vmId} is not on dedicated host ${this.state.dedicatedHostId}`);
  }
}

/**
 * How a request's one step runs. Local activities (from 'tenant-requests-as-local-activities' on) answered a tenant in
 * one workflow task, but a local activity can straddle workflow tasks: the worker completes the task it has to answer
 * a query (the API's status, the Web UI) or when the step outlives 80 % of the task timeout, and the next task brings
 * new events (a move's end) while the step still runs. Its result then comes after those events as the task ran, but
 * with them, in one activation, on replay (the history does not record where the result came), so the commands come
 * in another order and the replay fails: a worker restart or a query on an uncached worker would wedge the migration
 * (seen once after a history-process restart; test/workflow/replay-interleaving.test.ts makes it happen). Regular
 * activities' results are events of their own, so from 'tenant-requests-as-activities' on the steps run as those
 * again; runs that recorded the local-activity marker before replay as they ran.
 */
function requestSteps(): typeof steps {
  if (patched('tenant-requests-as-activities')) return steps;
  return patched('tenant-requests-as-local-activities') ? localSteps : steps;
}

/** An outcome as the Update's answer: the result, or the recorded failure (with the type it was recorded with). */
function unwrap<T>(o: RequestOutcome): T {
  if (o.ok) return o.result as T;
  throw ApplicationFailure.create({ type: o.error.type, message: o.error.message, nonRetryable: true });
}

/** A failed request's reason as the caller should see it; anything unexpected is a bug and fails the task. */
function requestError(err: unknown): { type: string; message: string } {
  if (err instanceof ApplicationFailure) return { type: err.type ?? 'Error', message: err.message };
  if (err instanceof ActivityFailure && err.cause instanceof ApplicationFailure) return { type: err.cause.type ?? 'Error', message: err.cause.message };
  if (err instanceof CancelledFailure)
    return { type: FailureTypes.MigrationEnded, message: 'the migration was cancelled; send the request through the normal path' };
  throw err;
}

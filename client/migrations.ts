import { randomUUID } from 'node:crypto';
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { describeZodError, UserFacingError, zodErrorField } from '../common/errors';
import {
  FailureTypes,
  migrationWorkflowId,
  migrationRequestSchema,
  type DeleteVmArgs,
  type DeleteVmResult,
  type MigrationStatus,
  type ProvisionVmArgs,
  type ProvisionVmResult,
} from '../common/migration';
import { DedicatedHostIdKey, MigrationPhaseKey } from '../common/search-attributes';
import { deleteVmUpdate, provisionVmUpdate, statusQuery } from '../workflows/messages';
import type { migrateDedicatedHost } from '../workflows/migrate-dedicated-host';

export class MigrationAlreadyRunningError extends UserFacingError {
  constructor(readonly dedicatedHostId: string) {
    super(`dedicated host ${dedicatedHostId} is already migrating (workflow ${migrationWorkflowId(dedicatedHostId)})`, 'dedicatedHostId');
    this.name = 'MigrationAlreadyRunningError';
  }
}

/** A mid-migration request the workflow refused, with the reason's type (INSUFFICIENT_CAPACITY, MIGRATION_ENDED, ...). */
export class MigrationRequestRefused extends Error {
  constructor(
    readonly type: string,
    message: string,
  ) {
    super(message);
    this.name = 'MigrationRequestRefused';
  }
}

/**
 * Starts the migration workflow of one dedicated host. Its id is `migration-<hostId>` with conflict policy FAIL,
 * so a second request for a host already migrating is refused; once that migration has ended a new one may start.
 */
export async function startMigration(client: Client, taskQueue: string, raw: unknown): Promise<WorkflowHandle<typeof migrateDedicatedHost>> {
  const parsed = migrationRequestSchema.safeParse(raw);
  if (!parsed.success) throw new UserFacingError(describeZodError(parsed.error), zodErrorField(parsed.error));
  const request = parsed.data;
  try {
    return await client.workflow.start<typeof migrateDedicatedHost>('migrateDedicatedHost', {
      taskQueue,
      workflowId: migrationWorkflowId(request.dedicatedHostId),
      workflowIdConflictPolicy: WorkflowIdConflictPolicy.FAIL,
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
      args: [request],
      typedSearchAttributes: [
        { key: DedicatedHostIdKey, value: request.dedicatedHostId },
        { key: MigrationPhaseKey, value: 'validating' },
      ],
      staticSummary: `Live migration of dedicated host ${request.dedicatedHostId}${request.targetServerId ? ` to ${request.targetServerId}` : ''}`,
      staticDetails: `Requested by ${request.requestedBy}. Policy: ${JSON.stringify(request.policy)}`,
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) throw new MigrationAlreadyRunningError(request.dedicatedHostId);
    throw err;
  }
}

export function migrationHandle(client: Client, dedicatedHostId: string) {
  return client.workflow.getHandle<typeof migrateDedicatedHost>(migrationWorkflowId(dedicatedHostId));
}

export async function migrationStatus(client: Client, dedicatedHostId: string): Promise<MigrationStatus> {
  return migrationHandle(client, dedicatedHostId).query(statusQuery);
}

function refusal(err: unknown): never {
  // The migration closed between the caller seeing the host migrating and the update reaching it: the request was
  // not taken, and the host is (or is about to be) back on the normal path — the same answer as a late request gets.
  if (err instanceof WorkflowNotFoundError)
    throw new MigrationRequestRefused(FailureTypes.MigrationEnded, `the migration is over (${err.message}); send the request through the normal path`);
  if (err instanceof WorkflowUpdateFailedError) {
    const cause = err.cause;
    const type = cause instanceof ApplicationFailure && cause.type ? cause.type : 'INVALID_INPUT';
    throw new MigrationRequestRefused(type, cause?.message ?? err.message);
  }
  throw err;
}

/** How long a request keeps trying while a migration hands over to its next run (continue-as-new takes a moment). */
const HAND_OVER_PATIENCE_MS = 30_000;

/** Sends one update; a refusal because the run is handing over is sent again (same request id) to the next run. */
async function sendUpdate<T>(send: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + HAND_OVER_PATIENCE_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      return await send();
    } catch (err) {
      try {
        return refusal(err);
      } catch (refused) {
        if (!(refused instanceof MigrationRequestRefused && refused.type === FailureTypes.MigrationContinuing) || Date.now() > deadline) throw refused;
        await new Promise((r) => setTimeout(r, Math.min(1000, 25 * attempt)));
      }
    }
  }
}

/** Provisions a VM on the migrating host's clone through the workflow (claims 1f, 6, 7). */
export async function provisionVmDuringMigration(
  client: Client,
  dedicatedHostId: string,
  args: Omit<ProvisionVmArgs, 'requestId'> & { requestId?: string },
): Promise<ProvisionVmResult> {
  const requestId = args.requestId ?? randomUUID();
  return sendUpdate(() => migrationHandle(client, dedicatedHostId).executeUpdate(provisionVmUpdate, { args: [{ ...args, requestId }], updateId: requestId }));
}

/** Deletes a VM of the migrating host wherever it is at that moment (claim 8). */
export async function deleteVmDuringMigration(
  client: Client,
  dedicatedHostId: string,
  args: Omit<DeleteVmArgs, 'requestId'> & { requestId?: string },
): Promise<DeleteVmResult> {
  const requestId = args.requestId ?? randomUUID();
  return sendUpdate(() => migrationHandle(client, dedicatedHostId).executeUpdate(deleteVmUpdate, { args: [{ ...args, requestId }], updateId: requestId }));
}

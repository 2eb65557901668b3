import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { DeleteVmArgs, DeleteVmResult, MigrationStatus, ProvisionVmArgs, ProvisionVmResult } from '../common/migration';

/**
 * The migration workflow's messages, defined once here and imported by every client. Updates are the
 * request/response path; the signals of the same name do the same thing fire-and-forget (their outcome shows in the
 * `status` query under the request id).
 */
export const provisionVmUpdate = defineUpdate<ProvisionVmResult, [ProvisionVmArgs]>('provisionVm');
export const deleteVmUpdate = defineUpdate<DeleteVmResult, [DeleteVmArgs]>('deleteVm');
export const provisionVmSignal = defineSignal<[ProvisionVmArgs]>('provisionVm');
export const deleteVmSignal = defineSignal<[DeleteVmArgs]>('deleteVm');
export const statusQuery = defineQuery<MigrationStatus>('status');
/** The outcome of a request sent by id, for signal senders (updates get theirs in the reply). */
export const requestOutcomeQuery = defineQuery<RequestOutcome | null, [string]>('requestOutcome');

export type RequestOutcome =
  { requestId: string; ok: true; result: ProvisionVmResult | DeleteVmResult } | { requestId: string; ok: false; error: { type: string; message: string } };

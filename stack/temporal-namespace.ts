import type { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { msToTs } from '@temporalio/common/lib/time';
import { UserFacingError } from '../common/errors';
import { CUSTOM_SEARCH_ATTRIBUTES } from '../common/search-attributes';
import { waitFor } from './ports';

const KEYWORD = temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;
const GRPC_NOT_FOUND = 5;
const GRPC_ALREADY_EXISTS = 6;
const GRPC_PERMISSION_DENIED = 7;
const GRPC_UNIMPLEMENTED = 12;

const grpcCode = (err: unknown) => (err as { code?: number }).code;

/** A real server (unlike the dev server) starts with no `default` namespace: register it, then wait until the frontend knows it. */
export async function ensureNamespace(connection: Connection, namespace: string, retentionDays = 7): Promise<'created' | 'existed'> {
  let outcome: 'created' | 'existed' = 'created';
  try {
    await connection.workflowService.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs(`${retentionDays}d`) });
  } catch (err) {
    if (grpcCode(err) !== GRPC_ALREADY_EXISTS) throw err;
    outcome = 'existed';
  }
  // The namespace registry refreshes every few seconds; a namespace-scoped call answers once it has.
  await waitFor(`namespace ${namespace}`, () => connection.workflowService.countWorkflowExecutions({ namespace }), 30_000, 250);
  return outcome;
}

/**
 * dhm's custom search attributes (common/search-attributes.ts, the one list) on the namespace: the missing ones are
 * registered through the operator API when the server lets dhm; otherwise one line names them and the command to
 * run. Returns the names it added.
 */
export async function ensureSearchAttributes(connection: Connection, namespace: string, field = 'TEMPORAL_ADDRESS'): Promise<string[]> {
  const present = async () => Object.keys((await connection.operatorService.listSearchAttributes({ namespace })).customAttributes ?? {});
  const initial = await present();
  const toAdd = Object.keys(CUSTOM_SEARCH_ATTRIBUTES).filter((name) => !initial.includes(name));
  if (toAdd.length === 0) return [];
  try {
    await connection.operatorService.addSearchAttributes({ namespace, searchAttributes: Object.fromEntries(toAdd.map((name) => [name, KEYWORD])) });
  } catch (err) {
    const code = grpcCode(err);
    const how = toAdd
      .map((n) => `temporal operator search-attribute create --namespace ${namespace} --name ${n} --type ${CUSTOM_SEARCH_ATTRIBUTES[n]}`)
      .join(' && ');
    if (code === GRPC_PERMISSION_DENIED || code === GRPC_UNIMPLEMENTED) {
      throw new UserFacingError(
        `${field}: namespace ${namespace} lacks the search attributes ${toAdd.join(', ')} and dhm may not add them (${(err as Error).message}); an admin must run: ${how}`,
        field,
      );
    }
    throw new UserFacingError(
      `${field}: namespace ${namespace} lacks the search attributes ${toAdd.join(', ')} and adding them failed (${(err as Error).message}); run: ${how}`,
      field,
    );
  }
  await waitFor(
    `search attributes ${toAdd.join(', ')} on ${namespace}`,
    async () => {
      const now = await present();
      const still = toAdd.filter((n) => !now.includes(n));
      if (still.length) throw new Error(`still missing ${still.join(', ')}`);
    },
    30_000,
    250,
  );
  return toAdd;
}

/**
 * The roles' start check (`dhm worker`, `dhm api`): every search attribute of dhm is registered on the namespace, as
 * Keyword. A role never registers them itself (that is an admin's act, or `dhm up`'s); without them a migration fails
 * as it starts (the workflow upserts them) and the API cannot list migrations by host, so the role refuses to start,
 * in one line naming what is missing and the commands that register it.
 */
export async function requireSearchAttributes(connection: Connection, namespace: string): Promise<void> {
  let registered: Record<string, temporal.api.enums.v1.IndexedValueType>;
  try {
    registered = (await connection.operatorService.listSearchAttributes({ namespace })).customAttributes ?? {};
  } catch (err) {
    if (grpcCode(err) === GRPC_NOT_FOUND) {
      throw new UserFacingError(
        `TEMPORAL_NAMESPACE: namespace ${namespace} does not exist on the Temporal server; create it: temporal operator namespace create --namespace ${namespace}`,
        'TEMPORAL_NAMESPACE',
      );
    }
    throw err;
  }
  const missing = Object.keys(CUSTOM_SEARCH_ATTRIBUTES).filter((name) => registered[name] === undefined);
  const wrong = Object.keys(CUSTOM_SEARCH_ATTRIBUTES).filter((name) => registered[name] !== undefined && registered[name] !== KEYWORD);
  if (!missing.length && !wrong.length) return;
  const what = [
    ...(missing.length ? [`lacks the search attribute${missing.length === 1 ? '' : 's'} ${missing.join(', ')}`] : []),
    ...(wrong.length
      ? [
          `has ${wrong.map((n) => `${n} as ${temporal.api.enums.v1.IndexedValueType[registered[n]!]?.replace('INDEXED_VALUE_TYPE_', '') ?? registered[n]}`).join(', ')} (dhm needs Keyword)`,
        ]
      : []),
  ].join(' and ');
  const create = (n: string) => `temporal operator search-attribute create --namespace ${namespace} --name ${n} --type ${CUSTOM_SEARCH_ATTRIBUTES[n]}`;
  const how = [
    ...missing.map(create),
    ...wrong.map((n) => `temporal operator search-attribute remove --namespace ${namespace} --name ${n} --yes && ${create(n)}`),
  ].join(' && ');
  throw new UserFacingError(
    `TEMPORAL_NAMESPACE: namespace ${namespace} ${what}; register them: ${how} (or run dhm up against this TEMPORAL_ADDRESS once, which adds them)`,
    'TEMPORAL_NAMESPACE',
  );
}

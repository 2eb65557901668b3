import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import type { FastifyInstance } from 'fastify';
import type { z } from 'zod';
import { migrationWorkflowId, TERMINAL_PHASES } from '../../common/migration';
import { fits } from '../../common/resources';
import { targetMismatch } from '../../common/target-match';
import { DedicatedHostIdKey, MigrationPhaseKey } from '../../common/search-attributes';
import { isInventoryError, type HostView } from '../../inventory';
import { statusQuery } from '../../workflows/messages';
import { explicitFields, policyForHost } from '../default-policy';
import { startMigration } from '../../client/migrations';
import { idempotent, parseOptionalBody, parseWith, send, type ApiContext } from '../context';
import { ApiError } from '../errors';
import { migrationAcceptedReply, migrationCancelReply, migrationListItem, migrationListReply, migrationView, MIGRATION_ID_PREFIX, routes } from '../schemas';
import { register } from './register';

const WORKFLOW_TYPE = 'migrateDedicatedHost';
const DESCRIBE_TIMEOUT_MS = 5_000;
const QUERY_TIMEOUT_MS = 10_000;
const LIST_TIMEOUT_MS = 10_000;
/** Task queue names that can be put in a visibility query as they are (anything else is filtered in code). */
const SAFE_LITERAL = /^[A-Za-z0-9._:-]{1,200}$/;

type MoveProgress = {
  vmId?: unknown;
  round: number;
  bytesSent: number;
  bytesRemaining: number;
  memoryBytes: number;
  throughputBps: number;
  dirtyRateBps: number;
  throttlePct: number;
  state: string;
  memory?: { bytesTotal: number; bytesTransferred: number; bytesRemaining: number };
  disk?: { bytesTotal: number; bytesCopied: number; bytesRemaining: number } | null;
};

/**
 * Migrations. The migration object is the Temporal workflow `migration-<hostId>` (claim 1b), so these routes read
 * Temporal: the list from visibility (workflow type, this API's task queue, the DedicatedHostId and MigrationPhase
 * search attributes; no per-item query), one migration from its `status` query (which answers after completion too)
 * plus the heartbeats of its moves in flight. Operators only: tenants see their host's migration as `migration` in
 * the host view.
 */
export function registerMigrationRoutes(app: FastifyInstance, ctx: ApiContext): void {
  const { client, taskQueue } = ctx.temporal;

  /** The workflow of a migration id, if it is a migration of this deployment (same task queue); else 404. */
  const describeMigration = async (id: string) => {
    const handle = client.workflow.getHandle(id);
    const desc = await client.withDeadline(Date.now() + DESCRIBE_TIMEOUT_MS, () => handle.describe());
    if (desc.type !== WORKFLOW_TYPE || desc.taskQueue !== taskQueue) throw new ApiError(404, 'NOT_FOUND', `id: no migration ${id}`, 'id');
    return { handle, desc };
  };

  /** A named target must exist and match the host; without one, some matching server must be free (or the policy waits). */
  const precheckTarget = async (host: HostView, targetServerId: string | undefined, waitsForCapacity: boolean) => {
    if (targetServerId !== undefined) {
      const srv = await ctx.inventory.getServer(targetServerId).catch((err: unknown) => {
        if (isInventoryError(err, 'NOT_FOUND')) throw new ApiError(404, 'NOT_FOUND', `targetServerId: no physical server ${targetServerId}`, 'targetServerId');
        throw err;
      });
      const why = targetMismatch(host, srv, host.serverId);
      // Well-formed, but this server cannot take this host: a conflict with the fleet's state, not bad input.
      if (why) throw new ApiError(409, 'TARGET_MISMATCH', `targetServerId: server ${srv.id} ${why}`, 'targetServerId');
      if (srv.state !== 'available')
        throw new ApiError(409, 'WRONG_STATE', `targetServerId: server ${srv.id} is ${srv.state}, not available`, 'targetServerId');
      return;
    }
    if (waitsForCapacity) return;
    const free = await ctx.inventory.listServers({ zone: host.zone, resourceClass: host.resourceClass, state: 'available' });
    if (!free.some((s) => s.id !== host.serverId && fits(host.capacity, s.capacity)))
      throw new ApiError(409, 'NO_MATCHING_SERVER', `no available server of class ${host.resourceClass} in zone ${host.zone} to migrate to`);
  };

  register(app, routes.startMigration, async (req, reply) => {
    const { id } = parseWith(routes.startMigration.params, req.params, 'params');
    const body = parseOptionalBody(routes.startMigration.body, req.body);
    return idempotent(ctx, req, reply, async () => {
      const host = await ctx.inventory.getHost(id);
      if (host.state === 'migrating')
        throw new ApiError(409, 'ALREADY_MIGRATING', `dedicated host ${id} is already migrating (${migrationWorkflowId(id)})`, 'id');
      await precheckTarget(host, body.targetServerId, (body.policy?.waitForCapacitySeconds ?? 0) > 0);
      // dhm's own schedule for this host, with every field the operator set kept as set.
      const policy = await policyForHost(ctx.inventory, id, explicitFields(body.policy, (req.body as { policy?: unknown } | undefined)?.policy));
      const handle = await startMigration(client, taskQueue, {
        dedicatedHostId: id,
        ...(body.targetServerId ? { targetServerId: body.targetServerId } : {}),
        policy,
        requestedBy: 'operator',
      });
      return { status: 202, schema: migrationAcceptedReply, body: { id: handle.workflowId, dedicatedHostId: id, phase: 'validating' } };
    });
  });

  register(app, routes.listMigrations, async (req, reply) => {
    const q = parseWith(routes.listMigrations.query, req.query, 'query');
    const limit = q.limit ?? 100;
    // Every value put in the query is a validated id, an enum member or a safe literal: nothing can break out of it.
    const parts = [`WorkflowType = '${WORKFLOW_TYPE}'`];
    if (SAFE_LITERAL.test(taskQueue)) parts.push(`TaskQueue = '${taskQueue}'`);
    if (q.dedicatedHostId) parts.push(`DedicatedHostId = '${q.dedicatedHostId}'`);
    if (q.phase) parts.push(`MigrationPhase = '${q.phase}'`);
    const migrations: Array<z.input<typeof migrationListItem>> = [];
    await client.withDeadline(Date.now() + LIST_TIMEOUT_MS, async () => {
      for await (const wf of client.workflow.list({ query: parts.join(' AND '), pageSize: Math.min(limit, 200) })) {
        if (wf.taskQueue !== taskQueue || wf.status.name === 'CONTINUED_AS_NEW') continue;
        migrations.push({
          id: wf.workflowId,
          runId: wf.runId,
          dedicatedHostId: wf.typedSearchAttributes.get(DedicatedHostIdKey) ?? null,
          phase: wf.typedSearchAttributes.get(MigrationPhaseKey) ?? null,
          workflowStatus: wf.status.name,
          startedAt: wf.startTime.toISOString(),
          closedAt: wf.closeTime?.toISOString() ?? null,
        });
        if (migrations.length >= limit) break;
      }
    });
    return send(reply, 200, migrationListReply, { migrations });
  });

  register(app, routes.getMigration, async (req, reply) => {
    const { id } = parseWith(routes.getMigration.params, req.params, 'params');
    parseWith(routes.getMigration.query, req.query, 'query');
    const { handle, desc } = await describeMigration(id);
    const st = await client.withDeadline(Date.now() + QUERY_TIMEOUT_MS, () => handle.query(statusQuery));
    // Live progress of moves in flight: each move activity heartbeats its agent job's figures.
    const progress = new Map<string, MoveProgress>();
    for (const pa of desc.raw.pendingActivities ?? []) {
      if (pa.activityType?.name !== 'liveMigrateVm') continue;
      const payload = pa.heartbeatDetails?.payloads?.[0];
      if (!payload) continue;
      try {
        const d = defaultPayloadConverter.fromPayload<MoveProgress>(payload as Payload);
        if (d && typeof d.vmId === 'string') progress.set(d.vmId, d);
      } catch (err) {
        req.log.debug({ err }, 'unreadable heartbeat details');
      }
    }
    return send(reply, 200, migrationView, {
      ...st,
      id: desc.workflowId,
      runId: desc.runId,
      workflowStatus: desc.status.name,
      policy: st.policy as Record<string, unknown>,
      vms: st.vms.map((v) => {
        const pr = progress.get(v.vmId);
        return { ...v, ...(pr && (v.state === 'moving' || v.state === 'moving-back') ? { progress: pr } : {}) };
      }),
    });
  });

  register(app, routes.cancelMigration, async (req, reply) => {
    const { id } = parseWith(routes.cancelMigration.params, req.params, 'params');
    parseOptionalBody(routes.cancelMigration.body, req.body);
    return idempotent(ctx, req, reply, async () => {
      const { handle, desc } = await describeMigration(id);
      if (desc.status.name !== 'RUNNING') throw new ApiError(409, 'WRONG_STATE', `migration ${id} has ended (${desc.status.name})`, 'id');
      const st = await client.withDeadline(Date.now() + QUERY_TIMEOUT_MS, () => handle.query(statusQuery));
      if (st.phase === 'finalizing' || TERMINAL_PHASES.has(st.phase))
        throw new ApiError(409, 'WRONG_STATE', `migration ${id} is ${st.phase}: past the point where it can be cancelled`, 'id');
      await handle.cancel();
      return {
        status: 202,
        schema: migrationCancelReply,
        body: { id, dedicatedHostId: id.slice(MIGRATION_ID_PREFIX.length), phase: st.phase, cancelRequested: true },
      };
    });
  });
}

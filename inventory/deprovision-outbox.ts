import type { PoolClient } from 'pg';
import { audit } from './audit';
import { iso, isoNN } from './db';
import { InventoryError, notFound } from './errors';
import { serverRow, updateServer } from './servers';
import type { DeprovisionAfterState, DeprovisionJob } from './types';

/**
 * The de-provisioning outbox (table `deprovision_outbox`), claim 5: deleting an incarnation writes a row here in the
 * same transaction, and the scheduler service (workers/scheduler.ts) tears the incarnation down on its server's agent
 * and gives the server its after-state. A migration's finalize and the deletion of a host both enqueue through
 * `enqueueDeprovision`, so the scheduler has one path for both.
 */

/**
 * LISTEN on this channel to hear of new de-provisioning jobs; the payload is the job id. The name is the one the
 * outbox's insert trigger notifies (inventory/migrations/001_inventory.sql), at commit.
 */
export const DEPROVISION_CHANNEL = 'dhm_deprovision';

export interface OutboxRow {
  id: string;
  incarnation_id: string;
  server_id: string;
  agent_url: string;
  migration_id: string | null;
  after_state: DeprovisionAfterState;
  state: DeprovisionJob['state'];
  claimed_by: string | null;
  claimed_at: Date | null;
  attempts: number;
  last_error: string | null;
  created_at: Date;
  done_at: Date | null;
}

type JobRow = OutboxRow & { dedicated_host_id: string };

export const toJob = (r: OutboxRow): DeprovisionJob => ({
  id: Number(r.id),
  incarnationId: r.incarnation_id,
  serverId: r.server_id,
  agentUrl: r.agent_url,
  migrationId: r.migration_id,
  afterState: r.after_state,
  state: r.state,
  claimedBy: r.claimed_by,
  claimedAt: iso(r.claimed_at),
  attempts: r.attempts,
  lastError: r.last_error,
  createdAt: isoNN(r.created_at),
  doneAt: iso(r.done_at),
});

/** Jobs with their server's agent URL and their host, by id or by incarnation. */
async function jobRows(c: PoolClient, by: { ids: string[] } | { incarnationId: string }): Promise<JobRow[]> {
  const { rows } = await c.query<JobRow>(
    `SELECT o.*, s.agent_url, i.dedicated_host_id
       FROM deprovision_outbox o
       JOIN physical_servers s ON s.id = o.server_id
       JOIN host_incarnations i ON i.id = o.incarnation_id
      WHERE ${'ids' in by ? 'o.id = ANY($1::bigint[])' : 'o.incarnation_id = $1'} ORDER BY o.id`,
    ['ids' in by ? by.ids : by.incarnationId],
  );
  return rows;
}

const jobById = async (c: PoolClient, id: string): Promise<JobRow> => (await jobRows(c, { ids: [id] }))[0]!;

/** The job of a deleted incarnation (every deleted primary has one). */
export async function jobOfIncarnation(c: PoolClient, incarnationId: string): Promise<DeprovisionJob> {
  return toJob((await jobRows(c, { incarnationId }))[0]!);
}

/**
 * Hands a deleted incarnation's server to the scheduler: server → deprovisioning, the outbox row (NOTIFY at commit),
 * their audit events. The caller holds the host and the server, has deleted the incarnation in this transaction,
 * and writes its own event for why.
 */
export async function enqueueDeprovision(
  c: PoolClient,
  p: { incarnationId: string; serverId: string; afterState: DeprovisionAfterState; actor: string; dedicatedHostId: string; migrationId: string | null },
): Promise<DeprovisionJob> {
  await updateServer(c, p.serverId, { state: 'deprovisioning' });
  const { rows } = await c.query<{ id: string }>(
    `INSERT INTO deprovision_outbox (incarnation_id, server_id, migration_id, after_state) VALUES ($1, $2, $3, $4) RETURNING id`,
    [p.incarnationId, p.serverId, p.migrationId, p.afterState],
  );
  const base = { actor: p.actor, dedicatedHostId: p.dedicatedHostId, migrationId: p.migrationId };
  await audit(c, { ...base, action: 'server.deprovisioning', entityType: 'physical_server', entityId: p.serverId, physical: { afterState: p.afterState } });
  await audit(c, {
    ...base,
    action: 'deprovision.enqueued',
    entityType: 'deprovision_job',
    entityId: rows[0]!.id,
    physical: { serverId: p.serverId, incarnationId: p.incarnationId, afterState: p.afterState },
  });
  return toJob(await jobById(c, rows[0]!.id));
}

/** Claims up to `limit` pending jobs (SKIP LOCKED); a claim older than staleAfterMs is taken over. */
export async function claimDeprovisionJobs(c: PoolClient, p: { schedulerId: string; limit: number; staleAfterMs: number }): Promise<DeprovisionJob[]> {
  // SKIP LOCKED: two schedulers claiming at once take disjoint rows; a stale claim (its scheduler died) is retaken.
  const { rows } = await c.query<{ id: string }>(
    `WITH picked AS (
       SELECT id FROM deprovision_outbox
        WHERE state = 'pending'
          AND (claimed_at IS NULL OR claimed_at < now() - make_interval(secs => $3::double precision / 1000))
        ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
     UPDATE deprovision_outbox o SET claimed_by = $1, claimed_at = now(), attempts = o.attempts + 1
       FROM picked WHERE o.id = picked.id RETURNING o.id`,
    [p.schedulerId, p.limit, p.staleAfterMs],
  );
  const jobs = await jobRows(c, { ids: rows.map((r) => r.id) });
  for (const j of jobs)
    await audit(c, {
      actor: `scheduler:${p.schedulerId}`,
      action: 'deprovision.claimed',
      entityType: 'deprovision_job',
      entityId: j.id,
      dedicatedHostId: j.dedicated_host_id,
      migrationId: j.migration_id,
      physical: { serverId: j.server_id, attempt: j.attempts },
    });
  return jobs.map(toJob);
}

async function lockJob(c: PoolClient, jobId: number): Promise<OutboxRow> {
  const { rows } = await c.query<OutboxRow>('SELECT * FROM deprovision_outbox WHERE id = $1 FOR UPDATE', [jobId]);
  if (!rows[0]) throw notFound('de-provisioning job', String(jobId), 'jobId');
  return rows[0];
}

const markDone = (c: PoolClient, jobId: string, lastError?: string) =>
  c.query(`UPDATE deprovision_outbox SET state = 'done', done_at = now(), last_error = coalesce($2, last_error) WHERE id = $1`, [jobId, lastError ?? null]);

/** Server → the job's after-state, job done. Idempotent for the claimer; CONFLICT for anyone else. */
export async function completeDeprovisionJob(c: PoolClient, p: { jobId: number; schedulerId: string }): Promise<DeprovisionJob> {
  const job = await lockJob(c, p.jobId);
  if (job.state === 'done') {
    if (job.claimed_by === p.schedulerId) return toJob(await jobById(c, job.id));
    throw new InventoryError('CONFLICT', `jobId: job ${p.jobId} was completed by ${job.claimed_by}`, 'jobId');
  }
  if (job.claimed_by !== p.schedulerId)
    throw new InventoryError('CONFLICT', `jobId: job ${p.jobId} is claimed by ${job.claimed_by ?? 'nobody'}, not ${p.schedulerId}`, 'jobId');
  const srv = (await serverRow(c, job.server_id, true))!;
  const withHost = await jobById(c, job.id);
  const base = { actor: `scheduler:${p.schedulerId}`, dedicatedHostId: withHost.dedicated_host_id, migrationId: job.migration_id };
  // Only a server still waiting for this teardown changes state; an operator may have moved it meanwhile.
  if (srv.state === 'deprovisioning') {
    await updateServer(c, srv.id, { state: job.after_state });
    await audit(c, { ...base, action: 'server.deprovisioned', entityType: 'physical_server', entityId: srv.id, physical: { state: job.after_state } });
  }
  await markDone(c, job.id);
  await audit(c, {
    ...base,
    action: 'deprovision.completed',
    entityType: 'deprovision_job',
    entityId: job.id,
    physical: { serverId: srv.id, serverStateBefore: srv.state },
  });
  return toJob(await jobById(c, job.id));
}

/** Gives a claimed job back after a failed attempt (error recorded), or gives up: server `failed`, job done. */
export async function releaseDeprovisionJob(c: PoolClient, p: { jobId: number; schedulerId: string; error: string; giveUp: boolean }): Promise<DeprovisionJob> {
  const job = await lockJob(c, p.jobId);
  if (job.state === 'done' || job.claimed_by !== p.schedulerId)
    throw new InventoryError('CONFLICT', `jobId: job ${p.jobId} is not claimed by ${p.schedulerId}`, 'jobId');
  const withHost = await jobById(c, job.id);
  const base = { actor: `scheduler:${p.schedulerId}`, dedicatedHostId: withHost.dedicated_host_id, migrationId: job.migration_id };
  if (p.giveUp) {
    const srv = (await serverRow(c, job.server_id, true))!;
    if (srv.state === 'deprovisioning') await updateServer(c, srv.id, { state: 'failed' });
    await markDone(c, job.id, p.error);
    await audit(c, { ...base, action: 'server.failed', entityType: 'physical_server', entityId: job.server_id, physical: { error: p.error } });
    await audit(c, { ...base, action: 'deprovision.given_up', entityType: 'deprovision_job', entityId: job.id, physical: { error: p.error } });
  } else {
    await c.query('UPDATE deprovision_outbox SET claimed_by = NULL, claimed_at = NULL, last_error = $2 WHERE id = $1', [job.id, p.error]);
    await audit(c, { ...base, action: 'deprovision.attempt_failed', entityType: 'deprovision_job', entityId: job.id, physical: { error: p.error } });
  }
  return toJob(await jobById(c, job.id));
}

export async function listDeprovisionJobs(c: PoolClient, state: 'pending' | 'done' | undefined): Promise<DeprovisionJob[]> {
  const { rows } = await c.query<{ id: string }>('SELECT id FROM deprovision_outbox WHERE ($1::deprovision_state IS NULL OR state = $1) ORDER BY id', [
    state ?? null,
  ]);
  return (await jobRows(c, { ids: rows.map((r) => r.id) })).map(toJob);
}

import { Client } from 'pg';
import type { TestDatabase } from '../support/database';
import { DEPROVISION_CHANNEL, type Inventory } from '../../inventory';
import { OP, claimJob, countEvents, expectInventoryError, freshZone, migrateToClone, tenantWithHost, inventoryPerFile } from './helpers';

let db: TestDatabase;
let inv: Inventory;

inventoryPerFile((d, i) => {
  db = d;
  inv = i;
});

/** A finalized migration: its old server waits in the outbox. */
async function finalized(afterState: 'available' | 'maintenance' = 'available') {
  const { zone, std } = await freshZone(inv, { std: 2 });
  const { host } = await tenantWithHost(inv, zone);
  const m = await migrateToClone(inv, host.id);
  const fin = await inv.finalizeMigration({ migrationId: m.migrationId, dedicatedHostId: host.id, afterState, actor: m.actor });
  return { host, oldServer: std[0]!, job: fin.deprovisionJob, migrationId: m.migrationId };
}

const claim = (schedulerId: string, jobId: number, staleAfterMs?: number) => claimJob(inv, schedulerId, jobId, staleAfterMs);

test('finalize notifies the scheduler at commit (LISTEN/NOTIFY) with the job id', async () => {
  const listener = new Client({ connectionString: db.url });
  await listener.connect();
  try {
    const heard: string[] = [];
    listener.on('notification', (n) => {
      if (n.channel === DEPROVISION_CHANNEL) heard.push(n.payload ?? '');
    });
    await listener.query(`LISTEN ${DEPROVISION_CHANNEL}`);
    const { job } = await finalized();
    for (let i = 0; i < 100 && heard.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(heard).toEqual([String(job.id)]);
  } finally {
    await listener.end();
  }
});

test('claim → complete: the server goes to the after-state, the job is done; completing again is the same answer', async () => {
  const { oldServer, job, host, migrationId } = await finalized('maintenance');
  expect((await inv.getServer(oldServer)).state).toBe('deprovisioning');
  const claimed = await claim('sched-a', job.id);
  expect(claimed).toMatchObject({
    id: job.id,
    serverId: oldServer,
    agentUrl: expect.stringMatching(/^http:/),
    claimedBy: 'sched-a',
    attempts: 1,
    state: 'pending',
  });
  const done = await inv.completeDeprovisionJob({ jobId: job.id, schedulerId: 'sched-a' });
  expect(done).toMatchObject({ id: job.id, state: 'done', claimedBy: 'sched-a' });
  expect((await inv.getServer(oldServer)).state).toBe('maintenance');
  const events = await countEvents(db.pool);
  expect(await inv.completeDeprovisionJob({ jobId: job.id, schedulerId: 'sched-a' })).toEqual(done);
  expect(await countEvents(db.pool)).toBe(events);
  await expectInventoryError(inv.completeDeprovisionJob({ jobId: job.id, schedulerId: 'sched-b' }), 'CONFLICT', 'jobId');
  await expectInventoryError(inv.completeDeprovisionJob({ jobId: 999_999, schedulerId: 'sched-a' }), 'NOT_FOUND', 'jobId');
  const actions = (await inv.listEvents({ dedicatedHostId: host.id, migrationId })).map((e) => e.action);
  expect(actions.slice(-3)).toEqual(['deprovision.claimed', 'server.deprovisioned', 'deprovision.completed']);
  // Done jobs are never claimed again.
  expect(await claim('sched-c', job.id, 0)).toBeUndefined();
});

test('two schedulers claiming at once take disjoint jobs; only the claimer completes', async () => {
  const jobs = [];
  for (let i = 0; i < 4; i++) jobs.push((await finalized()).job);
  const [a, b] = await Promise.all([
    inv.claimDeprovisionJobs({ schedulerId: 'sched-x', limit: 3 }),
    inv.claimDeprovisionJobs({ schedulerId: 'sched-y', limit: 3 }),
  ]);
  const ids = [...a, ...b].map((j) => j.id);
  expect(new Set(ids).size).toBe(ids.length);
  for (const j of jobs) expect(ids).toContain(j.id);
  const one = a[0] ?? b[0]!;
  const owner = one.claimedBy!;
  const thief = owner === 'sched-x' ? 'sched-y' : 'sched-x';
  // Both try to complete the same row at once: exactly one succeeds.
  const results = await Promise.allSettled([
    inv.completeDeprovisionJob({ jobId: one.id, schedulerId: owner }),
    inv.completeDeprovisionJob({ jobId: one.id, schedulerId: thief }),
  ]);
  expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected']);
  expect((results[1] as PromiseRejectedResult).reason.code).toBe('CONFLICT');
  for (const j of [...a, ...b]) if (j.id !== one.id) await inv.completeDeprovisionJob({ jobId: j.id, schedulerId: j.claimedBy! });
});

test('a stale claim (its scheduler died) is taken over; the dead one can no longer complete it', async () => {
  const { job, oldServer } = await finalized();
  const first = await claim('sched-dead', job.id);
  expect(first?.attempts).toBe(1);
  // Fresh claims are not taken over...
  expect(await claim('sched-alive', job.id, 60_000)).toBeUndefined();
  // ...stale ones are.
  await new Promise((r) => setTimeout(r, 30));
  const second = await claim('sched-alive', job.id, 10);
  expect(second).toMatchObject({ claimedBy: 'sched-alive', attempts: 2 });
  await expectInventoryError(inv.completeDeprovisionJob({ jobId: job.id, schedulerId: 'sched-dead' }), 'CONFLICT', 'jobId');
  await inv.completeDeprovisionJob({ jobId: job.id, schedulerId: 'sched-alive' });
  expect((await inv.getServer(oldServer)).state).toBe('available');
});

test('a failed attempt gives the job back with its error; giving up marks the server failed', async () => {
  const { job, oldServer } = await finalized();
  await claim('sched-r', job.id);
  const back = await inv.releaseDeprovisionJob({ jobId: job.id, schedulerId: 'sched-r', error: 'agent unreachable' });
  expect(back).toMatchObject({ state: 'pending', claimedBy: null, lastError: 'agent unreachable' });
  await claim('sched-r', job.id);
  const gaveUp = await inv.releaseDeprovisionJob({ jobId: job.id, schedulerId: 'sched-r', error: 'disk wipe failed', giveUp: true });
  expect(gaveUp).toMatchObject({ state: 'done', lastError: 'disk wipe failed', attempts: 2 });
  expect((await inv.getServer(oldServer)).state).toBe('failed');
  // An operator can bring it back once repaired.
  expect((await inv.setServerState({ serverId: oldServer, state: 'available', ...OP })).state).toBe('available');
});

test('the freed server is back in the pool: a new host can take it', async () => {
  const { job, oldServer, host } = await finalized();
  await claim('sched-p', job.id);
  await inv.completeDeprovisionJob({ jobId: job.id, schedulerId: 'sched-p' });
  const again = await inv.createDedicatedHost({ tenantId: host.tenantId, name: 'next', zone: host.zone, resourceClass: 'std-64', ...OP });
  expect(again.serverId).toBe(oldServer);
  await expectInventoryError(inv.setServerState({ serverId: oldServer, state: 'maintenance', ...OP }), 'WRONG_STATE', 'serverId');
});

import { createTestDatabase, type TestDatabase } from '../support/database';
import { connectTestTemporal, type TestTemporal } from '../support/temporal';
import { createProbeActivities } from '../support/probe-activities';
import { probeInventory } from '../support/probe-workflow';

describe('the embedded stack', () => {
  let db: TestDatabase;
  let temporal: TestTemporal;

  beforeAll(async () => {
    db = await createTestDatabase();
    temporal = await connectTestTemporal();
  });
  afterAll(async () => {
    await temporal?.close();
    await db?.drop();
  });

  it('runs a workflow on the real dev server whose activity reads the real Postgres', async () => {
    await db.pool.query('CREATE TABLE probe_rows (id int)');
    await db.pool.query('INSERT INTO probe_rows SELECT generate_series(1, 7)');
    await temporal.startWorker({ activities: createProbeActivities(db.pool) });
    const n = await temporal.client.workflow.execute(probeInventory, {
      taskQueue: temporal.taskQueue,
      workflowId: `probe-${temporal.taskQueue}`,
      args: ['probe_rows'],
    });
    expect(n).toBe(7);
  });

  it('applies the inventory schema to every test database', async () => {
    const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM schema_migrations');
    expect(rows[0].n).toBeGreaterThan(0);
  });
});

import { randomBytes } from 'node:crypto';
import { Client, Pool } from 'pg';
import { migrateDatabase } from '../../inventory/migrate';

export interface TestDatabase {
  url: string;
  pool: Pool;
  drop(): Promise<void>;
}

function adminUrl(): string {
  const url = process.env.DHM_TEST_DATABASE_URL;
  if (!url) throw new Error('DHM_TEST_DATABASE_URL is not set: run tests through jest (its globalSetup starts Postgres)');
  return url;
}

/** A fresh, migrated database per test file, so files never see each other's rows. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `t_${randomBytes(6).toString('hex')}`;
  const admin = new Client({ connectionString: adminUrl() });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl());
  url.pathname = `/${name}`;
  const pool = new Pool({ connectionString: url.toString(), max: 20 });
  // Dropping the database ends every session in it; idle clients report that as an error we expect.
  let dropping = false;
  pool.on('error', (err) => {
    if (!dropping) throw err;
  });
  await migrateDatabase(pool);
  return {
    url: url.toString(),
    pool,
    drop: async () => {
      dropping = true;
      await pool.end();
      const c = new Client({ connectionString: adminUrl() });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Connection } from '@temporalio/client';
import { Client } from 'pg';
import pino from 'pino';
import { UserFacingError } from '../../common/errors';
import { createLogger } from '../../common/logger';
import { CUSTOM_SEARCH_ATTRIBUTES } from '../../common/search-attributes';
import { freePort } from '../../stack/ports';
import { startTemporalCluster, type TemporalClusterOptions } from '../../stack/temporal-cluster';
import { ensureSearchAttributes } from '../../stack/temporal-namespace';
import { inspectSchema, prepareTemporalDatabases, sqlTool, visibilityDatabaseName } from '../../stack/temporal-schema';
import { TEMPORAL_SCHEMA_VERSIONS } from '../../stack/tools/temporal-server';
import { clusterTools, dropDatabases, startTestCluster, testDatabases, type TestCluster } from './support';

const logger = createLogger('test-cluster', process.env.DHM_TEST_LOG_LEVEL ?? 'warn');

/** Processes of this machine whose environment names the database: the cluster's server processes for it. */
function serverProcessesFor(dbName: string): number[] {
  const found: number[] = [];
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (fs.readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').includes(`TEMPORAL_DB_NAME=${dbName}`)) found.push(Number(pid));
    } catch {
      // gone, or not ours to read
    }
  }
  return found;
}

async function sql(db: ReturnType<typeof testDatabases>, database: string, text: string): Promise<void> {
  const c = new Client({ host: db.host, port: db.port, user: db.user, password: db.password, database });
  await c.connect();
  try {
    await c.query(text);
  } finally {
    await c.end();
  }
}

/** A start of the cluster that must be refused: one line naming what and the fix, nothing left running. */
async function refusedStart(db: ReturnType<typeof testDatabases>, extra: Partial<TemporalClusterOptions> = {}): Promise<string> {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-cluster-bad-'));
  try {
    const err = await startTemporalCluster({
      tools: await clusterTools(),
      stateDir,
      db,
      anyDatabase: db.anyDatabase,
      port: await freePort(),
      uiPort: null,
      shards: 4,
      historyProcesses: 2,
      namespace: 'default',
      logger,
      ...extra,
    }).then(
      async (c) => {
        await c.stop();
        throw new Error('the cluster started');
      },
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(UserFacingError);
    expect(err.message).not.toMatch(/\n/);
    process.stdout.write(`refused: ${err.message}\n`);
    expect(serverProcessesFor(db.name)).toEqual([]);
    const left = fs.existsSync(path.join(stateDir, 'temporal-cluster'))
      ? fs.readdirSync(path.join(stateDir, 'temporal-cluster')).filter((f) => f.endsWith('.pid'))
      : [];
    expect(left).toEqual([]);
    return err.message;
  } finally {
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

describe('the cluster refuses bad databases and a cluster that does not serve, with the fix, leaving nothing running', () => {
  const dbs: Array<ReturnType<typeof testDatabases>> = [];
  const fresh = () => {
    const db = testDatabases();
    dbs.push(db);
    return db;
  };
  afterAll(async () => {
    for (const db of dbs) await dropDatabases(db);
  });

  test("a database holding tables that are not Temporal's", async () => {
    const db = fresh();
    await sql(db, db.anyDatabase, `CREATE DATABASE ${db.name}`);
    await sql(db, db.name, 'CREATE TABLE orders (id int)');
    const msg = await refusedStart(db);
    expect(msg).toMatch(new RegExp(`Temporal database ${db.name} .* holds 1 tables but no Temporal schema.*DHM_TEMPORAL_DATABASE`));
    // Untouched.
    expect(await inspectSchema(db, db.name, db.anyDatabase)).toEqual({ kind: 'foreign', tables: 1 });
  });

  test('an older schema: refused with the upgrade command; upgraded only when asked', async () => {
    const db = fresh();
    const tools = await clusterTools();
    await sqlTool(tools.sqlTool, db, db.name, ['create']);
    await sqlTool(tools.sqlTool, db, db.name, ['setup-schema', '-v', '0.0']);
    await sqlTool(tools.sqlTool, db, db.name, ['update-schema', '--schema-name', 'postgresql/v12/temporal', '--version', '1.17']);
    expect(await inspectSchema(db, db.name, db.anyDatabase)).toEqual({ kind: 'versioned', version: '1.17' });
    const msg = await refusedStart(db);
    expect(msg).toMatch(/has schema 1\.17; server v1\.29\.1 needs 1\.18: back it up, then run `dhm up --temporal cluster --upgrade-temporal-schema`/);
    expect(await inspectSchema(db, db.name, db.anyDatabase)).toEqual({ kind: 'versioned', version: '1.17' });
    await prepareTemporalDatabases({ sqlTool: tools.sqlTool, db, anyDatabase: db.anyDatabase, upgrade: true, logger });
    expect(await inspectSchema(db, db.name, db.anyDatabase)).toEqual({ kind: 'versioned', version: TEMPORAL_SCHEMA_VERSIONS.temporal });
    expect(await inspectSchema(db, visibilityDatabaseName(db.name), db.anyDatabase)).toEqual({
      kind: 'versioned',
      version: TEMPORAL_SCHEMA_VERSIONS.visibility,
    });
  });

  test('a newer schema than the server knows', async () => {
    const db = fresh();
    const tools = await clusterTools();
    await prepareTemporalDatabases({ sqlTool: tools.sqlTool, db, anyDatabase: db.anyDatabase, upgrade: false, logger });
    await sql(db, visibilityDatabaseName(db.name), `UPDATE schema_version SET curr_version = '1.42'`);
    const msg = await refusedStart(db);
    expect(msg).toMatch(new RegExp(`${visibilityDatabaseName(db.name)} .* has schema 1\\.42, newer than the 1\\.9 server v1\\.29\\.1 runs on`));
  });

  test('the frontend port is taken by another process', async () => {
    const db = fresh();
    const srv = net.createServer();
    const port = await new Promise<number>((r) => srv.listen(0, '127.0.0.1', () => r((srv.address() as net.AddressInfo).port)));
    try {
      expect(await refusedStart(db, { port })).toBe(`DHM_TEMPORAL_PORT: port ${port} is already in use by another process`);
    } finally {
      srv.close();
    }
  });

  describe('on a cluster that served', () => {
    let tc: TestCluster;
    beforeAll(async () => {
      tc = await startTestCluster({ shards: 4, ui: false });
    }, 120_000);
    afterAll(async () => {
      await tc?.stop();
    }, 60_000);

    test('missing search attributes are registered by dhm itself', async () => {
      const connection = await Connection.connect({ address: tc.cluster.address });
      try {
        await connection.operatorService.removeSearchAttributes({ namespace: 'default', searchAttributes: ['MigrationPhase', 'TargetServerId'] });
        const listed = async () => Object.keys((await connection.operatorService.listSearchAttributes({ namespace: 'default' })).customAttributes ?? {});
        expect(await listed()).not.toContain('MigrationPhase');
        expect((await ensureSearchAttributes(connection, 'default')).sort()).toEqual(['MigrationPhase', 'TargetServerId']);
        expect(await listed()).toEqual(expect.arrayContaining(Object.keys(CUSTOM_SEARCH_ATTRIBUTES)));
        expect(await ensureSearchAttributes(connection, 'default')).toEqual([]);
      } finally {
        await connection.close();
      }
    });

    test('a stack killed with SIGKILL leaves its processes: the next start on that folder stops them first', async () => {
      const before = tc.cluster.processes.map((p) => p.pid()!);
      expect(before.every((pid) => fs.existsSync(`/proc/${pid}`))).toBe(true);
      const warnings: string[] = [];
      const again = await startTemporalCluster({
        tools: await clusterTools(),
        stateDir: tc.stateDir,
        db: tc.db,
        anyDatabase: testDatabases().anyDatabase,
        port: await freePort(),
        uiPort: null,
        shards: 4,
        historyProcesses: 2,
        namespace: 'default',
        logger: pino({ level: 'warn' }, { write: (line: string) => void warnings.push((JSON.parse(line) as { process?: string }).process ?? '?') }),
      });
      try {
        expect(warnings.sort()).toEqual(['frontend', 'history-1', 'history-2', 'matching', 'worker']);
        const running = (pid: number) => {
          try {
            return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[2] !== 'Z';
          } catch {
            return false;
          }
        };
        for (const pid of before) expect({ pid, running: running(pid) }).toEqual({ pid, running: false });
        expect(await again.members()).toEqual({ frontend: 1, history: 2, matching: 1, worker: 1 });
      } finally {
        await again.stop();
      }
    }, 120_000);

    test('a cluster that cannot serve its database (another shard count): one line, every process stopped', async () => {
      // Same databases, other shard count: the server refuses to run on them.
      await tc.cluster.stop();
      const msg = await refusedStart({ ...tc.db, anyDatabase: testDatabases().anyDatabase }, { shards: 2, readyTimeoutMs: 60_000 });
      expect(msg).toMatch(/^(Temporal cluster: the Temporal .* process exited at start|DHM_TEMPORAL_SHARDS: 2, but)/);
      expect(msg).toMatch(/shard/i);
    }, 120_000);
  });
});

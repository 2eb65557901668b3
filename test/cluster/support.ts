import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client } from 'pg';
import { loadEnv } from '../../common/config';
import { createLogger } from '../../common/logger';
import { freePort } from '../../stack/ports';
import { startTemporalCluster, type TemporalClusterHandle, type TemporalClusterOptions } from '../../stack/temporal-cluster';
import { visibilityDatabaseName, type TemporalDatabases } from '../../stack/temporal-schema';
import { ensureClusterTools, type ClusterTools } from '../../stack/tools/temporal-server';

/**
 * The cluster tests' own Temporal cluster: the real server processes (built by `npm run tools -- --cluster`) on the
 * suite's Postgres, in databases of their own, on free ports; dropped afterwards.
 */
export interface TestCluster {
  cluster: TemporalClusterHandle;
  db: TemporalDatabases;
  stateDir: string;
  stop(): Promise<void>;
}

export function clusterTools(): Promise<ClusterTools> {
  // Never a 7-minute build inside a test: CI builds the tools first (.ci/run: npm run tools -- --cluster).
  return ensureClusterTools({ toolsDir: loadEnv().DHM_TOOLS_DIR, log: () => undefined, build: false });
}

/** The suite's Postgres server, as the cluster's database settings, with a fresh database name. */
export function testDatabases(name = `tc_${randomBytes(4).toString('hex')}`): TemporalDatabases & { anyDatabase: string } {
  const url = new URL(process.env.DHM_TEST_DATABASE_URL!);
  return {
    host: url.hostname,
    port: Number(url.port),
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
    name,
    anyDatabase: url.pathname.slice(1),
  };
}

export async function dropDatabases(db: TemporalDatabases & { anyDatabase: string }): Promise<void> {
  const admin = new Client({ host: db.host, port: db.port, user: db.user, password: db.password, database: db.anyDatabase });
  await admin.connect();
  try {
    for (const name of [db.name, visibilityDatabaseName(db.name)]) await admin.query(`DROP DATABASE IF EXISTS ${admin.escapeIdentifier(name)} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}

export async function startTestCluster(
  opts: Partial<Pick<TemporalClusterOptions, 'shards' | 'historyProcesses' | 'readyTimeoutMs' | 'tls'>> & { ui?: boolean } = {},
): Promise<TestCluster> {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-cluster-'));
  const db = testDatabases();
  const { anyDatabase } = db;
  const cluster = await startTemporalCluster({
    tools: await clusterTools(),
    stateDir,
    db,
    anyDatabase,
    port: await freePort(),
    uiPort: opts.ui === false ? null : await freePort(),
    shards: opts.shards ?? 8,
    historyProcesses: opts.historyProcesses ?? 2,
    namespace: 'default',
    readyTimeoutMs: opts.readyTimeoutMs,
    ...(opts.tls ? { tls: opts.tls } : {}),
    logger: createLogger('test-cluster', process.env.DHM_TEST_LOG_LEVEL ?? 'warn'),
  }).catch(async (err) => {
    await dropDatabases(db);
    throw err;
  });
  return {
    cluster,
    db,
    stateDir,
    async stop() {
      await cluster.stop();
      await dropDatabases(db);
      if (!process.env.DHM_TEST_KEEP_STATE) fs.rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

/** One grep-able line per measurement, for docs/operations.md. */
export function printFigure(name: string, figures: Record<string, unknown>): void {
  process.stdout.write(`CLUSTER-FIGURES ${JSON.stringify({ name, ...figures })}\n`);
}

/**
 * The history process that owns a workflow's shard: `executions` names the shard, the shard's record names its
 * owner's address (inside its serialized ShardInfo).
 */
export async function shardOwner(tc: TestCluster, workflowId: string): Promise<{ shardId: number; process: string }> {
  const c = new Client({ host: tc.db.host, port: tc.db.port, user: tc.db.user, password: tc.db.password, database: tc.db.name });
  await c.connect();
  try {
    const ex = await c.query<{ shard_id: number }>('SELECT shard_id FROM executions WHERE workflow_id = $1 LIMIT 1', [workflowId]);
    if (!ex.rowCount) throw new Error(`no execution row for ${workflowId}`);
    const shardId = Number(ex.rows[0]!.shard_id);
    const sh = await c.query<{ data: Buffer }>('SELECT data FROM shards WHERE shard_id = $1', [shardId]);
    const blob = sh.rows[0]!.data.toString('latin1');
    const owner = tc.cluster.processes.find((p) => p.service === 'history' && (blob.includes(`:${p.grpcPort}`) || blob.includes(`:${p.membershipPort}`)));
    if (!owner) throw new Error(`shard ${shardId}'s owner is none of the history processes`);
    return { shardId, process: owner.name };
  } finally {
    await c.end();
  }
}

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { Client } from 'pg';
import { CUSTOM_SEARCH_ATTRIBUTES } from '../../common/search-attributes';
import { freePort } from '../../stack/ports';
import { ensureNamespace } from '../../stack/temporal-namespace';
import { spawnDhm, type DhmRun } from '../support/dhm-process';
import { eventually } from '../support/system';
import { testAgentPki } from '../support/agent-pki';

const KEYWORD = temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;
const TEXT = temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_TEXT;

/**
 * `dhm worker` and `dhm api` refuse to start on a namespace without dhm's search attributes (a migration could not
 * start there, the API could not list migrations by host): one line naming what is missing and the commands that
 * register it, exit 2, and nothing done (not even the database's migrations). With all of them they start.
 */
describe('the roles check the namespace for dhm search attributes at start', () => {
  let connection: Connection;
  let db: { url: string; name: string };
  let admin: Client;
  let dir: string;
  const namespace = `dhm-sa-${randomBytes(3).toString('hex')}`;
  const runs: DhmRun[] = [];

  beforeAll(async () => {
    connection = await Connection.connect({ address: process.env.DHM_TEST_TEMPORAL_ADDRESS! });
    await ensureNamespace(connection, namespace, 1);
    admin = new Client({ connectionString: process.env.DHM_TEST_DATABASE_URL });
    await admin.connect();
    const name = `t_sa_${randomBytes(4).toString('hex')}`;
    await admin.query(`CREATE DATABASE ${name}`);
    const url = new URL(process.env.DHM_TEST_DATABASE_URL!);
    url.pathname = `/${name}`;
    db = { url: url.toString(), name };
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-sa-'));
  });
  afterAll(async () => {
    for (const r of runs) if (r.child.exitCode === null) r.child.kill('SIGKILL');
    await Promise.all(runs.map((r) => r.exited));
    await admin?.query(`DROP DATABASE IF EXISTS ${db.name} WITH (FORCE)`);
    await admin?.end();
    await connection?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const start = async (role: 'worker' | 'api', ns = namespace) => {
    const run = spawnDhm([role], {
      DHM_HOME: dir,
      DATABASE_URL: db.url,
      TEMPORAL_ADDRESS: process.env.DHM_TEST_TEMPORAL_ADDRESS!,
      TEMPORAL_NAMESPACE: ns,
      TEMPORAL_TASK_QUEUE: `sa-${randomBytes(3).toString('hex')}`,
      DHM_OPERATOR_TOKEN: 'search-attributes-test-operator-token',
      DHM_AGENT_CLIENT_TLS_DIR: (await testAgentPki()).controlPlaneDir,
      DHM_API_PORT: String(await freePort()),
      LOG_LEVEL: 'warn',
    });
    runs.push(run);
    return run;
  };
  /** The refusal: exit 2, and the output is that one line. */
  const refused = async (run: DhmRun): Promise<string> => {
    expect(await run.exited).toBe(2);
    const lines = run.output().trim().split('\n');
    expect(lines).toHaveLength(1);
    return lines[0]!;
  };
  const tableExists = async () => {
    const c = new Client({ connectionString: db.url });
    await c.connect();
    try {
      return (await c.query<{ t: string | null }>(`SELECT to_regclass('schema_migrations') AS t`)).rows[0]!.t !== null;
    } finally {
      await c.end();
    }
  };
  const register = (names: string[], type = KEYWORD) =>
    connection.operatorService.addSearchAttributes({ namespace, searchAttributes: Object.fromEntries(names.map((n) => [n, type])) });
  const registered = async (names: string[]) =>
    eventually(
      `search attributes ${names.join(', ')} on ${namespace}`,
      async () => {
        const now = (await connection.operatorService.listSearchAttributes({ namespace })).customAttributes ?? {};
        return names.every((n) => now[n] !== undefined);
      },
      30_000,
      200,
    );

  it('refuses on a namespace without them, naming each and the command; then naming only those still missing, and one of the wrong type', async () => {
    const all = Object.keys(CUSTOM_SEARCH_ATTRIBUTES);
    const none = await refused(await start('worker'));
    expect(none).toBe(
      `dhm: TEMPORAL_NAMESPACE: namespace ${namespace} lacks the search attributes ${all.join(', ')}; register them: ${all.map((n) => `temporal operator search-attribute create --namespace ${namespace} --name ${n} --type Keyword`).join(' && ')} (or run dhm up against this TEMPORAL_ADDRESS once, which adds them)`,
    );
    expect(await tableExists()).toBe(false); // nothing done: not even the inventory's migrations

    await register(['DedicatedHostId', 'MigrationPhase']);
    await registered(['DedicatedHostId', 'MigrationPhase']);
    const some = await refused(await start('api'));
    expect(some).toMatch(
      new RegExp(`^dhm: TEMPORAL_NAMESPACE: namespace ${namespace} lacks the search attributes SourceServerId, TargetServerId; register them: `),
    );
    expect(some).not.toContain('--name DedicatedHostId');
    expect(await tableExists()).toBe(false);

    // One of the wrong type: named with its type, and how to re-create it.
    await register(['SourceServerId'], TEXT);
    await registered(['SourceServerId']);
    const wrong = await refused(await start('worker'));
    expect(wrong).toContain('lacks the search attribute TargetServerId and has SourceServerId as TEXT (dhm needs Keyword)');
    expect(wrong).toContain(
      `temporal operator search-attribute remove --namespace ${namespace} --name SourceServerId --yes && temporal operator search-attribute create --namespace ${namespace} --name SourceServerId --type Keyword`,
    );
  }, 180_000);

  it('refuses a namespace that does not exist, naming it and how to create it', async () => {
    const ghost = `${namespace}-none`;
    expect(await refused(await start('worker', ghost))).toBe(
      `dhm: TEMPORAL_NAMESPACE: namespace ${ghost} does not exist on the Temporal server; create it: temporal operator namespace create --namespace ${ghost}`,
    );
    expect(await tableExists()).toBe(false);
  }, 60_000);

  it('starts once every one is registered as Keyword', async () => {
    const other = `${namespace}-ok`;
    await ensureNamespace(connection, other, 1);
    await connection.operatorService.addSearchAttributes({
      namespace: other,
      searchAttributes: Object.fromEntries(Object.keys(CUSTOM_SEARCH_ATTRIBUTES).map((n) => [n, KEYWORD])),
    });
    await eventually(
      'all registered',
      async () => Object.keys((await connection.operatorService.listSearchAttributes({ namespace: other })).customAttributes ?? {}).length >= 4,
      30_000,
      200,
    );
    for (const role of ['worker', 'api'] as const) {
      const run = spawnDhm([role], {
        DHM_HOME: dir,
        DATABASE_URL: db.url,
        TEMPORAL_ADDRESS: process.env.DHM_TEST_TEMPORAL_ADDRESS!,
        TEMPORAL_NAMESPACE: other,
        TEMPORAL_TASK_QUEUE: `sa-ok-${randomBytes(3).toString('hex')}`,
        DHM_OPERATOR_TOKEN: 'search-attributes-test-operator-token',
        DHM_AGENT_CLIENT_TLS_DIR: (await testAgentPki()).controlPlaneDir,
        DHM_API_PORT: String(await freePort()),
        LOG_LEVEL: 'info',
      });
      runs.push(run);
      await eventually(
        `${role} ready`,
        async () => {
          if (run.child.exitCode !== null) throw new Error(`exited: ${run.output().slice(-1500)}`);
          return /"msg":"ready"/.test(run.output());
        },
        90_000,
        100,
      );
      run.child.kill('SIGTERM');
      expect(await run.exited).toBe(0);
    }
    expect(await tableExists()).toBe(true);
  }, 240_000);
});

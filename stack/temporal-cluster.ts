import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Connection } from '@temporalio/client';
import { Client as PgClient } from 'pg';
import type { Logger } from '../common/logger';
import { UserFacingError } from '../common/errors';
import type { ClusterTools } from './tools/temporal-server';
import { TEMPORAL_SERVER_VERSION } from './tools/temporal-server';
import { freePort, freePortInRange, portInUse, waitFor } from './ports';
import { isAlive, stopStaleProcess, writePidFile } from './pidfile';
import { prepareTemporalDatabases, visibilityDatabaseName, type TemporalDatabases } from './temporal-schema';
import { ensureNamespace, ensureSearchAttributes } from './temporal-namespace';
import { temporalClientTls, type TemporalPki } from './temporal-tls';

export type ClusterService = 'frontend' | 'history' | 'matching' | 'worker';
const ROLE: Record<number, ClusterService> = { 1: 'frontend', 2: 'history', 3: 'matching', 4: 'worker' };

/** One OS process of the cluster (a server service or the Web UI server). */
export interface ClusterProcess {
  /** `frontend`, `history-1`, `history-2`, `matching`, `worker`, `ui`. */
  name: string;
  service: ClusterService | 'ui';
  /** Its gRPC and membership ports (the UI server: its HTTP port, no membership). */
  grpcPort: number;
  membershipPort?: number;
  pid(): number | undefined;
  logFile: string;
  alive(): boolean;
  /** Signals it and waits until it has exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same ports with the same configuration. */
  start(): Promise<void>;
}

export interface ClusterInfo {
  serverVersion: string;
  historyShardCount: number;
  persistenceStore: string;
  visibilityStore: string;
}

export interface TemporalClusterHandle {
  address: string;
  uiUrl: string | null;
  namespace: string;
  info: ClusterInfo;
  processes: ClusterProcess[];
  process(name: string): ClusterProcess;
  /**
   * Members per service as the membership table has them: rows of this cluster's processes since their last start
   * that heartbeated in the last 20 s (the server's own cut-off; gossip notices a dead process sooner).
   */
  members(): Promise<Record<ClusterService, number>>;
  /** Milliseconds from the first spawn until the cluster served the namespace with dhm's search attributes. */
  startupMs: number;
  stop(): Promise<void>;
}

export interface TemporalClusterOptions {
  tools: ClusterTools;
  /** Logs and pid files go to `<stateDir>/temporal-cluster/`. */
  stateDir: string;
  db: TemporalDatabases;
  /** Any database on that Postgres server the user may connect to (to look the cluster's databases up). */
  anyDatabase: string;
  /** The frontend's gRPC port (DHM_TEMPORAL_PORT). */
  port: number;
  uiPort: number | null;
  shards: number;
  historyProcesses: number;
  namespace: string;
  /** Run update-schema on an older schema (an operator's explicit step). */
  upgradeSchema?: boolean;
  logger: Logger;
  /** How long the processes get to serve (default 90 s). */
  readyTimeoutMs?: number;
  /** The server's log level in its log files (default warn). */
  logLevel?: string;
  /**
   * Mutual TLS on the frontend (stack/temporal-tls.ts): every server process gets TEMPORAL_TLS_DIR, the UI server its
   * own client certificate, and the cluster's own probes connect with dhm's client certificate. Unset: plain text
   * on loopback (`dhm up`'s cluster, not published).
   */
  tls?: Pick<TemporalPki, 'serverDir' | 'clientDir' | 'uiDir' | 'serverName'>;
}

/** deploy/temporal holds the one configuration (templates) the cluster and docker-compose.yml share. */
export function temporalDeployDir(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'deploy', 'temporal');
    if (fs.existsSync(path.join(candidate, 'config', 'base.yaml'))) return candidate;
    if (path.dirname(dir) === dir) throw new Error('deploy/temporal/config/base.yaml not found above ' + __dirname);
  }
}

/** The reason a server process gave for exiting, from its log: the innermost cause of its last error, one line. */
function lastError(logFile: string): string {
  let text = '';
  try {
    text = fs.readFileSync(logFile, 'utf8').slice(-64_000);
  } catch {
    return 'no log';
  }
  const lines = text.split('\n').filter((l) => l.trim() && !l.startsWith('--- '));
  let line = lines.filter((l) => /"level":"(error|fatal|dpanic|panic)"|Unable to|panic:/i.test(l)).pop() ?? lines.pop() ?? '';
  try {
    const j = JSON.parse(line) as { msg?: string; error?: string };
    line = j.error ?? j.msg ?? line;
  } catch {
    // not JSON: the line as it is
  }
  // fx wraps the cause in "could not build arguments for function X (file:line): ..." layers.
  return line.split(/\): /).pop()!.replace(/\.+$/, '').slice(0, 300);
}

/**
 * A real Temporal server cluster, each service its own process, on Postgres: the schema set up with the SQL tool,
 * frontend, history ×N, matching and worker started from deploy/temporal/config/base.yaml (the same file
 * docker-compose.yml uses; each process's ports come from its environment), membership through the database, the
 * namespace and dhm's search attributes registered through the operator API, the Web UI server in front. Ready
 * when every process has joined and the namespace serves; stopped all by pid, including what a killed stack left.
 */
export async function startTemporalCluster(opts: TemporalClusterOptions): Promise<TemporalClusterHandle> {
  const { logger } = opts;
  const dir = path.join(opts.stateDir, 'temporal-cluster');
  fs.mkdirSync(dir, { recursive: true });
  // Leftovers of a stack killed with SIGKILL: each pid file names a process whose command line must match.
  await Promise.all(
    fs
      .readdirSync(dir)
      .filter((n) => n.endsWith('.pid'))
      .map(async (f) => {
        const stale = await stopStaleProcess(path.join(dir, f), f.startsWith('ui') ? 'temporal-ui-server' : 'temporal-server');
        if (stale) logger.warn({ pid: stale, process: f.replace(/\.pid$/, '') }, 'stopped a Temporal cluster process left running by an earlier stack');
      }),
  );
  if (await portInUse(opts.port)) throw new UserFacingError(`DHM_TEMPORAL_PORT: port ${opts.port} is already in use by another process`, 'DHM_TEMPORAL_PORT');
  if (opts.uiPort !== null && (await portInUse(opts.uiPort))) {
    throw new UserFacingError(`DHM_TEMPORAL_UI_PORT: port ${opts.uiPort} is already in use by another process`, 'DHM_TEMPORAL_UI_PORT');
  }

  await prepareTemporalDatabases({ sqlTool: opts.tools.sqlTool, db: opts.db, anyDatabase: opts.anyDatabase, upgrade: opts.upgradeSchema ?? false, logger });

  const deployDir = temporalDeployDir();
  // Membership ports land in a smallint column: keep them below the ephemeral range.
  const taken = new Set<number>();
  const membershipPort = async () => {
    const p = await freePortInRange(20000, 32767, taken);
    taken.add(p);
    return p;
  };
  const address = `127.0.0.1:${opts.port}`;
  const common: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? dir,
    TEMPORAL_LOG_LEVEL: opts.logLevel ?? 'warn',
    TEMPORAL_HISTORY_SHARDS: String(opts.shards),
    TEMPORAL_DB_HOST: opts.db.host,
    TEMPORAL_DB_PORT: String(opts.db.port),
    TEMPORAL_DB_USER: opts.db.user,
    TEMPORAL_DB_PASSWORD: opts.db.password,
    TEMPORAL_DB_NAME: opts.db.name,
    TEMPORAL_VISIBILITY_DB_NAME: visibilityDatabaseName(opts.db.name),
    TEMPORAL_BIND_IP: '127.0.0.1',
    TEMPORAL_BROADCAST_ADDRESS: '127.0.0.1',
    TEMPORAL_FRONTEND_ADDRESS: address,
    TEMPORAL_DYNAMIC_CONFIG_FILE: path.join(deployDir, 'dynamicconfig', 'dhm.yaml'),
    TEMPORAL_FRONTEND_PORT: String(opts.port),
    TEMPORAL_FRONTEND_MEMBERSHIP_PORT: String(await membershipPort()),
    TEMPORAL_FRONTEND_HTTP_PORT: String(await freePort()),
    TEMPORAL_MATCHING_PORT: String(await freePort()),
    TEMPORAL_MATCHING_MEMBERSHIP_PORT: String(await membershipPort()),
    TEMPORAL_WORKER_PORT: String(await freePort()),
    TEMPORAL_WORKER_MEMBERSHIP_PORT: String(await membershipPort()),
    ...(opts.tls ? { TEMPORAL_TLS_DIR: opts.tls.serverDir, TEMPORAL_TLS_FRONTEND_NAME: opts.tls.serverName } : {}),
  };
  const clientTls = opts.tls ? temporalClientTls(opts.tls, opts.tls.clientDir) : undefined;
  // History first (it owns the shards), then matching, the frontend and the worker service (it needs the frontend).
  const specs: Array<{ name: string; service: ClusterService | 'ui'; env: NodeJS.ProcessEnv; grpcPort: number; membershipPort?: number }> = [];
  for (let i = 1; i <= opts.historyProcesses; i++) {
    const [grpc, membership] = [await freePort(), await membershipPort()];
    specs.push({
      name: `history-${i}`,
      service: 'history',
      env: { ...common, TEMPORAL_HISTORY_PORT: String(grpc), TEMPORAL_HISTORY_MEMBERSHIP_PORT: String(membership) },
      grpcPort: grpc,
      membershipPort: membership,
    });
  }
  const base = specs[0]!.env;
  specs.push({
    name: 'matching',
    service: 'matching',
    env: base,
    grpcPort: Number(common.TEMPORAL_MATCHING_PORT),
    membershipPort: Number(common.TEMPORAL_MATCHING_MEMBERSHIP_PORT),
  });
  specs.push({ name: 'frontend', service: 'frontend', env: base, grpcPort: opts.port, membershipPort: Number(common.TEMPORAL_FRONTEND_MEMBERSHIP_PORT) });
  specs.push({
    name: 'worker',
    service: 'worker',
    env: base,
    grpcPort: Number(common.TEMPORAL_WORKER_PORT),
    membershipPort: Number(common.TEMPORAL_WORKER_MEMBERSHIP_PORT),
  });
  if (opts.uiPort !== null) {
    specs.push({
      name: 'ui',
      service: 'ui',
      grpcPort: opts.uiPort,
      env: {
        PATH: common.PATH,
        HOME: common.HOME,
        TEMPORAL_UI_TEMPORAL_ADDRESS: address,
        TEMPORAL_UI_HOST: '127.0.0.1',
        TEMPORAL_UI_PORT: String(opts.uiPort),
        TEMPORAL_UI_NAMESPACE: opts.namespace,
        ...(opts.tls ? { TEMPORAL_UI_TLS_DIR: opts.tls.uiDir, TEMPORAL_TLS_FRONTEND_NAME: opts.tls.serverName } : {}),
      },
    });
  }

  const processes: ManagedProcess[] = specs.map(
    (s) =>
      new ManagedProcess(
        s.name,
        s.service,
        s.service === 'ui' ? opts.tools.uiServer : opts.tools.server,
        s.service === 'ui'
          ? ['--root', path.join(deployDir, 'ui'), '--config', 'config', 'start']
          : // The trap: --config is joined to --root, so it must stay relative.
            ['--root', deployDir, '--config', 'config', '--allow-no-auth', 'start', '--service', s.service],
        s.env,
        dir,
        s.grpcPort,
        s.membershipPort,
      ),
  );
  const stopAll = async () => {
    await Promise.all(processes.map((p) => p.kill('SIGTERM')));
  };

  const started = Date.now();
  let connection: Connection | undefined;
  try {
    // One process first: every process writes the cluster metadata at start, and concurrent first writes conflict
    // (the loser exits). Once it has joined, the rest start together.
    const servers = processes.filter((x) => x.service !== 'ui');
    await servers[0]!.start();
    const failed = () => processes.find((p) => p.service !== 'ui' && p.exitedAtStart());
    const deadline = opts.readyTimeoutMs ?? 90_000;
    const ready = async <T>(what: string, probe: () => Promise<T>, timeoutMs = deadline): Promise<T> =>
      waitFor(
        what,
        async () => {
          const dead = failed();
          if (dead) throw new ClusterStartError(`the Temporal ${dead.name} process exited at start (${lastError(dead.logFile)}); see ${dead.logFile}`);
          return probe();
        },
        Math.max(1000, timeoutMs - (Date.now() - started)),
        200,
      ).catch((err: Error) => {
        const cause =
          err instanceof ClusterStartError ? err.message : /exited at start/.test(err.message) ? err.message.replace(/^.*?: (the Temporal)/, '$1') : null;
        if (cause) throw new UserFacingError(`Temporal cluster: ${cause}`, 'DHM_TEMPORAL_MODE');
        throw new UserFacingError(
          `Temporal cluster: not serving after ${Math.round(deadline / 1000)} s (${what}: ${err.message.replace(/^.*?: /, '')}); see the logs in ${dir}`,
          'DHM_TEMPORAL_MODE',
        );
      });

    await ready(`${servers[0]!.name} in the membership table`, async () => {
      if (!(await readMembers(opts.db, [servers[0]!])).size) throw new Error('not joined yet');
    });
    for (const p of servers.slice(1)) await p.start();
    const conn: Connection = await ready(`the frontend at ${address}`, async () => {
      const c = await Connection.connect({ address, connectTimeout: 2000, ...(clientTls ? { tls: clientTls } : {}) });
      try {
        const health = await c.healthService.check({ service: 'temporal.api.workflowservice.v1.WorkflowService' });
        if (health.status !== 1) throw new Error(`health ${health.status}`);
        return c;
      } catch (err) {
        await c.close();
        throw err;
      }
    });
    const members = () => readMembers(opts.db, processes);
    await ready('every process in the membership table', async () => {
      const joined = await members();
      const missing = processes.filter((p) => p.membershipPort !== undefined && !joined.has(p.membershipPort));
      if (missing.length) throw new Error(`not joined yet: ${missing.map((p) => p.name).join(', ')}`);
    });
    connection = conn;
    const sys = await conn.workflowService.getClusterInfo({});
    const info: ClusterInfo = {
      serverVersion: sys.serverVersion ?? '',
      historyShardCount: Number(sys.historyShardCount ?? 0),
      persistenceStore: sys.persistenceStore ?? '',
      visibilityStore: sys.visibilityStore ?? '',
    };
    if (info.historyShardCount !== opts.shards) {
      throw new UserFacingError(
        `DHM_TEMPORAL_SHARDS: ${opts.shards}, but Temporal database ${opts.db.name} was set up with ${info.historyShardCount} shards (fixed for its life); use ${info.historyShardCount} or another DHM_TEMPORAL_DATABASE`,
        'DHM_TEMPORAL_SHARDS',
      );
    }
    await ready(`namespace ${opts.namespace}`, () => ensureNamespace(conn, opts.namespace));
    const added = await ensureSearchAttributes(conn, opts.namespace, 'DHM_TEMPORAL_MODE');
    if (added.length) logger.info({ added, namespace: opts.namespace }, 'registered dhm search attributes');
    const ui = processes.find((p) => p.service === 'ui');
    if (ui) {
      await ui.start();
      await ready(`the Web UI at http://127.0.0.1:${opts.uiPort}`, async () => {
        if (ui.exitedAtStart()) throw new ClusterStartError(`the Temporal Web UI server exited at start (${lastError(ui.logFile)}); see ${ui.logFile}`);
        const res = await fetch(`http://127.0.0.1:${opts.uiPort}/api/v1/namespaces/${opts.namespace}`, { signal: AbortSignal.timeout(2000) });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
      });
    }
    const startupMs = Date.now() - started;
    await conn.close();
    connection = undefined;
    logger.info({ address, ...info, processes: processes.map((p) => `${p.name}:${p.pid()}`), startupMs }, 'Temporal cluster is serving');
    return {
      address,
      uiUrl: opts.uiPort === null ? null : `http://127.0.0.1:${opts.uiPort}`,
      namespace: opts.namespace,
      info,
      processes,
      process(name) {
        const p = processes.find((x) => x.name === name);
        if (!p) throw new Error(`no cluster process ${name} (have ${processes.map((x) => x.name).join(', ')})`);
        return p;
      },
      async members() {
        const alive = await readMembers(opts.db, processes, 20);
        const counts: Record<ClusterService, number> = { frontend: 0, history: 0, matching: 0, worker: 0 };
        for (const role of alive.values()) counts[role]++;
        return counts;
      },
      startupMs,
      stop: stopAll,
    };
  } catch (err) {
    await connection?.close().catch(() => undefined);
    await stopAll();
    throw err;
  }
}

class ClusterStartError extends Error {}

/**
 * Membership rows of this cluster's processes (by membership port) that joined after the process started and, with
 * `heartbeatWithinS`, heartbeated recently (rows of killed processes stay for 48 h).
 */
async function readMembers(db: TemporalDatabases, processes: ManagedProcess[], heartbeatWithinS?: number): Promise<Map<number, ClusterService>> {
  const client = new PgClient({ host: db.host, port: db.port, user: db.user, password: db.password, database: db.name, connectionTimeoutMillis: 3000 });
  await client.connect();
  try {
    // The server writes these timestamps (without time zone) in UTC.
    const { rows } = await client.query<{ rpc_port: number; role: number; session_ms: string }>(
      `SELECT rpc_port, role, EXTRACT(EPOCH FROM session_start) * 1000 AS session_ms FROM cluster_membership
        WHERE ($1::int IS NULL OR last_heartbeat > (now() AT TIME ZONE 'UTC') - make_interval(secs => $1::int))`,
      [heartbeatWithinS ?? null],
    );
    const joined = new Map<number, ClusterService>();
    for (const p of processes) {
      if (p.membershipPort === undefined) continue;
      const row = rows.find((r) => Number(r.rpc_port) === p.membershipPort && Number(r.session_ms) >= p.startedAt - 2000);
      if (row && ROLE[row.role]) joined.set(p.membershipPort, ROLE[row.role]!);
    }
    return joined;
  } finally {
    await client.end();
  }
}

class ManagedProcess implements ClusterProcess {
  readonly logFile: string;
  private readonly pidFile: string;
  private child: ChildProcess | null = null;
  private exitPromise: Promise<void> = Promise.resolve();
  private exited = true;
  startedAt = 0;

  constructor(
    readonly name: string,
    readonly service: ClusterService | 'ui',
    private readonly binary: string,
    private readonly args: string[],
    private readonly env: NodeJS.ProcessEnv,
    dir: string,
    readonly grpcPort: number,
    readonly membershipPort?: number,
  ) {
    this.logFile = path.join(dir, `${name}.log`);
    this.pidFile = path.join(dir, `${name}.pid`);
  }

  pid() {
    return this.child?.pid;
  }

  alive() {
    return !this.exited && this.child?.pid !== undefined && isAlive(this.child.pid);
  }

  exitedAtStart() {
    return this.child !== null && this.exited;
  }

  async start() {
    if (!this.exited) throw new Error(`${this.name} is already running`);
    const log = fs.openSync(this.logFile, 'a');
    fs.writeSync(
      log,
      `--- ${new Date().toISOString()} ${this.name}: ${path.basename(this.binary)} ${this.args.join(' ')} (server ${TEMPORAL_SERVER_VERSION})\n`,
    );
    const child = spawn(this.binary, this.args, { env: this.env, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    this.child = child;
    this.exited = false;
    this.startedAt = Date.now();
    this.exitPromise = new Promise<void>((resolve) => {
      child.once('exit', () => {
        this.exited = true;
        resolve();
      });
      child.once('error', () => {
        this.exited = true;
        resolve();
      });
    });
    if (child.pid) writePidFile(this.pidFile, child.pid);
  }

  async kill(signal: NodeJS.Signals = 'SIGTERM') {
    if (this.child && !this.exited) {
      this.child.kill(signal);
      const timer = setTimeout(() => this.child?.kill('SIGKILL'), 15_000);
      await this.exitPromise;
      clearTimeout(timer);
    }
    fs.rmSync(this.pidFile, { force: true });
  }
}

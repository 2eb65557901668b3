import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Client } from '@temporalio/client';
import { bundleWorkflowCode } from '@temporalio/worker';
import pino from 'pino';
import type { Pool } from 'pg';
import type { AgentDirectory } from '../../compute/agent-directory';
import type { HostService } from '../../api/host-service';
import { startDevStack, type DevStack } from '../../stack';
import { freePort } from '../../stack/ports';
import { loadEnv } from '../../common/config';
import type { Fleet } from '../../common/fleet';
import type { Logger } from '../../common/logger';
import { installTemporalRuntime } from '../../common/temporal-runtime';
import { createAgentClient } from '../../compute/agent-client';
import { ensureAgentPki, type AgentClientTls } from '../../compute/agent-tls';
import { startFleetAgents, type FleetAgents, type FleetAgentsOptions } from '../../compute/fleet-agents';
import type { Inventory } from '../../inventory';
import { DEFAULT_QUOTAS } from '../../inventory/quotas';
import { openInventoryStore, startControlPlane } from '../../stack/control-plane';
import { mergeStats, type CallStats } from './stopwatch';
import { stopInReverse } from '../../common/stop-in-reverse';

/**
 * The real system for benchmarks 2–4, started by the bench itself the way the jest global setup does it: a real
 * Postgres and a real Temporal dev server (SQLite) under a temporary folder on free ports, the workflow code bundled
 * once, sim host agents over HTTP in this process, and migration workers in their own processes.
 */
export interface BenchStack {
  stateDir: string;
  /** The control plane's agent-plane certificate (the bench's own PKI in its state folder). */
  agentTls: AgentClientTls;
  dev: DevStack;
  pool: Pool;
  inventory: Inventory;
  agents: AgentDirectory;
  client: Client;
  taskQueue: string;
  hostService: HostService;
  logger: Logger;
  /** Pids of the Temporal dev server and Postgres, found by their state folder (for CPU accounting). */
  serverPids(): { temporal: number[]; postgres: number[] };
  workerPids(): number[];
  /** Starts an agent per server of `fleet` (its backend; the sim at this time scale) and seeds the inventory with them. */
  addFleet(fleet: Fleet, timeScale: number, opts?: { qemu?: Record<string, unknown> }): Promise<void>;
  /** Runs `count` worker processes (replacing any running ones). */
  setWorkers(count: number): Promise<void>;
  /** The workers' timings of their inventory and agent calls since the last reset, added up. */
  workerStats(opts?: { reset?: boolean }): Promise<Record<string, CallStats>>;
  /** A tenant with one host in (zone, class) and `vms` VMs created on its server through inventory + agent. */
  createHost(o: {
    zone: string;
    resourceClass: string;
    vms: Array<{ memoryMiB: number; dirtyRateMiBps?: number; workingSetMiB?: number }>;
    /** VMs created at once (default 8; real QEMU guests boot one at a time on a small machine). */
    concurrency?: number;
    agentTimeoutMs?: number;
  }): Promise<{ tenantId: string; hostId: string; vmIds: string[] }>;
  stop(): Promise<void>;
}

export async function startBenchStack(opts: { logLevel?: string } = {}): Promise<BenchStack> {
  const logger = pino({ name: 'dhm-bench', level: opts.logLevel ?? process.env.BENCH_LOG_LEVEL ?? 'error' }, pino.destination(2));
  installTemporalRuntime(logger);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-bench-'));
  fs.chmodSync(stateDir, 0o755); // the postgres system user must reach its data folder when running as root
  const stops: Array<() => Promise<void>> = [async () => fs.rmSync(stateDir, { recursive: true, force: true })];
  const stopAll = () => stopInReverse(stops, logger, 'the bench stack');
  try {
    const env = { ...process.env };
    delete env.DATABASE_URL;
    delete env.TEMPORAL_ADDRESS;
    const dev = await startDevStack({
      env: loadEnv(env),
      logger,
      stateDir,
      ports: { postgres: await freePort(), temporal: await freePort(), ui: null },
    });
    stops.push(dev.stop);
    const bundle = await bundleWorkflowCode({
      workflowsPath: require.resolve('../../workflows'),
      logger: { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error: (m: string) => logger.error(m) } as never,
    });
    const bundlePath = path.join(stateDir, 'workflow-bundle.js');
    fs.writeFileSync(bundlePath, bundle.code);

    const pkiRoot = path.join(stateDir, 'pki');
    let pki = await ensureAgentPki(pkiRoot, []);
    const store = await openInventoryStore({ databaseUrl: dev.databaseUrl, poolSize: 20, logger });
    stops.push(store.close);
    const { pool, inventory } = store;
    const taskQueue = `bench-${process.pid}`;
    const plane = await startControlPlane({
      env: loadEnv(env),
      logger,
      store,
      agentCredentials: { tls: pki.controlPlane },
      temporal: { address: dev.temporalAddress, namespace: dev.namespace, taskQueue },
      hostService: true,
    });
    stops.push(plane.stop);
    const { agents } = plane;
    const hostService = plane.hostService!;
    const { client } = plane.temporal!;

    const fleets: FleetAgents[] = [];
    stops.push(async () => {
      await Promise.all(fleets.map((f) => f.stop()));
    });
    let workers: ChildProcess[] = [];
    const stopWorkers = async () => {
      const dying = workers;
      workers = [];
      await Promise.all(
        dying.map(
          (w) =>
            new Promise<void>((resolve) => {
              if (w.exitCode !== null || w.signalCode !== null) return resolve();
              const kill = setTimeout(() => w.kill('SIGKILL'), 10_000);
              w.once('exit', () => {
                clearTimeout(kill);
                resolve();
              });
              w.kill('SIGTERM');
            }),
        ),
      );
    };
    stops.push(stopWorkers);

    const findPids = (pattern: RegExp): number[] => {
      const pids: number[] = [];
      for (const entry of fs.readdirSync('/proc')) {
        if (!/^\d+$/.test(entry)) continue;
        try {
          const cmd = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ');
          if (cmd.includes(stateDir) && pattern.test(cmd)) pids.push(Number(entry));
        } catch {
          // gone meanwhile
        }
      }
      return pids;
    };

    let tag = 0;
    return {
      stateDir,
      agentTls: pki.controlPlane,
      dev,
      pool,
      inventory,
      agents,
      client,
      taskQueue,
      hostService,
      logger,
      // The cluster's server processes (DHM_TEMPORAL_MODE=cluster) do not name the state folder: the launcher knows them.
      serverPids: () => ({
        temporal: dev.cluster ? dev.cluster.processes.filter((p) => p.service !== 'ui' && p.alive()).map((p) => p.pid()!) : findPids(/temporal|start-dev/),
        postgres: findPids(/postgres/),
      }),
      workerPids: () => workers.map((w) => w.pid!).filter(Boolean),
      async addFleet(fleet, timeScale, o = {}) {
        // `qemu` servers get an agent too when qemu options are given (the qemu backend is optional on a machine).
        pki = await ensureAgentPki(
          pkiRoot,
          fleet.servers.map((s) => s.id),
        );
        const options = {
          timeScale,
          logger,
          tls: pki.server,
          faultRoutes: true,
          ...(o.qemu ? { backendFilter: () => true, qemu: o.qemu } : {}),
        } as FleetAgentsOptions;
        const f = await startFleetAgents(fleet, options);
        fleets.push(f);
        await inventory.seedFleet(fleet, new Map([...f.agents].map(([id, a]) => [id, a.url])), { actor: 'bench' });
      },
      async setWorkers(count) {
        await stopWorkers();
        const started = Array.from({ length: count }, () =>
          spawn(
            process.execPath,
            [...(process.env.BENCH_WORKER_NODE_ARGS?.split(' ').filter(Boolean) ?? []), '-r', '@swc-node/register', path.join(__dirname, 'worker-main.ts')],
            {
              cwd: path.resolve(__dirname, '..', '..'),
              env: {
                ...process.env,
                BENCH_DATABASE_URL: dev.databaseUrl,
                BENCH_AGENT_CLIENT_TLS_DIR: pki.controlPlaneDir,
                BENCH_TEMPORAL_ADDRESS: dev.temporalAddress,
                BENCH_TASK_QUEUE: taskQueue,
                BENCH_WORKFLOW_BUNDLE: bundlePath,
              },
              stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
            },
          ),
        );
        workers = started;
        await Promise.all(
          started.map(
            (w) =>
              new Promise<void>((resolve, reject) => {
                const timer = setTimeout(() => reject(new Error('a bench worker did not start within 120 s')), 120_000);
                let out = '';
                w.stdout!.on('data', (d: Buffer) => {
                  out += d.toString();
                  if (out.includes('ready')) {
                    clearTimeout(timer);
                    resolve();
                  }
                });
                w.once('exit', (code) => {
                  clearTimeout(timer);
                  reject(new Error(`a bench worker exited with code ${code} before it was ready`));
                });
              }),
          ),
        );
      },
      async workerStats(o = {}) {
        const all = await Promise.all(
          workers.map(
            (w) =>
              new Promise<Record<string, CallStats>>((resolve, reject) => {
                const timer = setTimeout(() => reject(new Error('a bench worker did not answer for its figures')), 10_000);
                const onMessage = (m: unknown) => {
                  const stats = (m as { stats?: Record<string, CallStats> }).stats;
                  if (!stats) return;
                  clearTimeout(timer);
                  w.off('message', onMessage);
                  resolve(stats);
                };
                w.on('message', onMessage);
                w.send('stats');
              }),
          ),
        );
        if (o.reset) for (const w of workers) w.send('reset');
        return mergeStats(all);
      },
      async createHost(o) {
        const t = `b${++tag}`;
        const tenant = await inventory.createTenant(`tenant-${t}`, { actor: 'bench' });
        // A 500-VM host is past the default VM quota: the bench raises it as an operator would for such a tenant.
        if (o.vms.length > DEFAULT_QUOTAS.vmsPerHost) await inventory.setTenantQuotas({ tenantId: tenant.id, vmsPerHost: o.vms.length, actor: 'bench' });
        const host = await inventory.createDedicatedHost({
          tenantId: tenant.id,
          name: `host-${t}`,
          zone: o.zone,
          resourceClass: o.resourceClass,
          actor: 'bench',
        });
        const incarnation = await inventory.getIncarnation(host.currentIncarnationId);
        const server = await inventory.getServer(incarnation.serverId);
        const agent = createAgentClient({ baseUrl: server.agentUrl, tls: pki.controlPlane, serverId: server.id, timeoutMs: o.agentTimeoutMs });
        await agent.prepareIncarnation({ incarnationId: incarnation.id, capacity: incarnation.capacity });
        const vmIds: string[] = [];
        // A few at a time: creating hundreds of VMs one by one is most of a small benchmark's setup time.
        const queue = o.vms.map((v, i) => ({ v, i }));
        const createOne = async () => {
          for (let item = queue.shift(); item; item = queue.shift()) {
            const { v, i } = item;
            const vmId = `vm-${t}-${i}`;
            const spec = {
              vcpus: 1,
              memoryMiB: v.memoryMiB,
              diskGiB: 1,
              ...(v.dirtyRateMiBps !== undefined || v.workingSetMiB !== undefined
                ? { workload: { dirtyRateMiBps: v.dirtyRateMiBps ?? 0, workingSetMiB: Math.min(v.memoryMiB, v.workingSetMiB ?? 0) } }
                : {}),
            };
            await inventory.placeVm({ vmId, tenantId: tenant.id, dedicatedHostId: host.id, name: `vm-${i}`, spec, actor: 'bench' });
            await agent.createVm({ vmId, incarnationId: incarnation.id, spec });
            vmIds.push(vmId);
          }
        };
        await Promise.all(Array.from({ length: o.concurrency ?? 8 }, createOne));
        vmIds.sort();
        return { tenantId: tenant.id, hostId: host.id, vmIds };
      },
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

function statFields(pid: number): string[] | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** CPU seconds (user + system) a process has used so far; 0 if it is gone. */
export function cpuSeconds(pid: number): number {
  const f = statFields(pid);
  // utime and stime are fields 14 and 15 of /proc/<pid>/stat (1-based), i.e. 11 and 12 after the command name.
  return f ? (Number(f[11]) + Number(f[12])) / CLOCK_TICKS : 0;
}

/** What the processes of some trees have used: each live one's CPU, and what they collected from reaped children. */
export interface TreeCpu {
  perPid: Map<number, number>;
  /** Σ cutime + cstime: CPU of children that ended and were reaped (fields 16 and 17). */
  reaped: number;
}

/** CPU seconds of each process in the trees under `rootPids` (Postgres forks a backend per connection). */
export function treeCpu(rootPids: number[]): TreeCpu {
  const children = new Map<number, number[]>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const f = statFields(Number(entry));
    if (f) children.set(Number(f[1]), [...(children.get(Number(f[1])) ?? []), Number(entry)]);
  }
  const perPid = new Map<number, number>();
  let reaped = 0;
  const walk = (pid: number) => {
    if (perPid.has(pid)) return;
    const f = statFields(pid);
    if (!f) return;
    perPid.set(pid, (Number(f[11]) + Number(f[12])) / CLOCK_TICKS);
    reaped += (Number(f[13]) + Number(f[14])) / CLOCK_TICKS;
    for (const c of children.get(pid) ?? []) walk(c);
  };
  rootPids.forEach(walk);
  return { perPid, reaped };
}

/**
 * CPU seconds the trees used between two readings: the live processes' growth, plus what children that ended in
 * between used — their parents collect it when reaping them, minus what they had used before the first reading.
 * (Postgres backends come and go with the pools' idle connections.)
 */
export function cpuBetween(before: TreeCpu, after: TreeCpu): number {
  let total = after.reaped - before.reaped;
  for (const [pid, cpu] of after.perPid) total += Math.max(0, cpu - (before.perPid.get(pid) ?? 0));
  for (const [pid, cpu] of before.perPid) if (!after.perPid.has(pid)) total -= cpu;
  return Math.max(0, total);
}

const CLOCK_TICKS = 100; // USER_HZ on Linux

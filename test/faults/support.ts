import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import type { MigrationStatus } from '../../common/migration';
import { statusQuery } from '../../workflows/messages';
import type { migrateDedicatedHost } from '../../workflows/migrate-dedicated-host';
import { checkInvariants, type InvariantCheckInput } from '../../client/invariants';
import type { Inventory } from '../../inventory';
import { eventually } from '../support/system';

/**
 * Shared by the fault suites: the seeded schedule, `dhm` service processes, the invariant check and the figures
 * each suite prints for docs/reliability.md.
 */

/** Trials per suite: small in CI, `FAULT_TRIALS=20` (or more) for a local run. */
export const FAULT_TRIALS = Math.max(1, Number(process.env.FAULT_TRIALS ?? 3));
/** One seed for the run; `FAULT_SEED=<n>` replays a schedule. */
export const FAULT_SEED = Number(process.env.FAULT_SEED ?? Math.floor(Math.random() * 2 ** 31));

/** mulberry32: small, seeded, good enough for a fault schedule. */
export function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
  };
}
export type Prng = ReturnType<typeof prng>;

/** A suite's own stream: same FAULT_SEED, different suites do not share draws. */
export function suiteRandom(suite: string): Prng {
  let h = FAULT_SEED;
  for (const ch of suite) h = (Math.imul(h, 31) + ch.charCodeAt(0)) | 0;
  return prng(h);
}

export interface Figures {
  suite: string;
  trials: number;
  faults: Record<string, number>;
  migrations: Record<string, number>;
  requestsSent: number;
  requestsLost: number;
  invariantChecks: number;
  invariantViolations: number;
}

export function figures(suite: string): Figures {
  return { suite, trials: 0, faults: {}, migrations: {}, requestsSent: 0, requestsLost: 0, invariantChecks: 0, invariantViolations: 0 };
}
export const count = (m: Record<string, number>, key: string, n = 1) => {
  m[key] = (m[key] ?? 0) + n;
};
/** One line per suite, grep-able, for docs/reliability.md. */
export function printFigures(f: Figures): void {
  process.stdout.write(`FAULT-FIGURES ${JSON.stringify({ seed: FAULT_SEED, faultTrials: FAULT_TRIALS, ...f })}\n`);
}

/** Runs the invariant checker, counts it, and fails the test with every violation listed. */
export async function assertInvariants(f: Figures, input: InvariantCheckInput, when: string): Promise<void> {
  const r = await checkInvariants(input);
  f.invariantChecks++;
  f.invariantViolations += r.violations.length;
  if (!r.ok) throw new Error(`invariants violated ${when} (seed ${FAULT_SEED}):\n  ${r.violations.join('\n  ')}`);
}

/** Every migration's work was done once: one `vm.moved` per VM and direction, one finalize, one de-provisioning. */
export async function assertNothingTwice(inventory: Inventory, dedicatedHostId: string): Promise<void> {
  const events = [];
  for (let afterId = 0; ;) {
    const page = await inventory.listEvents({ dedicatedHostId, afterId, limit: 500 });
    events.push(...page);
    if (page.length < 500) break;
    afterId = page[page.length - 1]!.id;
  }
  const seen = new Map<string, number>();
  for (const e of events) {
    if (!['vm.moved', 'host.migration_finalized', 'host.migration_rolled_back', 'host.migration_started', 'incarnation.promoted'].includes(e.action)) continue;
    const key = `${e.action} ${e.entityId} ${e.migrationId} ${JSON.stringify(e.physical)}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
  }
  const twice = [...seen].filter(([, n]) => n > 1).map(([k, n]) => `${k} ×${n}`);
  if (twice.length) throw new Error(`done more than once on ${dedicatedHostId}:\n  ${twice.join('\n  ')}`);
}

/** The outbox: every row done by exactly one claim; each job's completion audited once. */
export async function assertDeprovisionedOnce(inventory: Inventory): Promise<number> {
  const jobs = await inventory.listDeprovisionJobs();
  const bad = jobs.filter((j) => j.state !== 'done' || j.attempts !== 1);
  if (bad.length)
    throw new Error(
      `outbox rows not done exactly once: ${JSON.stringify(bad.map((j) => ({ id: j.id, state: j.state, attempts: j.attempts, claimedBy: j.claimedBy, lastError: j.lastError })))}`,
    );
  return jobs.length;
}

const DHM = path.resolve(__dirname, '..', '..', 'bin', 'dhm.js');

export interface Service {
  role: string;
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
  alive(): boolean;
}

/** A `dhm <role>` process (as deployed), its output kept for failure messages. */
export function spawnService(role: string, env: NodeJS.ProcessEnv): Service {
  const child = spawn(process.execPath, [DHM, role], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (d: Buffer) => {
    out += d;
    if (out.length > 200_000) out = out.slice(-100_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { role, child, output: () => out, exited, alive: () => child.exitCode === null && child.signalCode === null };
}

export async function untilReady(s: Service, timeoutMs = 90_000): Promise<void> {
  await eventually(
    `dhm ${s.role} ready`,
    async () => {
      if (!s.alive()) throw new Error(`dhm ${s.role} exited: ${s.output().slice(-1500)}`);
      return /"msg":"ready"/.test(s.output());
    },
    timeoutMs,
    100,
  );
}

/** SIGTERM (then SIGKILL after a deadline) every service still running; resolves when all have exited. */
export async function stopServices(services: Service[]): Promise<void> {
  await Promise.all(
    services.map(async (s) => {
      if (!s.alive()) return s.exited;
      s.child.kill('SIGTERM');
      const timer = setTimeout(() => s.alive() && s.child.kill('SIGKILL'), 15_000);
      await s.exited;
      clearTimeout(timer);
    }),
  );
}

/** Resolves after `ms`, or as soon as `stop()` is true (checked every 25 ms): a bounded wait for a random fault moment. */
export async function faultMoment(ms: number, stop: () => boolean | Promise<boolean> = () => false): Promise<void> {
  const deadline = Date.now() + ms;
  await eventually('fault moment', async () => (await stop()) || Date.now() >= deadline, ms + 5_000, 25);
}

/**
 * How a migration ended: its status once the workflow closed. A rollback ends the workflow failed
 * (`MIGRATION_ROLLED_BACK`), so the result alone is not enough.
 */
export async function outcome(handle: WorkflowHandle<typeof migrateDedicatedHost>): Promise<MigrationStatus> {
  await handle.result().catch(() => undefined);
  return handle.query(statusQuery);
}

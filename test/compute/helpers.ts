import pino, { type Logger } from 'pino';
import type { Resources } from '../../common/resources';
import { createAgentClient, type AgentClient, type MigrationJob, type VmSpec } from '../../compute/agent-client';
import { startAgent, type RunningAgent, type StartAgentOptions } from '../../compute/agent-service';
import { testAgentPki } from '../support/agent-pki';

/** Silent unless LOG_LEVEL is set (LOG_LEVEL=debug npx jest test/compute to watch the agents). */
export const logger: Logger = pino({ level: process.env.LOG_LEVEL ?? 'silent', timestamp: () => `,"t":${performance.now().toFixed(1)}` });

export const MIB = 2 ** 20;
export const GIB = 2 ** 30;

export const SERVER_CAPACITY: Resources = { vcpus: 64, memoryMiB: 256 * 1024, diskGiB: 4000 };
export const HOST_CAPACITY: Resources = { vcpus: 32, memoryMiB: 128 * 1024, diskGiB: 2000 };

export interface TestAgent {
  agent: RunningAgent;
  client: AgentClient;
  url: string;
  serverId: string;
}

/** Agents started by a test file; `stopAll` in afterEach/afterAll. */
export class Agents {
  private readonly running: RunningAgent[] = [];

  async start(serverId: string, opts: Partial<Omit<StartAgentOptions, 'serverId' | 'logger'>> = {}): Promise<TestAgent> {
    const pki = await testAgentPki([serverId]);
    const agent = await startAgent({
      serverId,
      capacity: SERVER_CAPACITY,
      nicBandwidthBps: 10e9,
      logger,
      tls: pki.server(serverId),
      // The tests' agents take fault injection; production's do not (DHM_AGENT_FAULTS).
      faultRoutes: true,
      ...opts,
    });
    this.running.push(agent);
    return { agent, client: createAgentClient({ baseUrl: agent.url, tls: pki.controlPlane, serverId }), url: agent.url, serverId };
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.running.splice(0).map((a) => a.stop()));
  }
}

/** A source with incarnation `src` and a target with incarnation `dst`, both with HOST_CAPACITY. */
export async function startPair(agents: Agents, opts: Partial<Omit<StartAgentOptions, 'serverId' | 'logger'>> = {}) {
  const source = await agents.start('server-a', opts);
  const target = await agents.start('server-b', opts);
  await source.client.prepareIncarnation({ incarnationId: 'src', capacity: HOST_CAPACITY });
  await target.client.prepareIncarnation({ incarnationId: 'dst', capacity: HOST_CAPACITY });
  return { source, target };
}

export function spec(memoryMiB: number, workload?: { dirtyRateMiBps: number; workingSetMiB: number }): VmSpec {
  return { vcpus: 2, memoryMiB, diskGiB: 20, ...(workload ? { workload } : {}) };
}

/** Polls `probe` until it returns a value that is not undefined/false, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 10_000,
  intervalMs = 2,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs)); // poll interval within the deadline
  }
}

/** Waits until the job has left 'running'. */
export function finished(client: AgentClient, jobId: string, timeoutMs = 20_000, intervalMs = 2): Promise<MigrationJob> {
  return waitFor(
    `migration ${jobId} to finish`,
    async () => {
      const job = await client.getMigration(jobId);
      if (!job) throw new Error(`migration ${jobId} vanished`);
      return job.state === 'running' ? undefined : job;
    },
    timeoutMs,
    intervalMs,
  );
}

/** Relative difference, for "within 5 %" checks. */
export function relErr(actual: number, expected: number): number {
  if (expected === 0) return Math.abs(actual);
  return Math.abs(actual - expected) / Math.abs(expected);
}

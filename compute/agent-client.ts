import * as https from 'node:https';
import type { Resources } from '../common/resources';
import {
  agentInfoSchema,
  dirtyRateMeasurementSchema,
  expectedIncomingSchema,
  faultsStateSchema,
  guestOpResultSchema,
  incarnationViewSchema,
  linkMeasurementSchema,
  MAX_MIGRATION_WAIT_MS,
  migrationJobSchema,
  paths,
  vmViewSchema,
  type AgentInfo,
  type DirtyRateMeasurement,
  type ExpectIncomingBody,
  type Faults,
  type GuestOp,
  type GuestOpResult,
  type IncarnationView,
  type LinkMeasurement,
  type MigrationJob,
  type StartMigrationInput,
  type VmSpec,
  type VmView,
} from './agent-api';
import { AgentError, callAgent, type CallTarget } from './agent-http';
import { agentHttpsAgent, type AgentClientTls } from './agent-tls';

export { AgentError } from './agent-http';
export type {
  AgentInfo,
  DirtyRateMeasurement,
  LinkMeasurement,
  Faults,
  GuestOp,
  GuestOpResult,
  IncarnationView,
  MigrationJob,
  StartMigrationInput,
  VmSpec,
  VmView,
} from './agent-api';

export interface AgentClientOptions {
  baseUrl: string;
  /** The caller's certificate: the control plane's (compute/agent-tls.ts). Or a pool made once with `agentHttpsAgent`. */
  tls: AgentClientTls | https.Agent;
  /** The server this agent is: its certificate must name it. Unset: learned from `info()` when first needed. */
  serverId?: string;
  /** Per request. Default 10 s. */
  timeoutMs?: number;
}

/**
 * The only way the rest of dhm talks to a host agent. Every reply is checked against the agent API's zod schemas;
 * every failure is an `AgentError` (with `retryable` for unreachable agents, timeouts and 5xx).
 */
export interface AgentClient {
  readonly baseUrl: string;
  info(): Promise<AgentInfo>;
  /** Idempotent: the same id and capacity give the same incarnation. */
  prepareIncarnation(input: { incarnationId: string; capacity: Resources }): Promise<IncarnationView>;
  /** Null when the agent has no such incarnation. */
  getIncarnation(incarnationId: string): Promise<IncarnationView | null>;
  /** Idempotent; deletes the incarnation's VMs (cancelling their migrations). */
  teardownIncarnation(incarnationId: string): Promise<void>;
  /** Idempotent by vmId (same spec and incarnation). */
  createVm(input: { vmId: string; incarnationId: string; spec: VmSpec }): Promise<VmView>;
  /** The VM as this agent has it; null if it is not here (never was, deleted, or migrated away). */
  getVm(vmId: string): Promise<VmView | null>;
  /**
   * Deletes the VM wherever it is: a VM mid-migration has its migration cancelled first; a VM that migrated away
   * is followed to its new agent. Already gone is fine.
   */
  deleteVm(vmId: string): Promise<void>;
  /**
   * Idempotent by jobId: the same jobId returns the existing job. With `waitMs` the agent then holds the answer as
   * `getMigration` does (one round trip for a short move); an older agent answers at once. First tells the target
   * agent (`input.target.agentUrl`) to expect the job from this agent's server: a target takes incoming-migration
   * calls only for jobs the control plane announced, from the source it named.
   */
  startMigration(input: StartMigrationInput, opts?: { waitMs?: number }): Promise<MigrationJob>;
  /**
   * With `waitMs`, a long-poll: the agent answers once the job has left `running` or `waitMs` has passed (the request
   * timeout is extended by `waitMs`). An older agent ignores it and answers at once: callers must not rely on the wait.
   */
  getMigration(jobId: string, opts?: { waitMs?: number }): Promise<MigrationJob | null>;
  /** Before switchover: the VM stays on the source ('cancelled'). After completion: AgentError 409 MIGRATION_COMPLETED. */
  cancelMigration(jobId: string): Promise<MigrationJob>;
  /**
   * The VM's measured dirty rate over `sampleMs` (agent-api.ts, "measurements"); null when the agent's backend cannot
   * measure (501), so the caller falls back on a hint. The request waits the sample out.
   */
  measureDirtyRate(vmId: string, sampleMs?: number): Promise<DirtyRateMeasurement | null>;
  /** The server's link as the agent measured it (one stream's throughput, the NIC's); null when it cannot measure. */
  measureLink(sampleMs?: number): Promise<LinkMeasurement | null>;
  /** Served wherever the VM runs now: a `VM_MOVED` answer is followed (a few hops at most). */
  guestOp(vmId: string, op: GuestOp): Promise<GuestOpResult>;
  /** Tells this agent to let `sourceServerId` migrate `vmId` into `incarnationId` as job `jobId` (idempotent). */
  expectIncoming(input: { jobId: string } & ExpectIncomingBody): Promise<void>;
  /** Test-only fault injection (agents started with DHM_AGENT_FAULTS=1; others answer 404); keys left out keep their value. */
  setFaults(f: Faults): Promise<void>;
}

const clampWait = (waitMs: number | undefined) => Math.min(Math.max(0, Math.floor(waitMs ?? 0)), MAX_MIGRATION_WAIT_MS);

/** How many `VM_MOVED` redirects one call follows: a VM can move on while a request chases it, but not forever. */
export const MAX_MOVED_HOPS = 5;

export function createAgentClient(opts: AgentClientOptions): AgentClient {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const pool = opts.tls instanceof https.Agent ? opts.tls : agentHttpsAgent(opts.tls);
  // Any other agent (a redirect, a migration's target) must still prove a fleet server's certificate (agentHttpsAgent).
  const at = (baseUrl: string): CallTarget => ({ baseUrl, https: pool, timeoutMs });
  const home: CallTarget = { ...at(opts.baseUrl), ...(opts.serverId ? { serverId: opts.serverId } : {}) };
  let serverId: Promise<string> | undefined = opts.serverId ? Promise.resolve(opts.serverId) : undefined;
  const myServerId = () => {
    serverId ??= callAgent(home, 'GET', paths.info, undefined, agentInfoSchema).then((i) => i.serverId);
    serverId.catch(() => (serverId = undefined));
    return serverId;
  };

  /**
   * Runs `call` against this agent, then against wherever `VM_MOVED` points: only another fleet server's agent. The
   * URL must be https (refused before connecting otherwise) and the agent there must prove a server certificate of the
   * fleet CA; an answer from anything else is never read, and no request body reaches it.
   */
  async function followingMoves<T>(call: (target: CallTarget) => Promise<T>): Promise<T> {
    let target = home;
    for (let hop = 0; ; hop++) {
      try {
        return await call(target);
      } catch (err) {
        if (!(err instanceof AgentError && err.code === 'VM_MOVED' && err.movedTo) || hop >= MAX_MOVED_HOPS) throw err;
        if (!err.movedTo.startsWith('https://'))
          throw new AgentError({
            status: 0,
            code: 'REDIRECT_REFUSED',
            message: `VM_MOVED to ${err.movedTo}: not an agent of the fleet (https only)`,
            retryable: false,
          });
        target = at(err.movedTo);
      }
    }
  }

  /**
   * Tells the target to expect the job from this agent's server. A target that cannot be reached (or a target URL the
   * source will refuse anyway) is left to the source: its own attempt fails the job as it would have (TargetUnavailable,
   * or a 400 naming target.agentUrl); any other refusal (a bad id, a 403) stops here.
   */
  async function announce(jobId: string, body: Omit<StartMigrationInput, 'jobId'>): Promise<void> {
    if (!/^https:\/\//.test(body.target.agentUrl)) return;
    try {
      const input = { vmId: body.vmId, incarnationId: body.target.incarnationId, sourceServerId: await myServerId() };
      await callAgent(at(body.target.agentUrl), 'PUT', paths.expectIncoming(jobId), input, expectedIncomingSchema);
    } catch (err) {
      if (!(err instanceof AgentError && (err.retryable || err.status === 400))) throw err;
    }
  }

  const nullIfNotImplemented = async <T>(p: Promise<T>): Promise<T | null> => {
    try {
      return await p;
    } catch (err) {
      if (err instanceof AgentError && err.status === 501) return null;
      throw err;
    }
  };
  const sampled = (sampleMs: number | undefined) => Math.max(100, Math.min(60_000, Math.round(sampleMs ?? 1000)));

  const nullIfNotFound = async <T>(p: Promise<T>): Promise<T | null> => {
    try {
      return await p;
    } catch (err) {
      if (err instanceof AgentError && err.status === 404 && err.code === 'NOT_FOUND') return null;
      throw err;
    }
  };

  return {
    baseUrl: opts.baseUrl,
    info: () => callAgent(home, 'GET', paths.info, undefined, agentInfoSchema),
    prepareIncarnation: ({ incarnationId, capacity }) => callAgent(home, 'PUT', paths.incarnation(incarnationId), { capacity }, incarnationViewSchema),
    getIncarnation: (incarnationId) => nullIfNotFound(callAgent(home, 'GET', paths.incarnation(incarnationId), undefined, incarnationViewSchema)),
    teardownIncarnation: (incarnationId) => callAgent(home, 'DELETE', paths.incarnation(incarnationId), undefined, null),
    createVm: ({ vmId, incarnationId, spec }) => callAgent(home, 'PUT', paths.vm(vmId), { incarnationId, spec }, vmViewSchema),
    getVm: (vmId) => nullIfNotFound(callAgent(home, 'GET', paths.vm(vmId), undefined, vmViewSchema)),
    deleteVm: (vmId) => followingMoves((t) => callAgent(t, 'DELETE', paths.vm(vmId), undefined, null)),
    startMigration: async ({ jobId, ...body }, o) => {
      await announce(jobId, body);
      const waitMs = clampWait(o?.waitMs);
      if (!waitMs) return callAgent(home, 'PUT', paths.migration(jobId), body, migrationJobSchema);
      return callAgent({ ...home, timeoutMs: timeoutMs + waitMs }, 'PUT', `${paths.migration(jobId)}?waitMs=${waitMs}`, body, migrationJobSchema);
    },
    getMigration: (jobId, o) => {
      const waitMs = clampWait(o?.waitMs);
      if (!waitMs) return nullIfNotFound(callAgent(home, 'GET', paths.migration(jobId), undefined, migrationJobSchema));
      const target = { ...home, timeoutMs: timeoutMs + waitMs };
      return nullIfNotFound(callAgent(target, 'GET', `${paths.migration(jobId)}?waitMs=${waitMs}&while=running`, undefined, migrationJobSchema));
    },
    cancelMigration: (jobId) => callAgent(home, 'POST', paths.cancelMigration(jobId), undefined, migrationJobSchema),
    measureDirtyRate: (vmId, sampleMs) => {
      const ms = sampled(sampleMs);
      const target = { ...home, timeoutMs: timeoutMs + ms };
      return nullIfNotImplemented(callAgent(target, 'GET', `${paths.dirtyRate(vmId)}?sampleMs=${ms}`, undefined, dirtyRateMeasurementSchema));
    },
    measureLink: (sampleMs) => {
      const ms = sampled(sampleMs);
      return nullIfNotImplemented(callAgent({ ...home, timeoutMs: timeoutMs + ms }, 'GET', `${paths.link}?sampleMs=${ms}`, undefined, linkMeasurementSchema));
    },
    guestOp: (vmId, op) => followingMoves((t) => callAgent(t, 'POST', paths.guestOps(vmId), op, guestOpResultSchema)),
    expectIncoming: async ({ jobId, ...body }) => {
      await callAgent(home, 'PUT', paths.expectIncoming(jobId), body, expectedIncomingSchema);
    },
    setFaults: async (f) => {
      await callAgent(home, 'PUT', paths.faults, f, faultsStateSchema);
    },
  };
}

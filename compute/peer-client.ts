import { incomingViewSchema, paths, vmViewSchema, type AcceptIncomingBody, type CommitIncomingBody, type IncomingView, type VmView } from './agent-api';
import { AgentError, callAgent } from './agent-http';
import { agentHttpsAgent, type AgentClientTls } from './agent-tls';

/**
 * The calls one agent makes to another while migrating a VM to it. Kept apart from `AgentClient` because only
 * agents use these routes; the rest of the system never reserves or commits an incoming VM itself.
 */
export interface PeerClient {
  accept(agentUrl: string, jobId: string, body: AcceptIncomingBody): Promise<IncomingView>;
  commit(agentUrl: string, jobId: string, body: CommitIncomingBody): Promise<VmView>;
  release(agentUrl: string, jobId: string): Promise<void>;
}

/**
 * How long one accept may take. It is more than the other calls' 2 s: the target starts its destination in it (for
 * qemu a process, a tap, empty disk files) over a fresh mTLS connection, and on a starved machine that took longer
 * than 2 s, which failed the move outright.
 */
export const ACCEPT_TIMEOUT_MS = 5_000;
/** Waits before the 2nd and 3rd attempt of an accept that timed out or met a 5xx (the accept is idempotent by job id). */
export const ACCEPT_RETRY_BACKOFF_MS = [250, 1_000];

const transient = (err: unknown) => !(err instanceof AgentError) || err.retryable;

/**
 * The target's accept, tried again on a timeout, a dropped connection or a 5xx: it is idempotent (the same job id
 * finds the same reservation), so a slow target costs a few seconds instead of the move. A refusal is final at once.
 */
export async function acceptWithRetries(
  peer: PeerClient,
  agentUrl: string,
  jobId: string,
  body: AcceptIncomingBody,
  onRetry?: (err: unknown) => void,
): Promise<IncomingView> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await peer.accept(agentUrl, jobId, body);
    } catch (err) {
      const wait = ACCEPT_RETRY_BACKOFF_MS[attempt];
      if (wait === undefined || !transient(err)) throw err;
      onRetry?.(err);
      await new Promise((r) => setTimeout(r, wait)); // backoff between bounded attempts
    }
  }
}

/** Calls go out with this server's own client certificate (`tls`); the target must prove a fleet server's certificate. */
export function createPeerClient(opts: { tls: AgentClientTls; timeoutMs?: number }): PeerClient {
  const pool = agentHttpsAgent(opts.tls);
  const target = (baseUrl: string, timeoutMs = opts.timeoutMs ?? 2_000) => ({ baseUrl, https: pool, timeoutMs });
  return {
    accept: (url, jobId, body) =>
      callAgent(target(url, Math.max(ACCEPT_TIMEOUT_MS, opts.timeoutMs ?? 0)), 'PUT', paths.incoming(jobId), body, incomingViewSchema),
    commit: (url, jobId, body) => callAgent(target(url), 'POST', paths.commitIncoming(jobId), body, vmViewSchema),
    release: (url, jobId) => callAgent(target(url), 'DELETE', paths.incoming(jobId), undefined, null),
  };
}

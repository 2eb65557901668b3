import { incomingViewSchema, paths, vmViewSchema, type AcceptIncomingBody, type CommitIncomingBody, type IncomingView, type VmView } from './agent-api';
import { callAgent } from './agent-http';
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

/** Calls go out with this server's own client certificate (`tls`); the target must prove a fleet server's certificate. */
export function createPeerClient(opts: { tls: AgentClientTls; timeoutMs?: number }): PeerClient {
  const pool = agentHttpsAgent(opts.tls);
  const target = (baseUrl: string) => ({ baseUrl, https: pool, timeoutMs: opts.timeoutMs ?? 2_000 });
  return {
    accept: (url, jobId, body) => callAgent(target(url), 'PUT', paths.incoming(jobId), body, incomingViewSchema),
    commit: (url, jobId, body) => callAgent(target(url), 'POST', paths.commitIncoming(jobId), body, vmViewSchema),
    release: (url, jobId) => callAgent(target(url), 'DELETE', paths.incoming(jobId), undefined, null),
  };
}

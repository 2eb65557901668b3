import {
  incomingViewSchema,
  paths,
  vmViewSchema,
  type AcceptIncomingBody,
  type CommitIncomingBody,
  type IncomingView,
  type VmView,
} from './agent-api';
import { callAgent } from './agent-http';

/**
 * The calls one agent makes to another while migrating a VM to it. Kept apart from `AgentClient` because only
 * agents use these routes; the rest of the system never reserves or commits an incoming VM itself.
 */
export interface PeerClient {
  accept(agentUrl: string, jobId: string, body: AcceptIncomingBody): Promise<IncomingView>;
  commit(agentUrl: string, jobId: string, body: CommitIncomingBody): Promise<VmView>;
  release(agentUrl: string, jobId: string): Promise<void>;
}

export function createPeerClient(opts: { secret?: string; timeoutMs?: number }): PeerClient {
  const target = (baseUrl: string) => ({ baseUrl, secret: opts.secret, timeoutMs: opts.timeoutMs ?? 2_000 });
  return {
    accept: (url, jobId, body) => callAgent(target(url), 'PUT', paths.incoming(jobId), body, incomingViewSchema),
    commit: (url, jobId, body) => callAgent(target(url), 'POST', paths.commitIncoming(jobId), body, vmViewSchema),
    release: (url, jobId) => callAgent(target(url), 'DELETE', paths.incoming(jobId), undefined, null),
  };
}

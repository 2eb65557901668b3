import { createAgentClient, type AgentClient } from './agent-client';

/** Finds the agent of a physical server; the inventory knows each server's agent URL. */
export interface AgentDirectory {
  forServer(serverId: string): Promise<AgentClient>;
}

/** How long a server's agent URL is trusted before the inventory is asked again (they change only on re-deploys). */
export const AGENT_URL_TTL_MS = 5_000;

export function createAgentDirectory(deps: {
  lookupAgentUrl(serverId: string): Promise<string>;
  secret?: string;
  timeoutMs?: number;
  /** Default AGENT_URL_TTL_MS; 0 asks the inventory every time. */
  urlTtlMs?: number;
}): AgentDirectory {
  const clients = new Map<string, AgentClient>();
  // Every move asks for two agents; without this each ask was a Postgres query (benchmark 2: 2 per VM, 10–70 ms each
  // under load). A few seconds of staleness only delays noticing a re-deployed agent's new URL.
  const urls = new Map<string, { url: Promise<string>; until: number }>();
  const ttl = deps.urlTtlMs ?? AGENT_URL_TTL_MS;
  const urlOf = (serverId: string): Promise<string> => {
    const now = Date.now();
    const known = urls.get(serverId);
    if (known && known.until > now) return known.url;
    const url = deps.lookupAgentUrl(serverId);
    urls.set(serverId, { url, until: now + ttl });
    url.catch(() => urls.delete(serverId)); // a failed lookup is not remembered
    return url;
  };
  return {
    async forServer(serverId) {
      const url = await urlOf(serverId);
      const key = `${serverId} ${url}`;
      let client = clients.get(key);
      if (!client) {
        client = createAgentClient({ baseUrl: url, secret: deps.secret, timeoutMs: deps.timeoutMs });
        clients.set(key, client);
      }
      return client;
    },
  };
}

import { createAgentClient, type AgentClient } from '../compute/agent-client';

/** Finds the agent of a physical server; the inventory knows each server's agent URL. */
export interface AgentDirectory {
  forServer(serverId: string): Promise<AgentClient>;
}

export function createAgentDirectory(deps: {
  lookupAgentUrl(serverId: string): Promise<string>;
  secret?: string;
  timeoutMs?: number;
}): AgentDirectory {
  const clients = new Map<string, AgentClient>();
  return {
    async forServer(serverId) {
      const url = await deps.lookupAgentUrl(serverId);
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

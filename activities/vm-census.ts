import type { Resources } from '../common/resources';
import type { AgentClient } from '../compute/agent-client';
import type { Inventory } from '../inventory';
import type { AgentDirectory } from '../compute/agent-directory';
import type { ServerIncarnation } from './migration-steps';

/** Where a VM runs according to the agents (not the inventory): one side, both (mid-switchover), or neither (lost). */
export type VmWhereabouts = 'source' | 'target' | 'both' | 'none';

/** Asks one agent whether it runs the VM in the given incarnation; agent errors propagate (the activity is retried). */
async function runsOn(agent: AgentClient, vmId: string, incarnationId: string): Promise<boolean> {
  const vm = await agent.getVm(vmId);
  return vm !== null && vm.incarnationId === incarnationId;
}

/**
 * The migration's view of the truth when something may have died: an agent restart in the sim (or a server reboot
 * with real VMs) takes its VMs with it, and neither a move's failure nor the inventory says so. Every answer here
 * comes from the agents themselves.
 */
export function createVmCensus({ inventory, agents }: { inventory: Inventory; agents: AgentDirectory }) {
  return {
    /**
     * Where each VM runs now, asked of the source's and the target's agents: one listing of each incarnation (two
     * requests for the whole host), then a VM found in neither is asked about by id — a lost verdict rests on the
     * agents' answer for that very VM, not on a list read a moment earlier.
     */
    async locateVms(input: { vmIds: string[]; source: ServerIncarnation; target?: ServerIncarnation }): Promise<Record<string, VmWhereabouts>> {
      const source = await agents.forServer(input.source.serverId);
      const target = input.target ? await agents.forServer(input.target.serverId) : undefined;
      const listed = async (agent: AgentClient | undefined, incarnationId: string | undefined) =>
        new Set(agent && incarnationId ? ((await agent.getIncarnation(incarnationId))?.vmIds ?? []) : []);
      const [onSource, onTarget] = await Promise.all([listed(source, input.source.incarnationId), listed(target, input.target?.incarnationId)]);
      const out: Record<string, VmWhereabouts> = {};
      const unseen: string[] = [];
      for (const vmId of input.vmIds) {
        const s = onSource.has(vmId);
        const t = onTarget.has(vmId);
        if (s || t) out[vmId] = s && t ? 'both' : s ? 'source' : 'target';
        else unseen.push(vmId);
      }
      // A few at a time: normally none or a handful (a VM that just moved, or really lost).
      const worker = async () => {
        for (let vmId = unseen.shift(); vmId; vmId = unseen.shift()) {
          const [s, t] = await Promise.all([
            runsOn(source, vmId, input.source.incarnationId),
            target && input.target ? runsOn(target, vmId, input.target.incarnationId) : Promise.resolve(false),
          ]);
          out[vmId] = s && t ? 'both' : s ? 'source' : t ? 'target' : 'none';
        }
      };
      await Promise.all(Array.from({ length: Math.min(8, unseen.length) }, worker));
      return out;
    },

    /**
     * Makes sure an incarnation exists on its server's agent before VMs are moved into it: an agent that restarted
     * (a rebooted server) has forgotten it. Idempotent, as `prepareIncarnation` is.
     */
    async ensureIncarnationOnAgent(input: { server: ServerIncarnation; capacity: Resources }): Promise<void> {
      const agent = await agents.forServer(input.server.serverId);
      await agent.prepareIncarnation({ incarnationId: input.server.incarnationId, capacity: input.capacity });
    },

    /** Records each VM as lost in the inventory (allocation freed, audit `vm.lost`). Idempotent. */
    async recordLostVms(input: { migrationId: string; vmIds: string[]; reason: string }): Promise<void> {
      for (const vmId of input.vmIds) {
        await inventory.markVmLost({ vmId, migrationId: input.migrationId, reason: input.reason, actor: `migration:${input.migrationId}` });
      }
    },
  };
}

import type { Client } from '@temporalio/client';
import type { AgentDirectory } from '../compute/agent-directory';
import type { Logger } from '../common/logger';
import type { VmSpec } from '../common/migration';
import { InventoryError } from '../inventory/errors';
import type { HostView, Inventory, Vm } from '../inventory';
import { deleteVmDuringMigration, MigrationRequestRefused, provisionVmDuringMigration } from '../client/migrations';

export interface HostServiceDeps {
  inventory: Inventory;
  agents: AgentDirectory;
  temporal: { client: Client; taskQueue: string };
  logger: Logger;
  /** How long a request that meets a migration's last moments waits for the host to be active again. */
  settleTimeoutMs?: number;
}

export type Via = 'normal' | 'migration';

/**
 * What tenants do to their hosts, on whichever path is right at that moment: the normal path (inventory + the host's
 * agent) while the host is active, the migration workflow's updates while it migrates (claims 1f, 8). A request that
 * meets the migration's end is retried on the normal path once the host is active again, so none is lost.
 */
export function createHostService(deps: HostServiceDeps) {
  const { inventory, agents } = deps;
  const settleTimeoutMs = deps.settleTimeoutMs ?? 60_000;

  const waitUntilActive = async (dedicatedHostId: string) => {
    const deadline = Date.now() + settleTimeoutMs;
    for (;;) {
      const host = await inventory.getHost(dedicatedHostId);
      if (host.state === 'active') return host;
      if (Date.now() > deadline) throw new InventoryError('WRONG_STATE', `host ${dedicatedHostId} is still migrating; try again later`, 'dedicatedHostId');
      // A short wait: the host turns active the moment the migration's last transaction commits, and the tenant is
      // waiting (100 ms here was the worst part of a request that met a migration's end).
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  const isRace = (err: unknown) =>
    (err instanceof InventoryError && err.code === 'WRONG_STATE') || (err instanceof MigrationRequestRefused && err.type === 'MIGRATION_ENDED');

  return {
    /** A new dedicated host on a free matching server, with its first incarnation ready on that server's agent. */
    async createDedicatedHost(input: { tenantId: string; name: string; zone: string; resourceClass: string; dedicatedHostId?: string; actor: string }): Promise<HostView> {
      const host = await inventory.createDedicatedHost(input);
      const incarnation = await inventory.getIncarnation(host.currentIncarnationId);
      const agent = await agents.forServer(incarnation.serverId);
      await agent.prepareIncarnation({ incarnationId: incarnation.id, capacity: incarnation.capacity });
      return host;
    },

    async createVm(input: { dedicatedHostId: string; tenantId?: string; vmId: string; name: string; spec: VmSpec; requestId: string; actor: string }): Promise<{ vm: Vm; via: Via }> {
      for (let attempt = 0; ; attempt++) {
        const host = await inventory.getHost(input.dedicatedHostId, { tenantId: input.tenantId });
        try {
          if (host.state === 'migrating') {
            await provisionVmDuringMigration(deps.temporal.client, host.id, {
              requestId: input.requestId,
              vmId: input.vmId,
              tenantId: host.tenantId,
              name: input.name,
              spec: input.spec,
            });
            return { vm: await inventory.getVm(input.vmId), via: 'migration' };
          }
          const vm = await inventory.placeVm({ vmId: input.vmId, tenantId: input.tenantId, dedicatedHostId: host.id, name: input.name, spec: input.spec, actor: input.actor });
          // A repeated creation of a VM that was deleted since must not start it again behind the inventory's back.
          if (vm.state === 'deleted') throw new InventoryError('CONFLICT', `vmId: VM ${vm.id} was deleted; a new VM needs a new id`, 'vmId');
          const incarnation = await inventory.getIncarnation(vm.incarnationId);
          try {
            await (await agents.forServer(incarnation.serverId)).createVm({ vmId: vm.id, incarnationId: incarnation.id, spec: input.spec });
          } catch (err) {
            // The VM never started: give its capacity back rather than leave a phantom behind.
            await inventory.deleteVm({ vmId: vm.id, actor: input.actor }).catch(() => undefined);
            throw err;
          }
          return { vm, via: 'normal' };
        } catch (err) {
          if (!isRace(err) || attempt >= 3) throw err;
          deps.logger.info({ dedicatedHostId: host.id, err: String(err) }, 'request met a migration boundary; retrying on the right path');
          if (err instanceof MigrationRequestRefused) await waitUntilActive(host.id);
        }
      }
    },

    async deleteVm(input: { vmId: string; tenantId?: string; requestId: string; actor: string }): Promise<{ vm: Vm; via: Via }> {
      for (let attempt = 0; ; attempt++) {
        const vm = await inventory.getVm(input.vmId, { tenantId: input.tenantId });
        if (vm.state === 'deleted') return { vm, via: 'normal' };
        const host = await inventory.getHost(vm.dedicatedHostId);
        try {
          if (host.state === 'migrating') {
            await deleteVmDuringMigration(deps.temporal.client, host.id, { requestId: input.requestId, vmId: vm.id });
            return { vm: await inventory.getVm(vm.id), via: 'migration' };
          }
          // The inventory first: its migration gate decides under the host's lock, so a migration that begins now
          // cannot snapshot a VM that is being deleted. The agent's delete is idempotent and follows.
          const deleted = await inventory.deleteVm({ vmId: vm.id, tenantId: input.tenantId, actor: input.actor });
          const incarnation = await inventory.getIncarnation(vm.incarnationId);
          await (await agents.forServer(incarnation.serverId)).deleteVm(vm.id);
          return { vm: deleted, via: 'normal' };
        } catch (err) {
          if (!isRace(err) || attempt >= 3) throw err;
          if (err instanceof MigrationRequestRefused) await waitUntilActive(host.id);
        }
      }
    },
  };
}

export type HostService = ReturnType<typeof createHostService>;

import { ApplicationFailure } from '@temporalio/activity';
import { FailureTypes, type VmSpec } from '../common/migration';
import type { Resources } from '../common/resources';
import { vmSpecOf, type Inventory } from '../inventory';
import type { AgentDirectory } from '../compute/agent-directory';
import { orNull } from './failures';

export interface ServerIncarnation {
  serverId: string;
  incarnationId: string;
}

export interface MigrationSnapshot {
  capacity: Resources;
  source: ServerIncarnation;
  vms: Array<{ vmId: string; name: string; spec: VmSpec }>;
}

const actorOf = (migrationId: string) => `migration:${migrationId}`;

/** The steps of a migration around the VM moves: each one transaction in the inventory plus, where needed, one agent call. */
export function createMigrationSteps({ inventory, agents }: { inventory: Inventory; agents: AgentDirectory }) {
  return {
    /** Marks the host migrating and snapshots its VMs, in one transaction (so no VM slips in unnoticed). */
    async beginMigration(input: { migrationId: string; dedicatedHostId: string; actor: string }): Promise<MigrationSnapshot> {
      const snap = await inventory.beginMigration({ dedicatedHostId: input.dedicatedHostId, migrationId: input.migrationId, actor: input.actor });
      return {
        capacity: snap.host.capacity,
        source: { serverId: snap.source.server.id, incarnationId: snap.source.incarnation.id },
        vms: snap.vms.map((v) => ({ vmId: v.id, name: v.name, spec: vmSpecOf(v) })),
      };
    },

    /** A free server of the same zone and class with at least the host's resources (claim 2), held for this migration. */
    async reserveTarget(input: { migrationId: string; dedicatedHostId: string; targetServerId?: string }): Promise<{ serverId: string }> {
      const server = await inventory.reserveTargetServer({
        migrationId: input.migrationId,
        dedicatedHostId: input.dedicatedHostId,
        targetServerId: input.targetServerId,
        actor: actorOf(input.migrationId),
      });
      return { serverId: server.id };
    },

    /** The clone incarnation, with exactly the logical host's resources (claim 4), in the inventory and on its agent. */
    async provisionClone(input: { migrationId: string; dedicatedHostId: string; target: ServerIncarnation }): Promise<{ incarnationId: string }> {
      const clone = await inventory.createCloneIncarnation({
        migrationId: input.migrationId,
        dedicatedHostId: input.dedicatedHostId,
        serverId: input.target.serverId,
        incarnationId: input.target.incarnationId,
        actor: actorOf(input.migrationId),
      });
      const agent = await agents.forServer(input.target.serverId);
      await agent.prepareIncarnation({ incarnationId: clone.id, capacity: clone.capacity });
      return { incarnationId: clone.id };
    },

    /** The clone becomes the host and the old incarnation is deleted with its outbox row, atomically (claims 3, 5). */
    async finalizeMigration(input: { migrationId: string; dedicatedHostId: string; afterState: 'available' | 'maintenance'; actor: string }): Promise<void> {
      await inventory.finalizeMigration({
        migrationId: input.migrationId,
        dedicatedHostId: input.dedicatedHostId,
        afterState: input.afterState,
        actor: actorOf(input.migrationId),
      });
    },

    /** Compensation: the clone goes away on its agent and in the inventory, the target server is released, the host is active again. */
    async rollbackMigration(input: { migrationId: string; dedicatedHostId: string; target?: ServerIncarnation }): Promise<void> {
      if (input.target) {
        const agent = await agents.forServer(input.target.serverId);
        await agent.teardownIncarnation(input.target.incarnationId);
      }
      await inventory.rollbackMigration({ migrationId: input.migrationId, dedicatedHostId: input.dedicatedHostId, actor: actorOf(input.migrationId) });
    },

    /** A VM asked for while the host migrates goes on the clone after the aggregate capacity check (claims 1f, 6, 7). */
    async provisionVmOnClone(input: {
      migrationId: string;
      dedicatedHostId: string;
      target: ServerIncarnation;
      vmId: string;
      name: string;
      spec: VmSpec;
      tenantId?: string;
    }) {
      const tenantId = input.tenantId ?? (await orNull(inventory.getHost(input.dedicatedHostId)))?.tenantId;
      if (!tenantId)
        throw ApplicationFailure.create({ type: FailureTypes.NotFound, message: `dedicated host ${input.dedicatedHostId} not found`, nonRetryable: true });
      const vm = await inventory.provisionVmOnClone({
        vmId: input.vmId,
        migrationId: input.migrationId,
        dedicatedHostId: input.dedicatedHostId,
        name: input.name,
        spec: input.spec,
        tenantId,
        actor: actorOf(input.migrationId),
      });
      // A repeat of a request whose VM was deleted since (a run may no longer carry it): never start it again.
      if (vm.state === 'deleted')
        throw ApplicationFailure.create({ type: FailureTypes.Conflict, message: `vmId: VM ${vm.id} was deleted; a new VM needs a new id`, nonRetryable: true });
      const agent = await agents.forServer(input.target.serverId);
      await agent.createVm({ vmId: vm.id, incarnationId: vm.incarnationId, spec: input.spec });
      return {
        vmId: vm.id,
        name: vm.name,
        dedicatedHostId: vm.dedicatedHostId,
        incarnationId: vm.incarnationId,
        spec: input.spec,
        state: 'provisioned-on-clone' as const,
      };
    },

    /** Deletes a VM wherever it runs now (not yet moved, or already on the clone): its agent first, then the inventory. */
    async deleteVm(input: { migrationId: string; vmId: string }): Promise<void> {
      const vm = await orNull(inventory.getVm(input.vmId));
      if (!vm || vm.state === 'deleted') return;
      const incarnation = await orNull(inventory.getIncarnation(vm.incarnationId));
      if (incarnation) {
        const agent = await agents.forServer(incarnation.serverId);
        await agent.deleteVm(vm.id);
      }
      await inventory.deleteVm({ vmId: vm.id, migrationId: input.migrationId, actor: actorOf(input.migrationId) });
    },
  };
}

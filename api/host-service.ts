import type { Client } from '@temporalio/client';
import type { AgentDirectory } from '../compute/agent-directory';
import type { Logger } from '../common/logger';
import type { VmSpec } from '../common/migration';
import { vmDisks } from '../common/vm-spec';
import { InventoryError } from '../inventory/errors';
import { ApiError } from './errors';
import { waitUntilHostActive } from './host-settle';
import type { HostView, Inventory, Vm } from '../inventory';
import { deleteVmDuringMigration, MigrationRequestRefused, provisionVmDuringMigration } from '../client/migrations';

export interface HostServiceDeps {
  inventory: Inventory;
  agents: AgentDirectory;
  temporal: { client: Client; taskQueue: string };
  logger: Logger;
  /** How long a request that meets a migration's last moments waits for the host to be active again. */
  settleTimeoutMs?: number;
  /** Tenant requests in flight at once through one migration (default 8; Temporal allows 10 updates in flight). */
  maxRequestsInFlightPerMigration?: number;
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

  const waitUntilActive = (dedicatedHostId: string) => waitUntilHostActive((id) => inventory.getHost(id), dedicatedHostId, settleTimeoutMs);

  // Requests in flight per migrating host (so per tenant: a dedicated host has one): Temporal takes at most 10 updates
  // in flight per workflow and answers more with RESOURCE_EXHAUSTED; beyond the cap a request is refused here, 429.
  const maxInFlight = deps.maxRequestsInFlightPerMigration ?? 8;
  const inFlight = new Map<string, number>();
  const throughMigration = async <T>(dedicatedHostId: string, send: () => Promise<T>): Promise<T> => {
    const n = inFlight.get(dedicatedHostId) ?? 0;
    if (n >= maxInFlight)
      throw new ApiError(
        429,
        'TOO_MANY_REQUESTS',
        `dedicatedHostId: ${n} requests are already in flight on this migrating host (at most ${maxInFlight}); retry shortly`,
        'dedicatedHostId',
        {
          retryAfterSeconds: 1,
        },
      );
    inFlight.set(dedicatedHostId, n + 1);
    try {
      return await send();
    } finally {
      const left = (inFlight.get(dedicatedHostId) ?? 1) - 1;
      if (left > 0) inFlight.set(dedicatedHostId, left);
      else inFlight.delete(dedicatedHostId);
    }
  };

  /**
   * A disk kind the host's servers cannot serve is refused before anything starts (the inventory untouched). Every
   * backend serves local disks, so only a spec naming another kind asks the agents: the current server's, and while
   * the host migrates the clone's too (the VM may land there). The message names no server (tenants read it).
   */
  const checkDiskKinds = async (host: HostView, spec: VmSpec) => {
    const disks = vmDisks(spec);
    if (disks.every((d) => d.kind === 'local')) return;
    const servers = [host.serverId];
    if (host.state === 'migrating')
      for (const inc of await inventory.listIncarnations({ dedicatedHostId: host.id }))
        if (inc.role === 'clone' && inc.state === 'live') servers.push(inc.serverId);
    for (const serverId of servers) {
      const { diskKinds } = await (await agents.forServer(serverId)).info();
      disks.forEach((d, i) => {
        if (!diskKinds.includes(d.kind))
          throw new InventoryError(
            'CONFLICT',
            `disks.${i}.kind: this dedicated host's servers do not serve ${d.kind} disks (they serve: ${diskKinds.join(', ')})`,
            `disks.${i}.kind`,
          );
      });
    }
  };

  const isRace = (err: unknown) =>
    (err instanceof InventoryError && err.code === 'WRONG_STATE') || (err instanceof MigrationRequestRefused && err.type === 'MIGRATION_ENDED');

  return {
    /** A new dedicated host on a free matching server, with its first incarnation ready on that server's agent. */
    async createDedicatedHost(input: {
      tenantId: string;
      name: string;
      zone: string;
      resourceClass: string;
      dedicatedHostId?: string;
      actor: string;
    }): Promise<HostView> {
      const host = await inventory.createDedicatedHost(input);
      const incarnation = await inventory.getIncarnation(host.currentIncarnationId);
      const agent = await agents.forServer(incarnation.serverId);
      await agent.prepareIncarnation({ incarnationId: incarnation.id, capacity: incarnation.capacity });
      return host;
    },

    async createVm(input: {
      dedicatedHostId: string;
      tenantId?: string;
      vmId: string;
      name: string;
      spec: VmSpec;
      requestId: string;
      actor: string;
    }): Promise<{ vm: Vm; via: Via }> {
      for (let attempt = 0; ; attempt++) {
        const host = await inventory.getHost(input.dedicatedHostId, { tenantId: input.tenantId });
        await checkDiskKinds(host, input.spec);
        try {
          if (host.state === 'migrating') {
            await throughMigration(host.id, () =>
              provisionVmDuringMigration(deps.temporal.client, host.id, {
                requestId: input.requestId,
                vmId: input.vmId,
                tenantId: host.tenantId,
                name: input.name,
                spec: input.spec,
              }),
            );
            return { vm: await inventory.getVm(input.vmId), via: 'migration' };
          }
          const vm = await inventory.placeVm({
            vmId: input.vmId,
            tenantId: input.tenantId,
            dedicatedHostId: host.id,
            name: input.name,
            spec: input.spec,
            actor: input.actor,
          });
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
            await throughMigration(host.id, () => deleteVmDuringMigration(deps.temporal.client, host.id, { requestId: input.requestId, vmId: vm.id }));
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

import type { Client } from '@temporalio/client';
import type { AgentDirectory } from '../compute/agent-directory';
import { migrationWorkflowId } from '../common/migration';
import { createAgentClient, type AgentClient } from '../compute/agent-client';
import type { AgentClientTls } from '../compute/agent-tls';
import type { HostIncarnation, Inventory, PhysicalServer } from '../inventory';

export interface InvariantCheckInput {
  inventory: Inventory;
  /**
   * How to reach each server's agent: a directory (as the activities use), a map server id → URL, or nothing (then
   * the URL the inventory records for the server, with `agentTls`).
   */
  agents?: AgentDirectory | ReadonlyMap<string, string> | Record<string, string>;
  /** The control plane's agent-plane certificate (compute/agent-tls.ts). */
  agentTls?: AgentClientTls;
  /** When given, a host still marked `migrating` is checked against its workflow: the workflow must be running. */
  temporal?: Client;
  /** Servers without an agent to ask (e.g. `qemu` servers in a sim-only test): their VMs are not checked. */
  skipServer?: (server: PhysicalServer) => boolean;
  /** Per agent request. Default 5 s. */
  agentTimeoutMs?: number;
}

export interface InvariantReport {
  ok: boolean;
  violations: string[];
  /**
   * VMs the inventory records as lost (a migration found them on no agent after a server failed): not violations —
   * the record is true — but an operator must see them until the tenant deletes them.
   */
  lostVms: Array<{ vmId: string; dedicatedHostId: string; reason: string | null }>;
  /** What was looked at, for reports. */
  checked: { hosts: number; vms: number; servers: number; incarnations: number; agents: number };
}

const sum = (a: { vcpus: number; memoryMiB: number; diskGiB: number }, b: { vcpus: number; memoryMiB: number; diskGiB: number }) => ({
  vcpus: a.vcpus + b.vcpus,
  memoryMiB: a.memoryMiB + b.memoryMiB,
  diskGiB: a.diskGiB + b.diskGiB,
});
const fmt = (r: { vcpus: number; memoryMiB: number; diskGiB: number }) => `${r.vcpus} vCPU/${r.memoryMiB} MiB/${r.diskGiB} GiB`;
const same = (a: { vcpus: number; memoryMiB: number; diskGiB: number }, b: { vcpus: number; memoryMiB: number; diskGiB: number }) =>
  a.vcpus === b.vcpus && a.memoryMiB === b.memoryMiB && a.diskGiB === b.diskGiB;

/**
 * The fleet's invariants over the inventory, the host agents and (optionally) Temporal. Meant for quiet moments
 * (between trials, after migrations ended, or `dhm check` by an operator); a VM in the middle of a switchover may be
 * reported while it moves.
 *
 * 1. Every running VM runs exactly once: exactly one agent has it, and it is the agent of the server of the VM's
 *    inventory incarnation, in that incarnation. No agent runs a VM the inventory does not have running.
 * 2. Each live incarnation's allocation equals the sum of its running VMs.
 * 3. No server is reserved, or allocated as a migration's target, without a running migration holding it; no server
 *    is allocated without a live incarnation on it (or a migration holding it).
 * 4. No live incarnation without its server (the server exists and is allocated); no live incarnation on an agent
 *    that the inventory does not know as live there.
 * 5. Every deleted incarnation's server was de-provisioned (its outbox row done, the agent no longer has the
 *    incarnation) or has a pending outbox row.
 * 6. Every host whose migration ended is `active`: a host marked migrating has a running inventory migration and,
 *    with a Temporal client, a running workflow.
 */
export async function checkInvariants(input: InvariantCheckInput): Promise<InvariantReport> {
  const { inventory } = input;
  const violations: string[] = [];
  const v = (s: string) => violations.push(s);

  const servers = await inventory.listServers();
  const serverById = new Map(servers.map((s) => [s.id, s]));
  const hosts = await inventory.listHosts();
  const jobs = await inventory.listDeprovisionJobs();
  const jobsByIncarnation = new Map<string, typeof jobs>();
  for (const j of jobs) jobsByIncarnation.set(j.incarnationId, [...(jobsByIncarnation.get(j.incarnationId) ?? []), j]);

  // --- the agents' view: server → (incarnation → VM ids) -----------------------------------------------------
  const clients = new Map<string, AgentClient>();
  const agentFor = async (server: PhysicalServer): Promise<AgentClient> => {
    let c = clients.get(server.id);
    if (c) return c;
    const a = input.agents;
    if (a && typeof (a as AgentDirectory).forServer === 'function') c = await (a as AgentDirectory).forServer(server.id);
    else {
      const url = a instanceof Map ? a.get(server.id) : a ? (a as Record<string, string>)[server.id] : server.agentUrl;
      if (!input.agentTls) throw new Error('checkInvariants: agentTls is required to reach agents by URL');
      c = createAgentClient({ baseUrl: url ?? server.agentUrl, tls: input.agentTls, serverId: server.id, timeoutMs: input.agentTimeoutMs ?? 5000 });
    }
    clients.set(server.id, c);
    return c;
  };
  const agentView = new Map<string, Map<string, Set<string>>>();
  let agentsAsked = 0;
  for (const server of servers) {
    if (input.skipServer?.(server)) continue;
    try {
      const agent = await agentFor(server);
      const info = await agent.info();
      agentsAsked++;
      if (info.serverId !== server.id) v(`server ${server.id}: its agent answers as server ${info.serverId}`);
      const incs = new Map<string, Set<string>>();
      for (const incId of info.incarnations) {
        const view = await agent.getIncarnation(incId);
        if (view) incs.set(incId, new Set(view.vmIds));
      }
      agentView.set(server.id, incs);
    } catch (err) {
      v(`server ${server.id}: agent unreachable (${(err as Error).message})`);
    }
  }
  const vmLocations = new Map<string, { serverId: string; incarnationId: string }[]>();
  for (const [serverId, incs] of agentView)
    for (const [incarnationId, vmIds] of incs) for (const vmId of vmIds) vmLocations.set(vmId, [...(vmLocations.get(vmId) ?? []), { serverId, incarnationId }]);

  // --- hosts, incarnations, VMs -------------------------------------------------------------------------------
  const liveIncarnations = new Map<string, HostIncarnation>();
  const knownIncarnations = new Set<string>();
  const runningVmIds = new Set<string>();
  const lostVms: InvariantReport['lostVms'] = [];
  let vmCount = 0;
  let incarnationCount = 0;
  for (const host of hosts) {
    const incs = await inventory.listIncarnations({ dedicatedHostId: host.id, includeDeleted: true });
    incarnationCount += incs.length;
    const listed = await inventory.listVms({ dedicatedHostId: host.id });
    const vms = listed.filter((vm) => vm.state === 'running');
    for (const vm of listed) if (vm.state === 'lost') lostVms.push({ vmId: vm.id, dedicatedHostId: host.id, reason: vm.lostReason ?? null });
    vmCount += vms.length;
    for (const inc of incs) {
      knownIncarnations.add(inc.id);
      const server = serverById.get(inc.serverId);
      if (inc.state === 'live') {
        liveIncarnations.set(inc.id, inc);
        if (!server) v(`incarnation ${inc.id}: its server ${inc.serverId} does not exist`);
        else if (server.state !== 'allocated') v(`incarnation ${inc.id}: live on server ${server.id} which is ${server.state}`);
        else if (agentView.has(server.id) && !agentView.get(server.id)!.has(inc.id))
          v(`incarnation ${inc.id}: live in the inventory but its agent (server ${server.id}) does not have it`);
        const placed = vms.filter((vm) => vm.incarnationId === inc.id).reduce((acc, vm) => sum(acc, vm.spec), { vcpus: 0, memoryMiB: 0, diskGiB: 0 });
        if (!same(placed, inc.allocated)) v(`incarnation ${inc.id}: allocated ${fmt(inc.allocated)} but its running VMs sum to ${fmt(placed)}`);
        if (!same(sum(inc.allocated, inc.available), inc.capacity))
          v(`incarnation ${inc.id}: allocated ${fmt(inc.allocated)} + available ${fmt(inc.available)} ≠ capacity ${fmt(inc.capacity)}`);
      } else {
        const incJobs = jobsByIncarnation.get(inc.id) ?? [];
        const pending = incJobs.some((j) => j.state === 'pending');
        const done = incJobs.some((j) => j.state === 'done');
        if (!pending && !done) {
          // A clone deleted by a rollback is torn down by the workflow itself, not the scheduler: it must be gone from its agent.
          if (inc.role === 'primary') v(`incarnation ${inc.id}: deleted without a de-provisioning outbox row (server ${inc.serverId})`);
        }
        if (!pending && agentView.get(inc.serverId)?.has(inc.id))
          v(`incarnation ${inc.id}: deleted${done ? ' and de-provisioned' : ''} but still present on the agent of server ${inc.serverId}`);
      }
    }
    if (host.state === 'active' && !liveIncarnations.has(host.currentIncarnationId))
      v(`host ${host.id}: its current incarnation ${host.currentIncarnationId} is not live`);
    for (const vm of vms) {
      runningVmIds.add(vm.id);
      const inc = liveIncarnations.get(vm.incarnationId);
      if (!inc) {
        v(`vm ${vm.id}: running on incarnation ${vm.incarnationId}, which is not live`);
        continue;
      }
      if (!agentView.has(inc.serverId)) continue; // agent unreachable (reported) or skipped
      const at = vmLocations.get(vm.id) ?? [];
      if (at.length === 0) v(`vm ${vm.id}: running in the inventory (server ${inc.serverId}) but no agent has it (lost)`);
      else if (at.length > 1) v(`vm ${vm.id}: runs ${at.length} times (${at.map((l) => `${l.serverId}/${l.incarnationId}`).join(', ')})`);
      else if (at[0]!.serverId !== inc.serverId || at[0]!.incarnationId !== inc.id)
        v(`vm ${vm.id}: the inventory places it on ${inc.serverId}/${inc.id} but it runs on ${at[0]!.serverId}/${at[0]!.incarnationId}`);
    }

    // --- migrations: a host that is migrating has a running migration (and workflow) ---------------------------
    if (host.state === 'migrating') {
      if (!host.migrationId) v(`host ${host.id}: migrating without a migration id`);
      else {
        const m = await inventory.getMigration(host.migrationId).catch(() => null);
        if (!m) v(`host ${host.id}: migrating under ${host.migrationId}, which the inventory does not know`);
        else if (m.state !== 'running') v(`host ${host.id}: still migrating but its migration ${m.id} ended (${m.state})`);
      }
      if (input.temporal) {
        try {
          const d = await input.temporal.workflow.getHandle(migrationWorkflowId(host.id)).describe();
          if (d.status.name !== 'RUNNING') v(`host ${host.id}: still migrating but its workflow ${d.workflowId} is ${d.status.name}`);
        } catch (err) {
          v(`host ${host.id}: still migrating but its workflow cannot be found (${(err as Error).message})`);
        }
      }
    }
  }

  // --- agents run nothing the inventory does not have --------------------------------------------------------
  for (const [vmId, at] of vmLocations)
    if (!runningVmIds.has(vmId))
      v(`vm ${vmId}: runs on ${at.map((l) => `${l.serverId}/${l.incarnationId}`).join(', ')} but the inventory has no running VM of that id (leak)`);
  for (const [serverId, incs] of agentView)
    for (const incId of incs.keys()) {
      const inc = liveIncarnations.get(incId);
      if (inc && inc.serverId !== serverId) v(`incarnation ${incId}: on the agent of server ${serverId} but the inventory places it on ${inc.serverId}`);
      // Deleted incarnations still on an agent were reported above; anything else is unknown to the inventory.
      if (!inc && !knownIncarnations.has(incId)) v(`incarnation ${incId}: on the agent of server ${serverId} but unknown to the inventory (leak)`);
    }

  // --- servers --------------------------------------------------------------------------------------------------
  const liveOnServer = new Set([...liveIncarnations.values()].map((i) => i.serverId));
  for (const s of servers) {
    if (s.reservedByMigration) {
      const m = await inventory.getMigration(s.reservedByMigration).catch(() => null);
      if (!m || m.state !== 'running')
        v(`server ${s.id}: ${s.state} for migration ${s.reservedByMigration}, which is ${m ? m.state : 'unknown'} (leaked reservation)`);
    } else if (s.state === 'reserved') v(`server ${s.id}: reserved without a migration holding it`);
    if (s.state === 'allocated' && !s.reservedByMigration && !liveOnServer.has(s.id)) v(`server ${s.id}: allocated with no live incarnation on it (leak)`);
    if (s.state === 'deprovisioning' && !jobs.some((j) => j.serverId === s.id && j.state === 'pending'))
      v(`server ${s.id}: deprovisioning without a pending outbox row`);
  }

  return {
    ok: violations.length === 0,
    violations,
    lostVms,
    checked: { hosts: hosts.length, vms: vmCount, servers: servers.length, incarnations: incarnationCount, agents: agentsAsked },
  };
}

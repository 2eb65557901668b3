import * as path from 'node:path';
import type { Logger } from 'pino';
import type { Fleet, FleetServer } from '../common/fleet';
import type { Metrics } from '../common/metrics';
import { startAgent, type RunningAgent } from './agent-service';
import type { AgentServerTls } from './agent-tls';
import type { QemuAgentOptions } from './qemu/create';

export interface FleetAgentsOptions {
  timeScale: number;
  /** Each server's certificates (`AgentPki.server`, or read from a folder per server): an agent never starts without them. */
  tls: (serverId: string) => AgentServerTls;
  /** The agents' fault-injection routes (tests' stacks only). Default off. */
  faultRoutes?: boolean;
  logger: Logger;
  /** Which servers get an agent here. Default: those whose backend is `sim` (`qemu` ones start real VMs: opt in). */
  backendFilter?: (server: FleetServer) => boolean;
  streamCapFraction?: number;
  /** Address the agents bind (default loopback; `0.0.0.0` in a container) and the host name others reach them by. */
  host?: string;
  advertiseHost?: string;
  metrics?: Metrics;
  /**
   * Options for the agents of `qemu` servers. `stateDir` is a root here: each server's agent gets `<stateDir>/<serverId>`
   * (one folder per agent: an agent removes its own folder when it stops).
   */
  qemu?: QemuAgentOptions;
}

export interface FleetAgents {
  agents: Map<string, Pick<RunningAgent, 'url' | 'stop' | 'bootId' | 'serverId' | 'ready'>>;
  stop(): Promise<void>;
}

/** Starts one host agent (the server's backend) per fleet server, each on the server's `agentPort` (0 = any free port). */
export async function startFleetAgents(fleet: Fleet, opts: FleetAgentsOptions): Promise<FleetAgents> {
  const filter = opts.backendFilter ?? ((s: FleetServer) => s.backend === 'sim');
  const agents = new Map<string, RunningAgent>();
  const stop = async () => {
    await Promise.all([...agents.values()].map((a) => a.stop()));
  };
  // Every agent's certificates first: a missing one is refused before any agent binds.
  const creds = new Map(fleet.servers.filter(filter).map((s) => [s.id, opts.tls(s.id)]));
  try {
    for (const server of fleet.servers) {
      if (!filter(server)) {
        opts.logger.info({ serverId: server.id, backend: server.backend }, 'no agent started here for this server');
        continue;
      }
      agents.set(
        server.id,
        await startAgent({
          serverId: server.id,
          capacity: server.capacity,
          nicBandwidthBps: server.nicBandwidthBps,
          streamCapFraction: opts.streamCapFraction,
          timeScale: opts.timeScale,
          port: server.agentPort,
          ...(opts.host ? { host: opts.host } : {}),
          ...(opts.advertiseHost ? { advertiseHost: opts.advertiseHost } : {}),
          ...(opts.metrics ? { metrics: opts.metrics } : {}),
          tls: creds.get(server.id)!,
          ...(opts.faultRoutes ? { faultRoutes: true } : {}),
          backend: server.backend,
          ...(server.networkStorage !== undefined ? { networkStorage: server.networkStorage } : {}),
          qemu: server.backend === 'qemu' ? qemuOptionsFor(server, opts.qemu, fleet) : undefined,
          logger: opts.logger,
        }),
      );
    }
  } catch (err) {
    await stop(); // no half-started fleet left listening
    throw err;
  }
  return { agents, stop };
}

/** Each server's own state folder under a common root; the fleet's storage service (network disks) for all. */
function qemuOptionsFor(server: FleetServer, qemu: QemuAgentOptions | undefined, fleet: Fleet): QemuAgentOptions | undefined {
  const nbd = fleet.storage?.nbd;
  const withStorage = nbd && !qemu?.networkStorage ? { ...qemu, networkStorage: { host: nbd.host, port: nbd.port, serverName: nbd.serverName } } : qemu;
  if (!withStorage?.stateDir) return withStorage;
  return { ...withStorage, stateDir: path.join(withStorage.stateDir, server.id) };
}

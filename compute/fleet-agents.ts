import * as path from 'node:path';
import type { Logger } from 'pino';
import type { Fleet, FleetServer } from '../common/fleet';
import type { Metrics } from '../common/metrics';
import { startAgent, type RunningAgent } from './agent-service';
import type { QemuAgentOptions } from './qemu/create';

export interface FleetAgentsOptions {
  timeScale: number;
  secret?: string;
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
  agents: Map<string, Pick<RunningAgent, 'url' | 'stop' | 'bootId' | 'serverId'>>;
  stop(): Promise<void>;
}

/** Starts one host agent (the server's backend) per fleet server, each on the server's `agentPort` (0 = any free port). */
export async function startFleetAgents(fleet: Fleet, opts: FleetAgentsOptions): Promise<FleetAgents> {
  const filter = opts.backendFilter ?? ((s: FleetServer) => s.backend === 'sim');
  const agents = new Map<string, RunningAgent>();
  const stop = async () => {
    await Promise.all([...agents.values()].map((a) => a.stop()));
  };
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
          secret: opts.secret,
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

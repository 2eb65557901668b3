import type { AgentDirectory } from '../compute/agent-directory';
import type { ServerIncarnation } from './migration-steps';

/** How long the dirty-rate sample before a move lasts (QEMU's calc-dirty-rate calc-time, whole seconds there). */
export const DIRTY_RATE_SAMPLE_MS = 1_000;
/** How long the source's link is probed, once per agent (its answer is cached there). */
export const LINK_SAMPLE_MS = 1_000;

/**
 * The measurements the workflow decides a move's settings from (workflows/scheduler.ts): read-only on the agents, so
 * idempotent; null when the agent's backend cannot measure (the workflow falls back on the declared hint).
 */
export function createMeasurements({ agents }: { agents: AgentDirectory }) {
  return {
    /** The source server's link: the NIC's bandwidth and one migration stream's measured throughput, bytes/s. */
    async measureLink(input: { from: ServerIncarnation }): Promise<{ nicBytesPerSec: number; streamBytesPerSec: number } | null> {
      const source = await agents.forServer(input.from.serverId);
      const m = await source.measureLink(LINK_SAMPLE_MS);
      return m ? { nicBytesPerSec: m.nicBytesPerSec, streamBytesPerSec: m.streamBytesPerSec } : null;
    },

    /** The VM's dirty rate, sampled on its source just before its move, bytes/s. */
    async measureDirtyRate(input: { vmId: string; from: ServerIncarnation }): Promise<{ dirtyRateBps: number } | null> {
      const source = await agents.forServer(input.from.serverId);
      const m = await source.measureDirtyRate(input.vmId, DIRTY_RATE_SAMPLE_MS);
      return m ? { dirtyRateBps: m.dirtyRateBps } : null;
    },
  };
}

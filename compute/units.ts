/**
 * Units used by the compute plane. The fleet file and `AgentInfo.nicBandwidthBps` speak bits per second (how NICs
 * are sold); everything inside the migration model, and every rate in a `MigrationJob`, is bytes per second.
 * Converting happens once, where an agent starts (`bitsToBytesPerSec`).
 */
export const MIB = 2 ** 20;

export function bitsToBytesPerSec(bitsPerSec: number): number {
  return bitsPerSec / 8;
}

export function mibToBytes(mib: number): number {
  return mib * MIB;
}

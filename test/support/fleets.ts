import type { Fleet } from '../../common/fleet';

/** A small fleet for tests: `servers` servers of one class per zone, 10 Gbit/s NICs. */
export function testFleet(opts: { servers?: number; zones?: string[]; withBigServer?: boolean } = {}): Fleet {
  const zones = opts.zones ?? ['zone-a'];
  const n = opts.servers ?? 4;
  const std = { vcpus: 32, memoryMiB: 65536, diskGiB: 1000 };
  const servers: Fleet['servers'] = [];
  for (const zone of zones) {
    for (let i = 1; i <= n; i++) {
      servers.push({ id: `${zone}-std-${i}`, zone, resourceClass: 'std', capacity: std, nicBandwidthBps: 10e9, agentPort: 0, backend: 'sim' });
    }
  }
  const large = { vcpus: 512, memoryMiB: 262144, diskGiB: 4000 };
  for (let i = 1; i <= 2; i++) {
    servers.push({
      id: `${zones[0]}-large-${i}`,
      zone: zones[0]!,
      resourceClass: 'large',
      capacity: large,
      nicBandwidthBps: 10e9,
      agentPort: 0,
      backend: 'sim',
    });
  }
  servers.push({
    id: `${zones[0]}-small-1`,
    zone: zones[0]!,
    resourceClass: 'small',
    capacity: { vcpus: 8, memoryMiB: 16384, diskGiB: 200 },
    nicBandwidthBps: 10e9,
    agentPort: 0,
    backend: 'sim',
  });
  return {
    zones,
    resourceClasses: { std, large, small: { vcpus: 8, memoryMiB: 16384, diskGiB: 200 } },
    servers,
  };
}

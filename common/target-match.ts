import { fits, shortfall, type Resources } from './resources';

/**
 * Why a server cannot be a dedicated host's migration target (claim 2: same zone and resource class, at least the
 * host's resources, not the server it runs on), or null when it can. Availability is the caller's concern: the API
 * answers it with 409, the inventory decides it under the server's row lock.
 */
export function targetMismatch(
  host: { zone: string; resourceClass: string; capacity: Resources },
  server: { id: string; zone: string; resourceClass: string; capacity: Resources },
  sourceServerId: string,
): string | null {
  if (server.id === sourceServerId) return 'is the source server of this migration';
  if (server.zone !== host.zone) return `is in zone ${server.zone}, the host is in zone ${host.zone}`;
  if (server.resourceClass !== host.resourceClass) return `is of resource class ${server.resourceClass}, the host is ${host.resourceClass}`;
  if (!fits(host.capacity, server.capacity)) {
    const k = shortfall(host.capacity, server.capacity)!;
    return `is too small: ${k} ${server.capacity[k]} < the host's ${host.capacity[k]}`;
  }
  return null;
}

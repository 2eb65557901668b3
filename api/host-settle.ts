import { InventoryError } from '../inventory/errors';

/**
 * Waits for a host that is ending its migration to be active again (a tenant request that met the migration's last
 * moments is then retried on the normal path). Reads back off from 10 ms, doubling to 500 ms: the host usually turns
 * active within a few ms of the migration's last commit and the tenant is waiting, but a host that stays migrating is
 * read twice a second, not 50 times a second per waiting request. WRONG_STATE naming the host once `timeoutMs` passes.
 */
export async function waitUntilHostActive<H extends { state: string }>(
  getHost: (dedicatedHostId: string) => Promise<H>,
  dedicatedHostId: string,
  timeoutMs: number,
): Promise<H> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 10; ; delay = Math.min(delay * 2, 500)) {
    const host = await getHost(dedicatedHostId);
    if (host.state === 'active') return host;
    if (Date.now() > deadline) throw new InventoryError('WRONG_STATE', `host ${dedicatedHostId} is still migrating; try again later`, 'dedicatedHostId');
    await new Promise((r) => setTimeout(r, Math.min(delay, Math.max(1, deadline - Date.now()))));
  }
}

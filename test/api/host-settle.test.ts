import { waitUntilHostActive } from '../../api/host-settle';
import { InventoryError } from '../../inventory/errors';

/** A host that reads as migrating until `activeAfterMs`, counting its reads (the inventory's getHost, faked). */
function hostTurningActive(activeAfterMs: number) {
  const start = Date.now();
  const reads: number[] = [];
  const getHost = async (id: string) => {
    reads.push(Date.now() - start);
    return { id, state: Date.now() - start >= activeAfterMs ? 'active' : 'migrating' };
  };
  return { getHost, reads };
}

describe('a request that meets the end of a migration waits for the host with backoff (issue 20)', () => {
  test('reads back off to 500 ms and return the host soon after it turns active', async () => {
    const { getHost, reads } = hostTurningActive(1_500);
    const started = Date.now();
    const host = await waitUntilHostActive(getHost, 'dh-1', 10_000);
    const waited = Date.now() - started;
    expect(host.state).toBe('active');
    // 10, 20, 40, … ms doubling to 500: ~9 reads in 1.5 s; a fixed 20 ms poll would have made ~75.
    expect(reads.length).toBeLessThanOrEqual(12);
    expect(reads.length).toBeGreaterThanOrEqual(5);
    // The gaps grow and never pass the 500 ms cap (plus timer slack).
    const gaps = reads.slice(1).map((t, i) => t - reads[i]!);
    expect(Math.max(...gaps)).toBeLessThan(700);
    expect(gaps.at(-1)!).toBeGreaterThan(gaps[0]!);
    expect(waited).toBeLessThan(1_500 + 700);
  });

  test('a host that stays migrating is refused WRONG_STATE naming the host after the timeout, its reads bounded', async () => {
    const { getHost, reads } = hostTurningActive(Number.POSITIVE_INFINITY);
    const err = await waitUntilHostActive(getHost, 'dh-2', 1_200).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InventoryError);
    expect((err as InventoryError).code).toBe('WRONG_STATE');
    expect((err as InventoryError).field).toBe('dedicatedHostId');
    expect(String((err as Error).message)).toContain('dh-2');
    expect(reads.length).toBeLessThanOrEqual(11);
  });
});

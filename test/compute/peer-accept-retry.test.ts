import type { IncomingView } from '../../compute/agent-api';
import { AgentError } from '../../compute/agent-http';
import { ACCEPT_RETRY_BACKOFF_MS, acceptWithRetries, type PeerClient } from '../../compute/peer-client';

/**
 * The source's accept call to the target is tried again on a timeout, a lost connection or a 5xx (the target's
 * accept is idempotent by job id), a bounded number of times; a refusal ends it at once. A fake peer through the
 * PeerClient interface counts the calls (unit test).
 */
const view = { jobId: 'j', vmId: 'v', state: 'reserved' } as unknown as IncomingView;
const body = { vmId: 'v', incarnationId: 'i', spec: { vcpus: 1, memoryMiB: 128, diskGiB: 1 }, sourceServerId: 's' };
const timeout = () => new AgentError({ status: 0, code: 'TIMEOUT', message: 'no reply within 5000 ms' });

function peer(results: Array<IncomingView | Error>): PeerClient & { calls: number } {
  const p = {
    calls: 0,
    accept: async () => {
      const r = results[Math.min(p.calls++, results.length - 1)]!;
      if (r instanceof Error) throw r;
      return r;
    },
    commit: async () => {
      throw new Error('not used');
    },
    release: async () => undefined,
  };
  return p;
}

test('a slow or dropped target is asked again (the accept is idempotent) and the move goes on', async () => {
  const p = peer([timeout(), new Error('socket hang up'), view]);
  const retried: unknown[] = [];
  const t0 = Date.now();
  expect(await acceptWithRetries(p, 'https://t', 'j', body, (e) => retried.push(e))).toBe(view);
  expect(p.calls).toBe(3);
  expect(retried).toHaveLength(2);
  expect(Date.now() - t0).toBeGreaterThanOrEqual(ACCEPT_RETRY_BACKOFF_MS[0]! + ACCEPT_RETRY_BACKOFF_MS[1]! - 20);
});

test('a 5xx is retried too; a refusal (4xx) is final at once', async () => {
  expect(await acceptWithRetries(peer([new AgentError({ status: 503, code: 'AGENT_UNAVAILABLE', message: 'busy' }), view]), 'https://t', 'j', body)).toBe(view);
  const refused = peer([new AgentError({ status: 409, code: 'INSUFFICIENT_CAPACITY', message: 'no room' }), view]);
  await expect(acceptWithRetries(refused, 'https://t', 'j', body)).rejects.toMatchObject({ status: 409 });
  expect(refused.calls).toBe(1);
  const forbidden = peer([new AgentError({ status: 403, code: 'FORBIDDEN', message: 'not expected', retryable: false }), view]);
  await expect(acceptWithRetries(forbidden, 'https://t', 'j', body)).rejects.toMatchObject({ status: 403 });
  expect(forbidden.calls).toBe(1);
});

test('a target that never answers fails the accept after a bounded number of attempts', async () => {
  const p = peer([timeout()]);
  await expect(acceptWithRetries(p, 'https://t', 'j', body)).rejects.toMatchObject({ code: 'TIMEOUT' });
  expect(p.calls).toBe(ACCEPT_RETRY_BACKOFF_MS.length + 1);
});

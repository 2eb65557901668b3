import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { createLogger } from '../../common/logger';
import { startAgent } from '../../compute/agent-service';
import { DEFAULT_LISTEN_WAIT_MS, qemuAgentOptionsSchema } from '../../compute/qemu/create';
import { measureDirtyRate } from '../../compute/qemu/dirty-rate';
import { EventWake } from '../../compute/qemu/event-wake';
import { probeGuest } from '../../compute/qemu/guest-nic';
import type { QmpEvent } from '../../compute/qemu/qmp';

/**
 * The qemu backend's waits that sit on a move's critical path (unit level, no QEMU): the poll loop's sleep that QEMU's
 * events cut short, and the probe of a guest that just arrived, which must not hang on one lost connection attempt.
 */

const logger = createLogger('qemu-waits-test', 'silent');
const event = (name: string, data: Record<string, unknown> = {}): QmpEvent => ({ event: name, data, timeMs: Date.now() }) as QmpEvent;

describe('EventWake', () => {
  test('a watched event ends the sleep at once; an unwatched one does not', async () => {
    const src = new EventEmitter();
    const wake = new EventWake(src as never, new Set(['MIGRATION']));
    const t0 = Date.now();
    setTimeout(() => src.emit('event', event('BLOCK_JOB_READY')), 20);
    setTimeout(() => src.emit('event', event('MIGRATION', { status: 'pre-switchover' })), 150);
    await wake.sleep(5_000);
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(140); // not the unwatched event at 20 ms
    expect(took).toBeLessThan(1_000); // not the 5 s interval
    wake.close();
  });

  test('an event seen while nobody slept ends the next sleep at once; without one the interval runs out', async () => {
    const src = new EventEmitter();
    const wake = new EventWake(src as never, new Set(['MIGRATION']));
    src.emit('event', event('MIGRATION', { status: 'completed' }));
    const t0 = Date.now();
    await wake.sleep(5_000);
    expect(Date.now() - t0).toBeLessThan(100);
    const t1 = Date.now();
    await wake.sleep(120); // the event was used up: the full interval
    expect(Date.now() - t1).toBeGreaterThanOrEqual(110);
    wake.close();
    expect(src.listenerCount('event')).toBe(0);
  });
});

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** A guest counter service that comes up `afterMs` from now and answers each probe after `answerMs`. */
function lateService(port: number, afterMs: number, answerMs: number) {
  let connections = 0;
  const server = net.createServer((sock) => {
    connections++;
    sock.on('data', () => setTimeout(() => sock.end('probe 42\n'), answerMs));
    sock.on('error', () => undefined);
  });
  const up = new Promise<void>((resolve) => setTimeout(() => server.listen(port, '127.0.0.1', resolve), afterMs));
  return { up, connections: () => connections, close: () => new Promise<void>((r) => server.close(() => r())) };
}

describe('probeGuest', () => {
  test('a service that comes up after the first attempt is reached soon after it does, over one connection', async () => {
    const port = await freePort();
    const svc = lateService(port, 400, 300);
    const t0 = Date.now();
    const counter = await probeGuest('127.0.0.1', 3_000, { port, attemptMs: 100 });
    const took = Date.now() - t0;
    await svc.close();
    expect(counter).toBe(42);
    // Up at 400 ms, answered 300 ms after the connection: the attempts' interval adds at most ~100 ms.
    expect(took).toBeGreaterThanOrEqual(690);
    expect(took).toBeLessThan(1_100);
    // Once connected, no further connection was opened while the answer was awaited.
    expect(svc.connections()).toBe(1);
  });

  test('until the handshake: a service that is slow to answer counts once its socket accepts', async () => {
    const port = await freePort();
    const svc = lateService(port, 0, 5_000);
    await svc.up;
    const t0 = Date.now();
    expect(await probeGuest('127.0.0.1', 3_000, { port, until: 'handshake' })).toBeNull();
    expect(Date.now() - t0).toBeLessThan(500); // not the 5 s its answer takes
    await svc.close();
  });

  test('nothing listening: rejects after the timeout, naming the address and the last error', async () => {
    const port = await freePort();
    const t0 = Date.now();
    const err = await probeGuest('127.0.0.1', 400, { port, attemptMs: 100 }).catch((e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(new RegExp(`no answer from 127\\.0\\.0\\.1:${port} within 400 ms \\(.*ECONNREFUSED`));
    expect(Date.now() - t0).toBeGreaterThanOrEqual(390);
  });
});

describe('qemu.listenWaitMs', () => {
  test('out of range: the agent refuses to start, naming the field; in range and by default it parses', async () => {
    const base = {
      tls: undefined as never,
      serverId: 'lw-1',
      capacity: { vcpus: 4, memoryMiB: 1024, diskGiB: 10 },
      nicBandwidthBps: 1e9,
      backend: 'qemu' as const,
      logger,
    };
    for (const bad of [500, 1.5e3 + 0.5, 700_000]) await expect(startAgent({ ...base, qemu: { listenWaitMs: bad } })).rejects.toThrow(/qemu\.listenWaitMs: /);
    expect(qemuAgentOptionsSchema.parse({}).listenWaitMs).toBe(DEFAULT_LISTEN_WAIT_MS);
    expect(qemuAgentOptionsSchema.parse({ listenWaitMs: 120_000 }).listenWaitMs).toBe(120_000);
  });
});

describe('measureDirtyRate', () => {
  /** QMP as measureDirtyRate uses it: calc-dirty-rate, then query-dirty-rate answering `statuses` in turn. */
  const fakeQmp = (statuses: string[]) => {
    let i = 0;
    return {
      execute: (cmd: string) => Promise.resolve(cmd === 'query-dirty-rate' ? { status: statuses[Math.min(i++, statuses.length - 1)], 'dirty-rate': 6 } : {}),
    } as never;
  };

  test('a measurement QEMU has not started yet (unstarted, on a loaded host) is waited for, not failed', async () => {
    const r = await measureDirtyRate(fakeQmp(['unstarted', 'unstarted', 'measuring', 'measured']), 200);
    expect(r.dirtyRateBps).toBe(6 * 2 ** 20);
  });

  test('any other status is an error naming it', async () => {
    await expect(measureDirtyRate(fakeQmp(['unstarted', 'bogus']), 200)).rejects.toThrow(/unexpected status bogus/);
  });
});

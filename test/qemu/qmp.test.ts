import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { QmpClient, QmpError, type QmpEvent } from '../../compute/qemu/qmp';

/**
 * The QMP client against a fake QEMU on a UNIX socket: greeting, capabilities, commands by id, events, timeouts,
 * and a socket that closes or never appears.
 */

interface FakeQmp {
  socketPath: string;
  received: Array<{ execute?: string; 'exec-oob'?: string; arguments?: Record<string, unknown>; id?: unknown }>;
  connections: net.Socket[];
  close(): Promise<void>;
}

const GREETING = { QMP: { version: { qemu: { major: 10, minor: 0, micro: 2 }, package: 'fake' }, capabilities: ['oob'] } };

/** Commands: echo (returns its arguments), fail (GenericError), slow (answers after `ms`), never, emit (an event, then {}), hangup. */
function startFake(socketPath: string): Promise<FakeQmp> {
  const received: FakeQmp['received'] = [];
  const connections: net.Socket[] = [];
  const server = net.createServer((sock) => {
    connections.push(sock);
    const send = (msg: unknown) => sock.write(JSON.stringify(msg) + '\r\n');
    send(GREETING);
    let buf = '';
    sock.on('data', (chunk) => {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const req = JSON.parse(buf.slice(0, nl)) as FakeQmp['received'][number];
        buf = buf.slice(nl + 1);
        received.push(req);
        const args = req.arguments ?? {};
        switch (req.execute ?? req['exec-oob']) {
          case 'qmp_capabilities':
            send({ return: {}, id: req.id });
            break;
          case 'echo':
            send({ return: args, id: req.id });
            break;
          case 'fail':
            send({ error: { class: 'GenericError', desc: 'it went wrong' }, id: req.id });
            break;
          case 'slow':
            setTimeout(() => !sock.destroyed && send({ return: { late: true }, id: req.id }), Number(args.ms));
            break;
          case 'never':
            break;
          case 'emit':
            send({ event: String(args.name), data: { n: args.n }, timestamp: { seconds: 1700000000, microseconds: 250000 } });
            send({ return: {}, id: req.id });
            break;
          case 'hangup':
            sock.destroy();
            break;
          default:
            send({ error: { class: 'CommandNotFound', desc: `The command ${req.execute} has not been found` }, id: req.id });
        }
      }
    });
    sock.on('error', () => undefined);
  });
  return new Promise((resolve) => {
    server.listen(socketPath, () =>
      resolve({
        socketPath,
        received,
        connections,
        close: () =>
          new Promise<void>((r) => {
            for (const c of connections) c.destroy();
            server.close(() => r());
          }),
      }),
    );
  });
}

let dir: string;
let fake: FakeQmp | null = null;
const clients: QmpClient[] = [];
const track = (c: QmpClient) => (clients.push(c), c);

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-qmp-'));
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await fake?.close();
  fake = null;
  fs.rmSync(dir, { recursive: true, force: true });
});

test('connects, reads the greeting and negotiates capabilities', async () => {
  fake = await startFake(path.join(dir, 'q.sock'));
  const qmp = track(await QmpClient.connect({ socketPath: fake.socketPath }));
  expect(qmp.greeting.version.qemu).toEqual({ major: 10, minor: 0, micro: 2 });
  expect(fake.received[0]).toMatchObject({ execute: 'qmp_capabilities' });
  expect(await qmp.execute('echo', { a: 1, b: 'x' })).toEqual({ a: 1, b: 'x' });
});

test('out-of-band: negotiated only when asked and offered; executeOob then sends exec-oob, else runs in band', async () => {
  fake = await startFake(path.join(dir, 'q.sock'));
  const plain = track(await QmpClient.connect({ socketPath: fake.socketPath }));
  expect(fake.received[0]).toEqual({ execute: 'qmp_capabilities', id: expect.anything() });
  expect(plain.oob).toBe(false);
  expect(await plain.executeOob('echo', { n: 1 })).toEqual({ n: 1 });
  expect(fake.received.at(-1)).toMatchObject({ execute: 'echo' });
  const oob = track(await QmpClient.connect({ socketPath: fake.socketPath, oob: true }));
  expect(fake.received.at(-1)).toMatchObject({ execute: 'qmp_capabilities', arguments: { enable: ['oob'] } });
  expect(oob.oob).toBe(true);
  expect(await oob.executeOob('echo', { n: 2 })).toEqual({ n: 2 });
  expect(fake.received.at(-1)).toMatchObject({ 'exec-oob': 'echo', arguments: { n: 2 } });
  expect(fake.received.at(-1)).not.toHaveProperty('execute');
});

test('retries the first connect while the socket file does not exist yet', async () => {
  const socketPath = path.join(dir, 'late.sock');
  const started = Date.now();
  const connecting = QmpClient.connect({ socketPath, connectTimeoutMs: 5_000, retryIntervalMs: 10 });
  await new Promise((r) => setTimeout(r, 300)); // the scenario itself: the socket appears late (not a stand-in for a condition)
  fake = await startFake(socketPath);
  const qmp = track(await connecting);
  expect(Date.now() - started).toBeGreaterThanOrEqual(300);
  expect(await qmp.execute('echo', { ok: true })).toEqual({ ok: true });
});

test('gives up connecting after the timeout, and at once when aborted', async () => {
  const socketPath = path.join(dir, 'never.sock');
  let t = Date.now();
  await expect(QmpClient.connect({ socketPath, connectTimeoutMs: 300 })).rejects.toMatchObject({ name: 'QmpError', code: 'CONNECT' });
  expect(Date.now() - t).toBeLessThan(2_000);

  const abort = new AbortController();
  t = Date.now();
  const connecting = QmpClient.connect({ socketPath, connectTimeoutMs: 60_000, signal: abort.signal });
  setTimeout(() => abort.abort(new Error('QEMU exited')), 100);
  await expect(connecting).rejects.toThrow(/QEMU exited/);
  expect(Date.now() - t).toBeLessThan(1_000);
});

test("QEMU's errors reject with their class; unknown commands too", async () => {
  fake = await startFake(path.join(dir, 'q.sock'));
  const qmp = track(await QmpClient.connect({ socketPath: fake.socketPath }));
  await expect(qmp.execute('fail')).rejects.toMatchObject({ code: 'COMMAND', qmpClass: 'GenericError', message: 'fail: it went wrong' });
  await expect(qmp.execute('bogus')).rejects.toMatchObject({ code: 'COMMAND', qmpClass: 'CommandNotFound' });
  expect(await qmp.execute('echo', { still: 'works' })).toEqual({ still: 'works' });
});

test('replies are matched to commands by id, whatever order they come in', async () => {
  fake = await startFake(path.join(dir, 'q.sock'));
  const qmp = track(await QmpClient.connect({ socketPath: fake.socketPath }));
  const slow = qmp.execute('slow', { ms: 150 });
  const fast = qmp.execute('echo', { fast: true });
  expect(await fast).toEqual({ fast: true });
  expect(await slow).toEqual({ late: true });
});

test('a command without a reply times out; the connection stays usable and the late reply is dropped', async () => {
  fake = await startFake(path.join(dir, 'q.sock'));
  const qmp = track(await QmpClient.connect({ socketPath: fake.socketPath }));
  const t = Date.now();
  await expect(qmp.execute('slow', { ms: 300 }, { timeoutMs: 100 })).rejects.toMatchObject({ code: 'TIMEOUT' });
  expect(Date.now() - t).toBeLessThan(250);
  await new Promise((r) => setTimeout(r, 300)); // the late reply arrives now and must not resolve anything else
  expect(await qmp.execute('echo', { n: 2 })).toEqual({ n: 2 });
});

test('events: emitted, iterated, awaited', async () => {
  fake = await startFake(path.join(dir, 'q.sock'));
  const qmp = track(await QmpClient.connect({ socketPath: fake.socketPath }));
  const seen: QmpEvent[] = [];
  qmp.on('event', (e) => seen.push(e));

  const iterated: string[] = [];
  const iterating = (async () => {
    for await (const e of qmp.events()) {
      iterated.push(`${e.event}:${String(e.data.n)}`);
      if (iterated.length === 2) break;
    }
  })();
  const resume = qmp.waitForEvent('RESUME', { timeoutMs: 2_000 });
  await qmp.execute('emit', { name: 'STOP', n: 1 });
  await qmp.execute('emit', { name: 'RESUME', n: 2 });
  expect((await resume).data).toEqual({ n: 2 });
  await iterating;
  expect(iterated).toEqual(['STOP:1', 'RESUME:2']);
  expect(seen[0]).toEqual({ event: 'STOP', data: { n: 1 }, timeMs: 1700000000250 });
  await expect(qmp.waitForEvent('NEVER', { timeoutMs: 50 })).rejects.toMatchObject({ code: 'TIMEOUT' });
});

test('a closed socket fails pending and later calls at once, never hangs', async () => {
  fake = await startFake(path.join(dir, 'q.sock'));
  const qmp = track(await QmpClient.connect({ socketPath: fake.socketPath, commandTimeoutMs: 60_000 }));
  const closed = new Promise<Error | undefined>((r) => qmp.once('close', r));
  const pending = qmp.execute('never');
  const waiting = qmp.waitForEvent('RESUME', { timeoutMs: 60_000 });
  const iterating = (async () => {
    const got: QmpEvent[] = [];
    for await (const e of qmp.events()) got.push(e);
    return got;
  })();
  const t = Date.now();
  await expect(qmp.execute('hangup')).rejects.toMatchObject({ code: 'CLOSED' });
  await expect(pending).rejects.toMatchObject({ code: 'CLOSED' });
  await expect(waiting).rejects.toMatchObject({ code: 'CLOSED' });
  expect(await iterating).toEqual([]);
  expect(await closed).toBeInstanceOf(QmpError);
  expect(qmp.closed).toBe(true);
  await expect(qmp.execute('echo')).rejects.toMatchObject({ code: 'CLOSED' });
  expect(Date.now() - t).toBeLessThan(1_000);
});

test('something that is not QMP is refused', async () => {
  const socketPath = path.join(dir, 'bad.sock');
  const server = net.createServer((sock) => sock.write('HTTP/1.1 400 Bad Request\r\n\r\n'));
  await new Promise<void>((r) => server.listen(socketPath, r));
  try {
    await expect(QmpClient.connect({ socketPath, connectTimeoutMs: 1_000 })).rejects.toMatchObject({ code: 'PROTOCOL' });
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
  }
});

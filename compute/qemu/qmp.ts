import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import type { Logger } from 'pino';
import { z } from 'zod';

/**
 * A client for the QEMU Machine Protocol: JSON objects, one per line, over a UNIX socket. On connect QEMU sends a
 * greeting; `qmp_capabilities` leaves negotiation mode; then each command gets exactly one reply, matched here by
 * the `id` we attach, and asynchronous events may arrive in between.
 *
 * (npm's `qemu-qmp` was considered: one release, untyped, no timeouts, no handling of a closed socket.)
 */

export type QmpErrorCode =
  /** The socket is closed (QEMU exited or `close()` was called): calls fail at once, never hang. */
  | 'CLOSED'
  /** No reply within the command's timeout; the socket stays usable and a late reply is dropped. */
  | 'TIMEOUT'
  /** QEMU answered with `{"error": …}`; `qmpClass` holds its class (GenericError, CommandNotFound, …). */
  | 'COMMAND'
  /** The socket never accepted a connection or never greeted within the connect timeout. */
  | 'CONNECT'
  /** Something that is not QMP came over the socket. */
  | 'PROTOCOL';

export class QmpError extends Error {
  override readonly name = 'QmpError';
  constructor(
    readonly code: QmpErrorCode,
    message: string,
    readonly qmpClass?: string,
  ) {
    super(message);
  }
}

const greetingSchema = z.object({
  QMP: z.object({
    version: z.object({
      qemu: z.object({ major: z.number(), minor: z.number(), micro: z.number() }),
      package: z.string().optional(),
    }),
    capabilities: z.array(z.string()),
  }),
});
export type QmpGreeting = z.infer<typeof greetingSchema>['QMP'];

const eventSchema = z.object({
  event: z.string(),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }).optional(),
});
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** QEMU's wall clock when it emitted the event, in ms since the epoch. */
  timeMs: number;
}

const replySchema = z.union([
  z.object({ return: z.unknown(), id: z.unknown().optional() }),
  z.object({ error: z.object({ class: z.string(), desc: z.string() }), id: z.unknown().optional() }),
]);

export interface QmpConnectOptions {
  socketPath: string;
  /** How long to keep retrying while the socket file does not exist yet or refuses, plus the greeting. Default 10 s. */
  connectTimeoutMs?: number;
  /** Pause between connect attempts. Default 20 ms. */
  retryIntervalMs?: number;
  /** Default timeout of `execute`. Default 10 s. */
  commandTimeoutMs?: number;
  /** Aborting stops the connect retries at once (e.g. the QEMU process has exited). */
  signal?: AbortSignal;
  logger?: Logger;
  /**
   * Negotiate out-of-band execution when QEMU offers it (`executeOob`): a destination in post-copy whose vCPU waits on
   * a page that cannot arrive holds the main loop, and only OOB commands (migrate-pause, migrate-recover) still run.
   */
  oob?: boolean;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/** Retryable while the QEMU process is still creating its socket. */
const NOT_YET = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);

/**
 * One QMP connection. Emits `event` (QmpEvent) for each asynchronous event and `close` (Error | undefined) once.
 * Use `QmpClient.connect`; it resolves after the greeting and capabilities negotiation.
 */
export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [Error | undefined] }> {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closedWith: QmpError | null = null;

  private constructor(
    private readonly socket: net.Socket,
    readonly greeting: QmpGreeting,
    private readonly commandTimeoutMs: number,
    private readonly logger: Logger | undefined,
    leftover: string,
  ) {
    super();
    socket.on('data', (chunk: Buffer) => this.onData(chunk.toString('utf8')));
    socket.on('error', (err) => this.shutdown(new QmpError('CLOSED', `QMP socket error: ${err.message}`)));
    socket.on('close', () => this.shutdown(new QmpError('CLOSED', 'QMP socket closed')));
    if (leftover) this.onData(leftover);
  }

  /** Connects (retrying while the socket appears), reads the greeting and negotiates capabilities. */
  static async connect(opts: QmpConnectOptions): Promise<QmpClient> {
    const connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    const deadline = Date.now() + connectTimeoutMs;
    const retryMs = opts.retryIntervalMs ?? 20;
    let attempts = 0;
    for (;;) {
      attempts++;
      if (opts.signal?.aborted) throw new QmpError('CONNECT', `QMP connect to ${opts.socketPath} aborted: ${reason(opts.signal)}`);
      const remaining = deadline - Date.now();
      try {
        const { socket, greeting, leftover } = await openAndGreet(opts.socketPath, Math.max(remaining, 1), opts.signal);
        const client = new QmpClient(socket, greeting, opts.commandTimeoutMs ?? 10_000, opts.logger, leftover);
        try {
          const oob = opts.oob === true && greeting.capabilities.includes('oob');
          await client.execute('qmp_capabilities', oob ? { enable: ['oob'] } : undefined, { timeoutMs: Math.max(deadline - Date.now(), 1_000) });
          client.oob = oob;
        } catch (err) {
          client.close();
          throw err;
        }
        opts.logger?.debug({ socketPath: opts.socketPath, attempts, qemu: greeting.version.qemu }, 'QMP connected');
        return client;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === undefined || !NOT_YET.has(code)) throw err;
        if (Date.now() + retryMs >= deadline)
          throw new QmpError('CONNECT', `QMP socket ${opts.socketPath} not accepting after ${connectTimeoutMs} ms (${code})`);
        await sleep(retryMs, opts.signal);
      }
    }
  }

  /** Out-of-band execution was negotiated (see `QmpConnectOptions.oob`). */
  oob = false;

  get closed(): boolean {
    return this.closedWith !== null;
  }

  /** Runs one command. Rejects with QmpError: COMMAND (QEMU's error), TIMEOUT, or CLOSED (at once if already closed). */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    return this.send<T>('execute', command, args, opts);
  }

  /**
   * Runs a command out of band (`exec-oob`): answered even while the main loop is blocked. Only commands QEMU marks
   * allow-oob (migrate-pause, migrate-recover, ...). Without negotiated OOB it runs in band.
   */
  executeOob<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    return this.send<T>(this.oob ? 'exec-oob' : 'execute', command, args, opts);
  }

  private send<T>(how: 'execute' | 'exec-oob', command: string, args: Record<string, unknown> | undefined, opts: { timeoutMs?: number }): Promise<T> {
    if (this.closedWith) return Promise.reject(new QmpError('CLOSED', `${command}: ${this.closedWith.message}`));
    const id = this.nextId++;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    const label = how === 'exec-oob' ? `${command} (oob)` : command;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpError('TIMEOUT', `${label}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(JSON.stringify({ [how]: command, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
  }

  /** Resolves with the next event named `name` (that `match` accepts), or rejects on timeout or close. */
  waitForEvent(name: string, opts: { timeoutMs: number; match?: (e: QmpEvent) => boolean }): Promise<QmpEvent> {
    if (this.closedWith) return Promise.reject(new QmpError('CLOSED', `waiting for ${name}: ${this.closedWith.message}`));
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (e: QmpEvent) => {
        if (e.event !== name || (opts.match && !opts.match(e))) return;
        done();
        resolve(e);
      };
      const onClose = () => {
        done();
        reject(new QmpError('CLOSED', `waiting for ${name}: QMP socket closed`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new QmpError('TIMEOUT', `no ${name} event within ${opts.timeoutMs} ms`));
      }, opts.timeoutMs);
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /** Events from now on, until the socket closes (the iterator then ends) or the loop breaks. */
  async *events(): AsyncGenerator<QmpEvent, void, undefined> {
    const queue: QmpEvent[] = [];
    let wake: (() => void) | null = null;
    let ended = this.closed;
    const onEvent = (e: QmpEvent) => {
      queue.push(e);
      wake?.();
    };
    const onClose = () => {
      ended = true;
      wake?.();
    };
    this.on('event', onEvent);
    this.on('close', onClose);
    try {
      for (;;) {
        while (queue.length > 0) yield queue.shift()!;
        if (ended) return;
        await new Promise<void>((r) => (wake = r));
        wake = null;
      }
    } finally {
      this.off('event', onEvent);
      this.off('close', onClose);
    }
  }

  close(): void {
    this.shutdown(new QmpError('CLOSED', 'QMP client closed'));
    this.socket.destroy();
  }

  private onData(text: string): void {
    this.buffer += text;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      this.logger?.warn({ line: line.slice(0, 200) }, 'QMP: not JSON; closing');
      this.shutdown(new QmpError('PROTOCOL', `QMP: not JSON: ${line.slice(0, 100)}`));
      this.socket.destroy();
      return;
    }
    const event = eventSchema.safeParse(msg);
    if (event.success) {
      const ts = event.data.timestamp;
      this.emit('event', {
        event: event.data.event,
        data: event.data.data ?? {},
        timeMs: ts ? ts.seconds * 1000 + ts.microseconds / 1000 : Date.now(),
      });
      return;
    }
    const reply = replySchema.safeParse(msg);
    if (!reply.success) {
      this.logger?.warn({ line: line.slice(0, 200) }, 'QMP: unexpected message ignored');
      return;
    }
    const id = typeof reply.data.id === 'number' ? reply.data.id : undefined;
    // Every command we send carries an id; QEMU omits it only for a request it could not parse, answered in order.
    const key = id ?? this.pending.keys().next().value;
    const p = key === undefined ? undefined : this.pending.get(key);
    if (!p) return; // its caller timed out already
    this.pending.delete(key!);
    clearTimeout(p.timer);
    if ('error' in reply.data) p.reject(new QmpError('COMMAND', `${p.command}: ${reply.data.error.desc}`, reply.data.error.class));
    else p.resolve(reply.data.return);
  }

  private shutdown(err: QmpError): void {
    if (this.closedWith) return;
    this.closedWith = err;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new QmpError('CLOSED', `${p.command}: ${err.message}`));
    }
    this.pending.clear();
    this.emit('close', err.message === 'QMP client closed' ? undefined : err);
  }
}

/** Opens the socket and reads the greeting line. Errors keep their errno `code` so the caller can tell "not yet". */
function openAndGreet(
  socketPath: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<{ socket: net.Socket; greeting: QmpGreeting; leftover: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path: socketPath });
    let buffer = '';
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onAbort = () => fail(new QmpError('CONNECT', `QMP connect to ${socketPath} aborted: ${reason(signal!)}`));
    const timer = setTimeout(() => fail(new QmpError('CONNECT', `no QMP greeting on ${socketPath} within ${timeoutMs} ms`)), timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.off('data', onData);
      socket.off('error', fail);
      socket.off('close', onClose);
    };
    const onClose = () => fail(new QmpError('CONNECT', `QMP socket ${socketPath} closed before the greeting`));
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString('utf8');
      const nl = buffer.indexOf('\n');
      if (nl < 0) return;
      let greeting: QmpGreeting;
      try {
        greeting = greetingSchema.parse(JSON.parse(buffer.slice(0, nl))).QMP;
      } catch {
        return fail(new QmpError('PROTOCOL', `${socketPath} did not greet with QMP: ${buffer.slice(0, 100)}`));
      }
      settled = true;
      cleanup();
      resolve({ socket, greeting, leftover: buffer.slice(nl + 1) });
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('data', onData);
    socket.on('error', fail);
    socket.on('close', onClose);
  });
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

function reason(signal: AbortSignal): string {
  const r: unknown = signal.reason;
  return r instanceof Error ? r.message : String(r ?? 'aborted');
}

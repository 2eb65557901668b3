import * as https from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { z } from 'zod';
import { errorBodySchema } from './agent-api';
import { serverIdOf } from './agent-tls';

/** A failed call to a host agent, as the caller sees it. */
export class AgentError extends Error {
  override readonly name = 'AgentError';
  readonly status: number;
  readonly code: string;
  readonly field?: string;
  /** With `VM_MOVED`: the agent the VM went to. */
  readonly movedTo?: string;
  /** Worth retrying: the agent could not be reached, timed out, or answered 5xx (503 when unreachable). */
  readonly retryable: boolean;

  constructor(init: { status: number; code: string; message: string; field?: string; movedTo?: string; retryable?: boolean }) {
    super(init.message);
    this.status = init.status;
    this.code = init.code;
    this.field = init.field;
    this.movedTo = init.movedTo;
    this.retryable = init.retryable ?? (init.status === 0 || init.status >= 500);
  }
}

type Method = 'GET' | 'PUT' | 'POST' | 'DELETE';

export interface CallTarget {
  baseUrl: string;
  /** The caller's TLS identity (compute/agent-tls.ts `agentHttpsAgent`): agents speak HTTPS with client certificates only. */
  https: https.Agent;
  timeoutMs: number;
  /** The server whose agent must answer (its certificate's subject); unset: any fleet server (a peer, a redirect). */
  serverId?: string;
}

/**
 * One JSON request to an agent, over mutual TLS. A 2xx reply is parsed with `replySchema` (a reply that does not match
 * is an `AgentError` 'BAD_REPLY', not retryable: the agent speaks another version); 204 returns undefined. Anything
 * else becomes an `AgentError` carrying the agent's code and field. A URL that is not https is refused before any
 * connection; so is an agent whose certificate names another server than `serverId`.
 */
export async function callAgent<S extends z.ZodType>(target: CallTarget, method: Method, path: string, body: unknown, replySchema: S): Promise<z.infer<S>>;
export async function callAgent(target: CallTarget, method: Method, path: string, body: unknown, replySchema: null): Promise<void>;
export async function callAgent(target: CallTarget, method: Method, path: string, body: unknown, replySchema: z.ZodType | null): Promise<unknown> {
  const url = target.baseUrl.replace(/\/+$/, '') + path;
  if (!url.startsWith('https://'))
    throw new AgentError({ status: 0, code: 'INSECURE_URL', message: `${method} ${url}: agents are reached over https only`, retryable: false });
  let res: { status: number; text: string; peer: string | null };
  try {
    res = await request(target, method, url, body === undefined ? undefined : JSON.stringify(body));
  } catch (err) {
    const timedOut = err instanceof Error && err.name === 'TimeoutError';
    const cause = err instanceof Error ? err.message : String(err);
    throw new AgentError({
      status: 0,
      code: timedOut ? 'TIMEOUT' : 'NETWORK_ERROR',
      message: `${method} ${url}: ${timedOut ? `no reply within ${target.timeoutMs} ms` : cause}`,
      retryable: true,
    });
  }
  if (target.serverId !== undefined && res.peer !== target.serverId)
    throw new AgentError({
      status: 0,
      code: 'WRONG_AGENT',
      message: `${method} ${url}: answered by server ${res.peer ?? '(none)'}, not ${target.serverId}`,
      retryable: true,
    });
  const ok = res.status >= 200 && res.status < 300;
  const text = res.text;

  if (ok) {
    if (replySchema === null || res.status === 204) return undefined;
    const parsed = replySchema.safeParse(safeJson(text));
    if (!parsed.success)
      throw new AgentError({
        status: res.status,
        code: 'BAD_REPLY',
        message: `${method} ${url}: reply does not match the agent API: ${parsed.error.issues[0]?.message ?? ''}`,
        retryable: false,
      });
    return parsed.data;
  }

  const err = errorBodySchema.safeParse(safeJson(text));
  if (err.success) {
    const e = err.data.error;
    throw new AgentError({ status: res.status, code: e.code, message: e.message, field: e.field, movedTo: e.movedTo });
  }
  throw new AgentError({ status: res.status, code: `HTTP_${res.status}`, message: `${method} ${url}: ${text.slice(0, 200)}` });
}

/** The request itself; `peer` is the server id the agent's (CA-verified) certificate names. */
function request(target: CallTarget, method: Method, url: string, body: string | undefined): Promise<{ status: number; text: string; peer: string | null }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    const req = https.request(url, { method, headers, agent: target.https }, (res) => {
      const peer = serverIdOf((res.socket as TLSSocket).getPeerCertificate?.());
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), peer });
      });
      res.on('error', fail);
    });
    function fail(err: Error) {
      clearTimeout(timer);
      reject(err);
    }
    const timer = setTimeout(() => {
      const e = new Error(`no reply within ${target.timeoutMs} ms`);
      e.name = 'TimeoutError';
      req.destroy(e);
    }, target.timeoutMs);
    req.on('error', fail);
    req.end(body);
  });
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

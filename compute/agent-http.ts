import type { z } from 'zod';
import { errorBodySchema } from './agent-api';

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
  secret?: string;
  timeoutMs: number;
}

/**
 * One JSON request to an agent. A 2xx reply is parsed with `replySchema` (a reply that does not match is an
 * `AgentError` 'BAD_REPLY', not retryable: the agent speaks another version); 204 returns undefined. Anything
 * else becomes an `AgentError` carrying the agent's code and field.
 */
export async function callAgent<S extends z.ZodType>(
  target: CallTarget,
  method: Method,
  path: string,
  body: unknown,
  replySchema: S,
): Promise<z.infer<S>>;
export async function callAgent(target: CallTarget, method: Method, path: string, body: unknown, replySchema: null): Promise<void>;
export async function callAgent(
  target: CallTarget,
  method: Method,
  path: string,
  body: unknown,
  replySchema: z.ZodType | null,
): Promise<unknown> {
  const url = target.baseUrl.replace(/\/+$/, '') + path;
  const headers: Record<string, string> = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (target.secret !== undefined) headers.authorization = `Bearer ${target.secret}`;
  let res: Response;
  let text: string;
  try {
    res = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(target.timeoutMs),
    });
    text = await res.text();
  } catch (err) {
    const timedOut = err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError');
    const cause = err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err);
    throw new AgentError({
      status: 0,
      code: timedOut ? 'TIMEOUT' : 'NETWORK_ERROR',
      message: `${method} ${url}: ${timedOut ? `no reply within ${target.timeoutMs} ms` : cause}`,
      retryable: true,
    });
  }

  if (res.ok) {
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

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

import * as fs from 'node:fs';
import { loadEnv } from '../common/config';
import { UserFacingError } from '../common/errors';
import { credentialsPath, type Credentials } from '../stack/embedded-system';

export class ApiRequestError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
    this.name = 'ApiRequestError';
  }
}

export interface ApiClient {
  baseUrl: string;
  request<T>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<T>;
}

/** A token file: its first line, trimmed; a missing, empty or unreadable one is refused naming the option. */
function readTokenFile(file: string, option: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UserFacingError(`${option}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, option);
  }
  const token = text.split('\n')[0]!.trim();
  if (!token) throw new UserFacingError(`${option}: ${file} is empty; it must hold the token on its first line`, option);
  return token;
}

/**
 * The CLI talks to the API only: DHM_API_URL + the token (DHM_TOKEN, DHM_TOKEN_FILE or --token-file; never on the
 * command line, where other users of the machine can read it), else what `dhm up` wrote to .dhm/credentials.json.
 */
export function apiClientFromEnvironment(overrides: { tokenFile?: string } = {}): ApiClient {
  const env = loadEnv();
  let baseUrl = env.DHM_API_URL;
  let token = overrides.tokenFile
    ? readTokenFile(overrides.tokenFile, '--token-file')
    : (env.DHM_TOKEN ?? (env.DHM_TOKEN_FILE ? readTokenFile(env.DHM_TOKEN_FILE, 'DHM_TOKEN_FILE') : undefined));
  if (!baseUrl || !token) {
    const file = credentialsPath(env);
    let creds: Credentials;
    try {
      creds = JSON.parse(fs.readFileSync(file, 'utf8')) as Credentials;
    } catch {
      throw new UserFacingError(`DHM_API_URL: not set and no ${file}; start the system with \`dhm up\` or set DHM_API_URL and DHM_TOKEN`, 'DHM_API_URL');
    }
    baseUrl ??= creds.apiUrl;
    token ??= creds.operatorToken;
  }
  return createApiClient(baseUrl, token, { allowPlainHttp: env.DHM_ALLOW_PLAIN_HTTP === '1' });
}

/** Loopback names and addresses: a token sent there over plain HTTP never leaves the machine. */
export function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h.endsWith('.localhost');
}

/**
 * A client of the API. A token is sent over plain HTTP only to a loopback address: anywhere else the URL must be
 * https (the API with DHM_API_TLS_CERT/KEY; a private CA through NODE_EXTRA_CA_CERTS), unless DHM_ALLOW_PLAIN_HTTP=1.
 */
export function createApiClient(baseUrl: string, token: string, opts: { allowPlainHttp?: boolean } = {}): ApiClient {
  const url = new URL(baseUrl);
  if (url.protocol === 'http:' && !isLoopback(url.hostname) && !opts.allowPlainHttp)
    throw new UserFacingError(
      `DHM_API_URL: ${url.origin} is plain HTTP to a host that is not this machine, so the token would cross the network in clear; use https:// (the API serves it with DHM_API_TLS_CERT and DHM_API_TLS_KEY) or set DHM_ALLOW_PLAIN_HTTP=1 to send it anyway`,
      'DHM_API_URL',
    );
  return {
    baseUrl,
    async request<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
      let res: Response;
      try {
        res = await fetch(`${baseUrl}${path}`, {
          method,
          headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: AbortSignal.timeout(60_000),
        });
      } catch (err) {
        throw new UserFacingError(`cannot reach the dhm API at ${baseUrl} (${(err as Error).message}); is \`dhm up\` running?`);
      }
      const text = await res.text();
      const json = text ? (JSON.parse(text) as unknown) : undefined;
      if (!res.ok) {
        const e = (json as { error?: { code?: string; message?: string; field?: string } } | undefined)?.error;
        throw new ApiRequestError(res.status, e?.code ?? `HTTP_${res.status}`, e?.message ?? text, e?.field);
      }
      return json as T;
    },
  };
}

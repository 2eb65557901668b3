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

/** The CLI talks to the API only: DHM_API_URL + DHM_TOKEN, else what `dhm up` wrote to .dhm/credentials.json. */
export function apiClientFromEnvironment(overrides: { token?: string } = {}): ApiClient {
  const env = loadEnv();
  let baseUrl = env.DHM_API_URL;
  let token = overrides.token ?? env.DHM_TOKEN;
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
  return createApiClient(baseUrl, token);
}

export function createApiClient(baseUrl: string, token: string): ApiClient {
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

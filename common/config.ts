import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { UserFacingError } from './errors';

/** Project root: where `.dhm/` (runtime state) and `.tools/` (built tools) live unless overridden. */
export const PROJECT_ROOT = path.resolve(__dirname, '..');

const port = z.coerce.number().int().min(1).max(65535);
const urlWithScheme = (schemes: string[]) =>
  z.string().refine(
    (v) => {
      try {
        return schemes.includes(new URL(v).protocol.replace(/:$/, ''));
      } catch {
        return false;
      }
    },
    `must be a URL starting with ${schemes.map((s) => `${s}://`).join(' or ')}`,
  );

/** A file the process must be able to read at start (certificates, keys). */
const readableFile = z
  .string()
  .min(1)
  .refine((p) => {
    try {
      fs.accessSync(p, fs.constants.R_OK);
      return fs.statSync(p).isFile();
    } catch {
      return false;
    }
  }, 'must be a readable file');
const bool = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');

/** Every environment variable dhm reads, in one place, validated at start. */
export const envSchema = z
  .object({
    DATABASE_URL: urlWithScheme(['postgres', 'postgresql']).optional(),
    /** Connections per process (a flood queues for these; it never opens more). */
    DATABASE_POOL_SIZE: z.coerce.number().int().min(1).max(200).default(10),
    /** A statement running longer is cancelled by Postgres (a stuck query must not hold a connection for ever). */
    DATABASE_STATEMENT_TIMEOUT_MS: z.coerce.number().int().min(100).max(3_600_000).default(30_000),
    /** A session left idle inside a transaction this long is ended by Postgres, and its locks released. */
    DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: z.coerce.number().int().min(100).max(3_600_000).default(60_000),
    /** Waiting this long for a connection (a new one, or a free one of a busy pool) fails the request instead of hanging. */
    DATABASE_CONNECT_TIMEOUT_MS: z.coerce.number().int().min(100).max(600_000).default(10_000),
    /** An idle connection is closed after this long. */
    DATABASE_IDLE_TIMEOUT_MS: z.coerce.number().int().min(1_000).max(3_600_000).default(30_000),
    TEMPORAL_ADDRESS: z
      .string()
      .regex(/^[A-Za-z0-9.\-[\]:]+:\d{1,5}$/, 'must be host:port')
      .optional(),
    TEMPORAL_NAMESPACE: z.string().min(1).default('default'),
    TEMPORAL_CLI: z.string().min(1).optional(),
    TEMPORAL_TASK_QUEUE: z.string().min(1).default('dh-migrations'),
    /** TLS to the Temporal frontend; implied by any of the TLS files, the server name or an API key. */
    TEMPORAL_TLS: bool.optional(),
    /** mTLS client certificate and its key (PEM files; both or neither). */
    TEMPORAL_TLS_CERT: readableFile.optional(),
    TEMPORAL_TLS_KEY: readableFile.optional(),
    /** CA that signed the frontend's certificate (PEM); default: the system's roots. */
    TEMPORAL_TLS_CA: readableFile.optional(),
    /** Name checked against the frontend's certificate, when it differs from TEMPORAL_ADDRESS's host. */
    TEMPORAL_TLS_SERVER_NAME: z.string().min(1).max(253).optional(),
    /** Temporal Cloud API key (sent as a bearer token; turns TLS on). */
    TEMPORAL_API_KEY: z.string().min(1).optional(),
    DHM_HOME: z.string().min(1).default(path.join(PROJECT_ROOT, '.dhm')),
    DHM_TOOLS_DIR: z.string().min(1).default(path.join(PROJECT_ROOT, '.tools')),
    DHM_PG_PORT: port.default(54329),
    DHM_TEMPORAL_PORT: port.default(7233),
    DHM_TEMPORAL_UI_PORT: port.default(8233),
    DHM_API_PORT: port.default(7780),
    /** Which Temporal the embedded stack runs: the CLI's dev server (one process, SQLite) or a multi-process cluster on Postgres. */
    DHM_TEMPORAL_MODE: z.enum(['dev', 'cluster']).default('dev'),
    /** Cluster mode: history shards (fixed for the life of its database), history processes, and its database (+ `_visibility`). */
    DHM_TEMPORAL_SHARDS: z.coerce.number().int().min(1).max(16384).default(16),
    DHM_TEMPORAL_HISTORY_PROCESSES: z.coerce.number().int().min(1).max(8).default(2),
    DHM_TEMPORAL_DATABASE: z
      .string()
      .regex(/^[a-z_][a-z0-9_]{0,40}$/, 'must be a lower-case SQL name (letters, digits, _; at most 41 characters)')
      .default('temporal'),
    DHM_API_HOST: z.string().min(1).default('127.0.0.1'),
    /** PEM files of the API's certificate and key: set both and the API speaks HTTPS only. */
    DHM_API_TLS_CERT: readableFile.optional(),
    DHM_API_TLS_KEY: readableFile.optional(),
    /** Seals stored idempotent answers that carry a secret; `dhm up` keeps a generated one in DHM_HOME. At least 32 characters. */
    DHM_API_SEALING_KEY: z.string().min(32, 'must be at least 32 characters').optional(),
    /** CLI: send a token over plain HTTP to an address that is not loopback anyway (`1`); default: refused. */
    DHM_ALLOW_PLAIN_HTTP: z.enum(['0', '1']).optional(),
    /** CLI: a file holding the token (a tenant's) to act with, instead of DHM_TOKEN; tokens are never taken on argv. */
    DHM_TOKEN_FILE: z.string().min(1).optional(),
    /** The API's operator token; `dhm up` generates one when unset and writes it to .dhm/credentials.json. */
    DHM_OPERATOR_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
    /**
     * `dhm agents`: the folder of the agents' certificates, one sub-folder per server id (`dhm pki` makes them; files as in
     * compute/fleet-ca.ts). Required there: an agent never starts without credentials.
     */
    DHM_AGENT_TLS_DIR: z.string().min(1).optional(),
    /** worker, scheduler, api, check: the control plane's agent-plane certificate folder (`dhm pki`'s `control-plane`). */
    DHM_AGENT_CLIENT_TLS_DIR: z.string().min(1).optional(),
    /** The agents' fault-injection routes (`/v1/faults`): tests only; unset, the route does not exist (404). */
    DHM_AGENT_FAULTS: bool.default(false),
    DHM_FLEET_FILE: z.string().min(1).optional(),
    /** `dhm agents`: the address agents bind (0.0.0.0 in a container) and the host name others reach them by. */
    DHM_AGENT_HOST: z.string().min(1).default('127.0.0.1'),
    DHM_AGENT_ADVERTISE_HOST: z
      .string()
      .regex(/^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$/, 'must be a host name or an address')
      .optional(),
    /** worker, scheduler, agents: the ops HTTP server (/healthz, /readyz, /metrics); unset = none. The API serves them on its own port. */
    DHM_METRICS_PORT: z.coerce.number().int().min(0).max(65535).optional(),
    DHM_METRICS_HOST: z.string().min(1).default('127.0.0.1'),
    /** worker: the Temporal SDK's own Prometheus exporter (worker slots, polls, task latencies); unset = off. */
    DHM_TEMPORAL_METRICS_PORT: port.optional(),
    /** The sim's speed-up over real time (100 = a simulated 100 s take 1 s). */
    DHM_TIME_SCALE: z.coerce.number().positive().max(100_000).default(50),
    /** Where the CLI finds the API (default: what `dhm up` wrote to .dhm/credentials.json). */
    DHM_API_URL: urlWithScheme(['http', 'https']).optional(),
    DHM_TOKEN: z.string().min(1).optional(),
    /** Unset: `info`, except `dhm up` on a terminal, which shows only warnings and errors after its banner. */
    LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).optional(),
    /** `json` or `pretty` (human-readable lines); unset: pretty on a terminal, JSON otherwise. */
    LOG_FORMAT: z.enum(['json', 'pretty']).optional(),
  })
  .superRefine((env, ctx) => {
    // The pairs and combinations that only make sense together, each reported under the variable to fix.
    if (env.DHM_API_TLS_CERT && !env.DHM_API_TLS_KEY) ctx.addIssue({ code: 'custom', path: ['DHM_API_TLS_KEY'], message: 'required with DHM_API_TLS_CERT' });
    if (env.DHM_API_TLS_KEY && !env.DHM_API_TLS_CERT) ctx.addIssue({ code: 'custom', path: ['DHM_API_TLS_CERT'], message: 'required with DHM_API_TLS_KEY' });
    if (env.TEMPORAL_TLS_CERT && !env.TEMPORAL_TLS_KEY)
      ctx.addIssue({ code: 'custom', path: ['TEMPORAL_TLS_KEY'], message: 'required with TEMPORAL_TLS_CERT' });
    if (env.TEMPORAL_TLS_KEY && !env.TEMPORAL_TLS_CERT)
      ctx.addIssue({ code: 'custom', path: ['TEMPORAL_TLS_CERT'], message: 'required with TEMPORAL_TLS_KEY' });
    if (env.TEMPORAL_TLS === false && (env.TEMPORAL_TLS_CERT || env.TEMPORAL_TLS_CA || env.TEMPORAL_TLS_SERVER_NAME || env.TEMPORAL_API_KEY))
      ctx.addIssue({ code: 'custom', path: ['TEMPORAL_TLS'], message: 'is false, but TLS settings or TEMPORAL_API_KEY are set (they need TLS)' });
    if (env.DHM_METRICS_PORT !== undefined && env.DHM_METRICS_PORT !== 0 && env.DHM_METRICS_PORT === env.DHM_TEMPORAL_METRICS_PORT)
      ctx.addIssue({ code: 'custom', path: ['DHM_TEMPORAL_METRICS_PORT'], message: 'must differ from DHM_METRICS_PORT' });
  });
export type Env = z.infer<typeof envSchema>;

/** Reads the environment; a bad value throws one line naming the variable. Unknown DHM_* variables are refused too. */
/** Settings dhm no longer reads, with what replaced them: refused by name rather than silently ignored. */
const RETIRED: Record<string, string> = {
  DHM_AGENT_SECRET:
    'no longer used: the agent plane is mutual TLS with the fleet CA (DHM_AGENT_TLS_DIR for agents, DHM_AGENT_CLIENT_TLS_DIR for the control plane; `dhm pki` makes both)',
};

export function loadEnv(source: NodeJS.ProcessEnv = process.env): Env {
  const known = new Set(Object.keys(envSchema.shape));
  for (const key of Object.keys(source)) {
    if (RETIRED[key] !== undefined && source[key] !== undefined && source[key] !== '') throw new UserFacingError(`${key}: ${RETIRED[key]}`, key);
    if (key.startsWith('DHM_') && !known.has(key) && !key.startsWith('DHM_TEST_')) {
      throw new UserFacingError(`${key}: unknown setting (known: ${[...known].filter((k) => k.startsWith('DHM_')).join(', ')})`, key);
    }
  }
  const picked: Record<string, string> = {};
  for (const key of known) {
    const v = source[key];
    if (v !== undefined && v !== '') picked[key] = v;
  }
  const parsed = envSchema.safeParse(picked);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const name = String(issue.path[0]);
    const got = picked[name] === undefined ? 'not set' : `got ${JSON.stringify(redact(name, picked[name]))}`;
    throw new UserFacingError(`${name}: ${issue.message} (${got})`, name);
  }
  return parsed.data;
}

/** Config errors quote the bad value, but never a secret or a password inside a URL. */
function redact(name: string, value: string | undefined): string | undefined {
  if (value === undefined) return value;
  if (/TOKEN|SECRET|PASSWORD|API_KEY|SEALING_KEY/.test(name)) return '***';
  return value.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
}

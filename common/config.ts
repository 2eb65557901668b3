import * as path from 'node:path';
import { z } from 'zod';
import { UserFacingError } from './errors';

/** Project root: where `.dhm/` (runtime state) and `.tools/` (built tools) live unless overridden. */
export const PROJECT_ROOT = path.resolve(__dirname, '..');

const port = z.coerce.number().int().min(1).max(65535);
const urlWithScheme = (schemes: string[]) =>
  z.string().refine((v) => {
    try {
      return schemes.includes(new URL(v).protocol.replace(/:$/, ''));
    } catch {
      return false;
    }
  }, `must be a URL starting with ${schemes.map((s) => `${s}://`).join(' or ')}`);

/** Every environment variable dhm reads, in one place, validated at start. */
export const envSchema = z.object({
  DATABASE_URL: urlWithScheme(['postgres', 'postgresql']).optional(),
  DATABASE_POOL_SIZE: z.coerce.number().int().min(1).max(200).default(10),
  TEMPORAL_ADDRESS: z
    .string()
    .regex(/^[A-Za-z0-9.\-[\]:]+:\d{1,5}$/, 'must be host:port')
    .optional(),
  TEMPORAL_NAMESPACE: z.string().min(1).default('default'),
  TEMPORAL_CLI: z.string().min(1).optional(),
  TEMPORAL_TASK_QUEUE: z.string().min(1).default('dh-migrations'),
  DHM_HOME: z.string().min(1).default(path.join(PROJECT_ROOT, '.dhm')),
  DHM_TOOLS_DIR: z.string().min(1).default(path.join(PROJECT_ROOT, '.tools')),
  DHM_PG_PORT: port.default(54329),
  DHM_TEMPORAL_PORT: port.default(7233),
  DHM_TEMPORAL_UI_PORT: port.default(8233),
  DHM_API_PORT: port.default(7780),
  DHM_API_HOST: z.string().min(1).default('127.0.0.1'),
  /** The API's operator token; `dhm up` generates one when unset and writes it to .dhm/credentials.json. */
  DHM_OPERATOR_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
  /** Shared secret every agent request must carry; generated per run when unset. */
  DHM_AGENT_SECRET: z.string().min(16, 'must be at least 16 characters').optional(),
  DHM_FLEET_FILE: z.string().min(1).optional(),
  /** The sim's speed-up over real time (100 = a simulated 100 s take 1 s). */
  DHM_TIME_SCALE: z.coerce.number().positive().max(100_000).default(50),
  /** Where the CLI finds the API (default: what `dhm up` wrote to .dhm/credentials.json). */
  DHM_API_URL: urlWithScheme(['http', 'https']).optional(),
  DHM_TOKEN: z.string().min(1).optional(),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});
export type Env = z.infer<typeof envSchema>;

/** Reads the environment; a bad value throws one line naming the variable. Unknown DHM_* variables are refused too. */
export function loadEnv(source: NodeJS.ProcessEnv = process.env): Env {
  const known = new Set(Object.keys(envSchema.shape));
  for (const key of Object.keys(source)) {
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
    throw new UserFacingError(`${name}: ${issue.message} (got ${JSON.stringify(redact(name, picked[name]))})`, name);
  }
  return parsed.data;
}

/** Config errors quote the bad value, but never a secret or a password inside a URL. */
function redact(name: string, value: string | undefined): string | undefined {
  if (value === undefined) return value;
  if (/TOKEN|SECRET|PASSWORD|API_KEY/.test(name)) return '***';
  return value.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
}

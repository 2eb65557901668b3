import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { envSchema, loadEnv } from '../../common/config';
import { UserFacingError } from '../../common/errors';
import { temporalConnectionOptions } from '../../common/temporal-connection';
import { spawnDhm } from '../support/dhm-process';

/** The error of loadEnv on `env`, or a failure when it accepted it. */
function refusal(env: NodeJS.ProcessEnv): UserFacingError {
  try {
    loadEnv(env);
  } catch (err) {
    expect(err).toBeInstanceOf(UserFacingError);
    return err as UserFacingError;
  }
  throw new Error(`accepted ${JSON.stringify(env)}`);
}

/** A bad value for every variable that has a rule (free-form strings are listed apart below). */
const BAD: Record<string, string> = {
  DATABASE_URL: 'mysql://dhm@db/dhm',
  DATABASE_POOL_SIZE: '0',
  DATABASE_STATEMENT_TIMEOUT_MS: '50',
  DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: 'forever',
  DATABASE_CONNECT_TIMEOUT_MS: '-1',
  DATABASE_IDLE_TIMEOUT_MS: '0',
  TEMPORAL_ADDRESS: 'temporal-without-port',
  TEMPORAL_TLS: 'yes',
  TEMPORAL_TLS_CERT: '/nonexistent/client.pem',
  TEMPORAL_TLS_KEY: '/nonexistent/client.key',
  TEMPORAL_TLS_CA: '/nonexistent/ca.pem',
  TEMPORAL_TLS_SERVER_NAME: 'x'.repeat(300),
  DHM_PG_PORT: '70000',
  DHM_TEMPORAL_PORT: 'seven',
  DHM_TEMPORAL_UI_PORT: '0',
  DHM_TEMPORAL_MODE: 'kubernetes',
  DHM_TEMPORAL_SHARDS: '0',
  DHM_TEMPORAL_HISTORY_PROCESSES: '9',
  DHM_TEMPORAL_DATABASE: 'Temporal-DB',
  DHM_API_PORT: '-1',
  DHM_OPERATOR_TOKEN: 'short-op-secret',
  DHM_API_TLS_CERT: '/nonexistent/dhm-api-cert.pem',
  DHM_API_TLS_KEY: '/nonexistent/dhm-api-key.pem',
  DHM_API_SEALING_KEY: 'short-sealing-key',
  DHM_ALLOW_PLAIN_HTTP: 'yes',
  DHM_AGENT_FAULTS: 'maybe',
  DHM_AGENT_ADVERTISE_HOST: 'http://agents:7801',
  DHM_METRICS_PORT: '65536',
  DHM_TEMPORAL_METRICS_PORT: '0',
  DHM_TIME_SCALE: '-5',
  DHM_API_URL: 'ftp://127.0.0.1:7780',
  LOG_LEVEL: 'loud',
  LOG_FORMAT: 'xml',
};
/** Any non-empty text is valid for these (names, paths, opaque secrets); empty means unset. */
const FREE_FORM = [
  'DHM_TOKEN_FILE',
  'DHM_AGENT_TLS_DIR',
  'DHM_AGENT_CLIENT_TLS_DIR',
  'TEMPORAL_NAMESPACE',
  'TEMPORAL_CLI',
  'TEMPORAL_TASK_QUEUE',
  'TEMPORAL_API_KEY',
  'DHM_HOME',
  'DHM_TOOLS_DIR',
  'DHM_API_HOST',
  'DHM_FLEET_FILE',
  'DHM_AGENT_HOST',
  'DHM_METRICS_HOST',
  'DHM_TOKEN',
];
const SECRETS = ['DHM_OPERATOR_TOKEN', 'DHM_API_SEALING_KEY', 'TEMPORAL_API_KEY', 'DHM_TOKEN'];

describe('configuration from the environment', () => {
  let dir: string;
  let pem: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-config-'));
    pem = path.join(dir, 'a.pem');
    fs.writeFileSync(pem, '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('every variable is either checked below or free-form', () => {
    expect([...Object.keys(BAD), ...FREE_FORM].sort()).toEqual(Object.keys(envSchema.shape).sort());
  });

  test.each(Object.entries(BAD))('%s with a bad value: one line naming it', (name, value) => {
    const err = refusal({ [name]: value });
    expect(err.message.startsWith(`${name}: `)).toBe(true);
    expect(err.message).not.toContain('\n');
    if (SECRETS.includes(name)) expect(err.message).not.toContain(value);
  });

  test('variables that go together are named when one is missing or they clash', () => {
    expect(refusal({ TEMPORAL_TLS_CERT: pem }).message).toMatch(/^TEMPORAL_TLS_KEY: required with TEMPORAL_TLS_CERT/);
    expect(refusal({ TEMPORAL_TLS_KEY: pem }).message).toMatch(/^TEMPORAL_TLS_CERT: required with TEMPORAL_TLS_KEY/);
    expect(refusal({ TEMPORAL_TLS: 'false', TEMPORAL_API_KEY: 'cloud-key-1234567890' }).message).toMatch(/^TEMPORAL_TLS: /);
    expect(refusal({ DHM_METRICS_PORT: '9464', DHM_TEMPORAL_METRICS_PORT: '9464' }).message).toMatch(/^DHM_TEMPORAL_METRICS_PORT: must differ/);
    expect(refusal({ DHM_METRIC_PORT: '9464' }).message).toMatch(/^DHM_METRIC_PORT: unknown setting/);
    // A retired setting is refused by name with what replaced it, and its value is not echoed.
    const retired = refusal({ DHM_AGENT_SECRET: 'agent-secret-0123456789' }).message;
    expect(retired).toMatch(/^DHM_AGENT_SECRET: no longer used: .*DHM_AGENT_CLIENT_TLS_DIR/);
    expect(retired).not.toContain('agent-secret-0123456789');
  });

  test('secrets are never echoed: not in a URL, not when another variable is wrong', () => {
    const url = refusal({ DATABASE_URL: 'mysql://dhm:hunter2-password@db/dhm' });
    expect(url.message).toMatch(/^DATABASE_URL: /);
    expect(url.message).not.toContain('hunter2-password');
    const secrets = {
      DHM_OPERATOR_TOKEN: 'op-token-0123456789abcdef',
      DHM_API_SEALING_KEY: 'sealing-key-0123456789abcdef0123456789',
      TEMPORAL_API_KEY: 'cloud-api-key-0123456789',
    };
    for (const err of [refusal({ ...secrets, LOG_LEVEL: 'loud' }), refusal({ ...secrets, DHM_NOPE: '1' }), refusal({ ...secrets, TEMPORAL_TLS: 'false' })])
      for (const v of Object.values(secrets)) expect(err.message).not.toContain(v);
  });

  test('Temporal TLS, mTLS and API key options come from the environment', () => {
    expect(temporalConnectionOptions(loadEnv({ TEMPORAL_ADDRESS: 'temporal:7233' }))).toEqual({ address: 'temporal:7233' });
    const mtls = temporalConnectionOptions(
      loadEnv({
        TEMPORAL_ADDRESS: 'ns.acct.tmprl.cloud:7233',
        TEMPORAL_TLS_CERT: pem,
        TEMPORAL_TLS_KEY: pem,
        TEMPORAL_TLS_CA: pem,
        TEMPORAL_TLS_SERVER_NAME: 'frontend',
      }),
    );
    expect(mtls.tls?.serverNameOverride).toBe('frontend');
    expect(Buffer.from(mtls.tls!.clientCertPair!.crt).toString()).toContain('BEGIN CERTIFICATE');
    expect(mtls.tls?.serverRootCACertificate).toBeDefined();
    expect(mtls.apiKey).toBeUndefined();
    const cloud = temporalConnectionOptions(loadEnv({ TEMPORAL_ADDRESS: 'us-east-1.aws.api.temporal.io:7233', TEMPORAL_API_KEY: 'key-123' }));
    expect(cloud).toEqual({ address: 'us-east-1.aws.api.temporal.io:7233', tls: {}, apiKey: 'key-123' });
    // The embedded dev server (another address) is plain text whatever the settings say.
    expect(temporalConnectionOptions(loadEnv({ TEMPORAL_API_KEY: 'key-123' }), '127.0.0.1:7233')).toEqual({ address: '127.0.0.1:7233' });
    const notPem = path.join(dir, 'not.pem');
    fs.writeFileSync(notPem, 'hello');
    expect(() => temporalConnectionOptions(loadEnv({ TEMPORAL_ADDRESS: 't:7233', TEMPORAL_TLS_CA: notPem }))).toThrow(/^TEMPORAL_TLS_CA: .* is not a PEM file/);
    expect(() => temporalConnectionOptions(loadEnv({}))).toThrow(/^TEMPORAL_ADDRESS: required/);
  });

  test('a service with bad config stops at start with one line naming the variable, exit code 2', async () => {
    const runs = [
      { args: ['worker'], env: { DHM_METRICS_PORT: 'ninety', DATABASE_URL: 'postgres://x@127.0.0.1:1/x' }, name: 'DHM_METRICS_PORT', secret: undefined },
      { args: ['api'], env: { DHM_OPERATOR_TOKEN: 'tiny-secret' }, name: 'DHM_OPERATOR_TOKEN', secret: 'tiny-secret' },
      { args: ['agents'], env: { TEMPORAL_TLS_CERT: pem }, name: 'TEMPORAL_TLS_KEY', secret: undefined },
    ];
    await Promise.all(
      runs.map(async (r) => {
        const run = spawnDhm(r.args, { ...r.env, DHM_HOME: dir });
        expect(await run.exited).toBe(2);
        const lines = run.output().trim().split('\n');
        expect(lines).toHaveLength(1);
        expect(lines[0]).toMatch(new RegExp(`^dhm: ${r.name}: `));
        if (r.secret) expect(lines[0]).not.toContain(r.secret);
      }),
    );
  }, 60_000);
});

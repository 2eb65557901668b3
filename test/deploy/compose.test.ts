import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command } from 'commander';
import { parse } from 'yaml';
import { registerServiceCommands } from '../../cli/services';
import { envSchema, loadEnv } from '../../common/config';
import { CUSTOM_SEARCH_ATTRIBUTES } from '../../common/search-attributes';
import { loadFleetFile } from '../../inventory/fleet-file';
import { temporalDeployDir } from '../../stack/temporal-cluster';
import { TEMPORAL_SERVER_VERSION, TEMPORAL_UI_SERVER_VERSION } from '../../stack/tools/temporal-server';
import { clusterTools } from '../cluster/support';

const TEMPORAL_SERVICES = ['temporal-frontend', 'temporal-history-1', 'temporal-history-2', 'temporal-matching', 'temporal-worker'];

const ROOT = path.resolve(__dirname, '..', '..');
const SECRETS = { DHM_OPERATOR_TOKEN: 'compose-test-operator-token' };

/** Compose's variable interpolation (`${X}`, `${X:-default}`, `${X:?error}`, `$$`), enough for this file. */
function interpolate(text: string, vars: Record<string, string>): string {
  return text.replace(/\$\$|\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}/g, (all, name: string | undefined, op: string | undefined, arg: string | undefined) => {
    if (all === '$$') return '$';
    const v = vars[name!];
    if (v !== undefined && v !== '') return v;
    if (op === '-') return arg ?? '';
    throw new Error(`compose variable ${name} is required: ${arg ?? ''}`);
  });
}

type Service = {
  image?: string;
  volumes?: string[];
  build?: unknown;
  command?: string[];
  entrypoint?: string[];
  environment?: Record<string, string>;
  ports?: string[];
  expose?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  restart?: string;
};

function loadCompose(vars: Record<string, string>): { services: Record<string, Service> } {
  const text = fs.readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8');
  return parse(interpolate(text, vars), { merge: true });
}

/** A role's configuration as it loads in its container, the mounted certificate files stood in for by a readable file. */
const roleEnv = (env: Record<string, string> | undefined) =>
  loadEnv({
    ...env,
    ...Object.fromEntries(
      ['TEMPORAL_TLS_CA', 'TEMPORAL_TLS_CERT', 'TEMPORAL_TLS_KEY'].filter((k) => env?.[k] !== undefined).map((k) => [k, path.join(ROOT, 'package.json')]),
    ),
  });

/** The port a `/readyz` health check probes (`fetch('http://127.0.0.1:PORT/readyz')`). */
const probedPort = (s: Service) => Number(/127\.0\.0\.1:(\d+)\/readyz/.exec(s.healthcheck?.test.join(' ') ?? '')?.[1]);

describe('docker-compose.yml against the code', () => {
  const compose = loadCompose(SECRETS);
  const services = compose.services;
  const dhm = Object.entries(services).filter(([, s]) => s.build !== undefined || s.image?.startsWith('dhm:'));
  const program = new Command('dhm');
  registerServiceCommands(program);
  const roles = new Map(program.commands.map((c) => [c.name(), c]));
  const roleOf = (s: Service) => s.command![0]!;
  const byRole = (role: string) => dhm.filter(([, s]) => roleOf(s) === role);

  test('the secrets must be given: compose refuses to start without them', () => {
    expect(() => loadCompose({})).toThrow(/DHM_OPERATOR_TOKEN/);
  });

  test('the dhm roles: an api, two workers, a scheduler, the agents and the pki and fleet-seed jobs, all from the one image', () => {
    expect(dhm.map(([, s]) => roleOf(s)).sort()).toEqual(['agents', 'api', 'fleet-seed', 'pki', 'scheduler', 'worker', 'worker']);
    expect(new Set(dhm.map(([, s]) => s.image)).size).toBe(1);
  });

  test.each(dhm.map(([name]) => name))('%s runs a real dhm subcommand with options it knows', (name) => {
    const [role, ...args] = services[name]!.command!;
    const cmd = roles.get(role!);
    expect(cmd).toBeDefined();
    const known = new Set(cmd!.options.map((o) => o.long));
    for (const a of args.filter((x) => x.startsWith('--'))) expect(known).toContain(a);
  });

  const calling = dhm.filter(([, s]) => ['api', 'worker', 'scheduler'].includes(roleOf(s))).map(([name]) => name);
  test.each(dhm.filter(([, s]) => roleOf(s) !== 'pki').map(([name]) => name))(
    '%s: every variable it sets is one the config accepts, with a valid value',
    (name) => {
      const env = services[name]!.environment!;
      const keys = Object.keys(envSchema.shape);
      for (const k of Object.keys(env)) expect(keys).toContain(k);
      // Temporal's mutual TLS: dhm's client certificate from the pki job's volume, mounted (the config checks the
      // files can be read: here they are stood in for by a readable file).
      const tlsFiles = ['TEMPORAL_TLS_CA', 'TEMPORAL_TLS_CERT', 'TEMPORAL_TLS_KEY'].filter((k) => env[k] !== undefined);
      if (roleOf(services[name]!) !== 'agents') {
        expect(tlsFiles).toHaveLength(3);
        expect(env.TEMPORAL_TLS_SERVER_NAME).toBe('temporal-frontend');
        for (const k of tlsFiles) expect(env[k]).toMatch(/^\/pki\/temporal\/client\//);
        expect(services[name]!.volumes ?? []).toContain('dhm-pki-temporal-client:/pki/temporal/client:ro');
      }
      const parsed = loadEnv({ ...env, ...Object.fromEntries(tlsFiles.map((k) => [k, path.join(ROOT, 'package.json')])) });
      if (roleOf(services[name]!) === 'agents') {
        // Agents hold no database credentials and no Temporal address: only their certificates.
        expect([parsed.DATABASE_URL, parsed.TEMPORAL_ADDRESS, parsed.DHM_AGENT_TLS_DIR]).toEqual([undefined, undefined, '/pki/servers']);
        return;
      }
      // Both databases are separate: dhm's own Postgres, never Temporal's.
      expect(new URL(parsed.DATABASE_URL!).hostname).toBe('dhm-postgres');
      expect(parsed.TEMPORAL_ADDRESS).toBe('temporal-frontend:7233');
      if (calling.includes(name)) expect(parsed.DHM_AGENT_CLIENT_TLS_DIR).toBe('/pki/control-plane');
    },
  );

  test("the agent plane's PKI: made by the pki job; agents mount only servers/, the control plane only control-plane/, nobody the CA key", () => {
    expect(services.pki!.volumes).toEqual([
      'dhm-pki-ca:/pki/ca',
      'dhm-pki-servers:/pki/servers',
      'dhm-pki-control-plane:/pki/control-plane',
      'dhm-pki-temporal-ca:/pki/temporal/ca',
      'dhm-pki-temporal-server:/pki/temporal/server',
      'dhm-pki-temporal-client:/pki/temporal/client',
      'dhm-pki-temporal-ui:/pki/temporal/ui',
    ]);
    for (const [name, s] of Object.entries(services)) {
      if (name === 'pki') continue;
      const pkiMounts = (s.volumes ?? []).filter((m) => m.startsWith('dhm-pki'));
      const role = dhm.some(([n]) => n === name) ? roleOf(s) : name;
      const want =
        role === 'agents'
          ? ['dhm-pki-servers:/pki/servers:ro']
          : calling.includes(name)
            ? ['dhm-pki-control-plane:/pki/control-plane:ro', 'dhm-pki-temporal-client:/pki/temporal/client:ro']
            : role === 'fleet-seed' || role === 'temporal-setup'
              ? ['dhm-pki-temporal-client:/pki/temporal/client:ro']
              : TEMPORAL_SERVICES.includes(name)
                ? ['dhm-pki-temporal-server:/pki/temporal/server:ro']
                : name === 'temporal-ui'
                  ? ['dhm-pki-temporal-ui:/pki/temporal/ui:ro']
                  : [];
      expect({ name, mounts: pkiMounts }).toEqual({ name, mounts: want });
    }
    // Temporal's containers run as dhm's uid (the Dockerfile's), which owns the keys the pki job writes (0600).
    const uid = /useradd --system --uid (\d+)/.exec(fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'))?.[1];
    expect(uid).toBeDefined();
    for (const name of [...TEMPORAL_SERVICES, 'temporal-setup', 'temporal-ui'])
      expect({ name, user: (services[name] as { user?: string }).user }).toEqual({ name, user: `${uid}:${uid}` });
  });

  test('ports: the API listens where it is published and probed; ops endpoints where probed', () => {
    const [[, api]] = byRole('api') as [[string, Service]];
    const env = roleEnv(api.environment);
    expect(env.DHM_API_HOST).toBe('0.0.0.0');
    expect(api.ports!.map((p) => Number(p.split(':').pop()))).toEqual([env.DHM_API_PORT]);
    expect(probedPort(api)).toBe(env.DHM_API_PORT);
    for (const [name, s] of [...byRole('worker'), ...byRole('scheduler'), ...byRole('agents')]) {
      const e = roleEnv(s.environment);
      expect({ name, host: e.DHM_METRICS_HOST }).toEqual({ name, host: '0.0.0.0' });
      expect({ name, port: probedPort(s) }).toEqual({ name, port: e.DHM_METRICS_PORT });
      expect(s.expose).toContain(String(e.DHM_METRICS_PORT));
      if (roleOf(s) === 'worker') expect(s.expose).toContain(String(e.DHM_TEMPORAL_METRICS_PORT));
    }
    const db = services['dhm-postgres']!.environment!;
    const url = new URL(roleEnv(api.environment).DATABASE_URL!);
    expect([url.username, url.password, url.pathname.slice(1)]).toEqual([db.POSTGRES_USER, db.POSTGRES_PASSWORD, db.POSTGRES_DB]);
  });

  test('agents: the fleet file exists, its agent ports are exposed, agents bind 0.0.0.0 and advertise the service name', () => {
    const [[name, agents]] = byRole('agents') as [[string, Service]];
    const fleetArg = agents.command![agents.command!.indexOf('--fleet') + 1]!;
    const fleet = loadFleetFile(path.join(ROOT, fleetArg));
    expect(fleet.servers.length).toBeGreaterThanOrEqual(3);
    const ports = fleet.servers.map((s) => s.agentPort);
    expect(ports.every((p) => p > 0)).toBe(true);
    expect(new Set(ports).size).toBe(ports.length);
    for (const p of ports) expect(agents.expose).toContain(String(p));
    const env = loadEnv(agents.environment);
    expect(env.DHM_AGENT_HOST).toBe('0.0.0.0');
    expect(env.DHM_AGENT_ADVERTISE_HOST).toBe(name);
    expect(ports).not.toContain(env.DHM_METRICS_PORT);
    // The image carries the file (Dockerfile COPY).
    expect(fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8')).toContain(`COPY ${fleetArg} ./${fleetArg}`);
  });

  test('depends_on: each role waits for what it needs, and every awaited service can report it', () => {
    const needs: Record<string, string[]> = {
      api: ['dhm-postgres', 'temporal-setup', 'agents'],
      worker: ['dhm-postgres', 'temporal-setup', 'agents'],
      scheduler: ['dhm-postgres', 'agents'],
      agents: ['pki'],
      pki: [],
      'fleet-seed': ['dhm-postgres', 'pki'],
    };
    for (const [name, s] of dhm) {
      for (const dep of needs[roleOf(s)]!) expect({ name, dep, has: s.depends_on?.[dep] !== undefined }).toEqual({ name, dep, has: true });
    }
    for (const [name, s] of Object.entries(services)) {
      for (const [dep, { condition }] of Object.entries(s.depends_on ?? {})) {
        expect(services[dep]).toBeDefined();
        if (condition === 'service_healthy')
          expect({ name, dep, healthcheck: services[dep]!.healthcheck !== undefined }).toEqual({ name, dep, healthcheck: true });
        else
          expect({ name, dep, condition, restart: services[dep]!.restart }).toEqual({ name, dep, condition: 'service_completed_successfully', restart: 'no' });
      }
    }
    // Temporal: persistence in its own Postgres, the schema job before the servers, the set-up job after the frontend.
    for (const name of TEMPORAL_SERVICES) {
      expect(services[name]!.depends_on).toMatchObject({
        'temporal-postgres': { condition: 'service_healthy' },
        'temporal-schema': { condition: 'service_completed_successfully' },
      });
    }
    expect(services['temporal-setup']!.depends_on).toMatchObject({ 'temporal-frontend': { condition: 'service_healthy' } });
    expect(services['temporal-ui']).toBeDefined();
  });

  describe('Temporal as `dhm up --temporal cluster` runs it', () => {
    const template = fs.readFileSync(path.join(ROOT, 'deploy', 'temporal', 'config', 'base.yaml'), 'utf8');
    const read = new Set([...template.matchAll(/env "([A-Z0-9_]+)"/g)].map((m) => m[1]!));
    const withoutDefault = new Set([...template.matchAll(/env "([A-Z0-9_]+)" \|(?! default)/g)].map((m) => m[1]!));
    const server = (name: string) => services[name]!;

    test('one container per service, frontend, two history, matching and worker, on the server version dhm builds', () => {
      expect(TEMPORAL_SERVICES.map((n) => server(n).environment!.TEMPORAL_SERVICE).sort()).toEqual(['frontend', 'history', 'history', 'matching', 'worker']);
      const version = TEMPORAL_SERVER_VERSION.replace(/^v/, '');
      for (const n of TEMPORAL_SERVICES) expect({ n, image: server(n).image }).toEqual({ n, image: `temporalio/server:${version}` });
      for (const n of ['temporal-schema', 'temporal-setup']) expect(server(n).image).toBe(`temporalio/admin-tools:${version}`);
      expect(server('temporal-ui').image).toBe(`temporalio/ui:${TEMPORAL_UI_SERVER_VERSION.replace(/^v/, '')}`);
    });

    test('the same configuration: deploy/temporal mounted, the server started on it as the launcher starts it', () => {
      expect(temporalDeployDir()).toBe(path.join(ROOT, 'deploy', 'temporal'));
      for (const n of TEMPORAL_SERVICES) {
        const s = server(n) as Service & { volumes?: string[] };
        expect(s.volumes).toEqual(['./deploy/temporal:/etc/temporal/dhm:ro', 'dhm-pki-temporal-server:/pki/temporal/server:ro']);
        expect(s.environment!.TEMPORAL_TLS_DIR).toBe('/pki/temporal/server');
        const script = s.command!.join('\n');
        expect(script).toContain('exec temporal-server --root /etc/temporal/dhm --config config --allow-no-auth start --service "$TEMPORAL_SERVICE"');
        const env = s.environment!;
        expect(env.TEMPORAL_DYNAMIC_CONFIG_FILE).toBe('/etc/temporal/dhm/dynamicconfig/dhm.yaml');
        expect(fs.existsSync(path.join(ROOT, 'deploy', 'temporal', 'dynamicconfig', 'dhm.yaml'))).toBe(true);
        // Every variable set is one the template reads, and every one it reads without a default is set.
        for (const k of Object.keys(env).filter((k) => k !== 'TEMPORAL_SERVICE')) expect({ n, k, read: read.has(k) }).toEqual({ n, k, read: true });
        for (const k of withoutDefault) expect({ n, k, set: env[k] !== undefined }).toEqual({ n, k, set: true });
        expect(env.TEMPORAL_FRONTEND_ADDRESS).toBe('temporal-frontend:7233');
      }
      // Five servers open up to ~30 connections each.
      const pgCmd = server('temporal-postgres').command!.join(' ');
      expect(Number(/max_connections=(\d+)/.exec(pgCmd)?.[1])).toBeGreaterThanOrEqual(150);
    });

    test("the server itself renders that configuration from a container's environment, and accepts the dynamic config", async () => {
      const tools = await clusterTools();
      const dir = path.join(ROOT, 'deploy', 'temporal');
      const env = server('temporal-history-1').environment!;
      // render-config reads --config as given (start joins it to --root).
      const out = execFileSync(tools.server, ['--config', path.join(dir, 'config'), 'render-config'], {
        env: { PATH: process.env.PATH, ...env },
        encoding: 'utf8',
      });
      const cfg = parse(out) as {
        persistence: { numHistoryShards: number; datastores: Record<string, { sql: { pluginName: string; connectAddr: string; databaseName: string } }> };
        services: Record<string, { rpc: { grpcPort: number; bindOnIP: string } }>;
        publicClient: { hostPort: string };
        global: {
          tls?: { frontend: { server: { requireClientAuth: boolean; certFile: string; clientCaFiles: string[] } }; systemWorker: { certFile: string } };
        };
      };
      // Mutual TLS on the frontend, from TEMPORAL_TLS_DIR; the system worker with its own client certificate.
      expect(cfg.global.tls?.frontend.server).toMatchObject({
        certFile: '/pki/temporal/server/server-cert.pem',
        keyFile: '/pki/temporal/server/server-key.pem',
        requireClientAuth: true,
        clientCaFiles: ['/pki/temporal/server/ca-cert.pem'],
      });
      expect(cfg.global.tls?.systemWorker.certFile).toBe('/pki/temporal/server/client-cert.pem');
      expect(cfg.persistence.numHistoryShards).toBe(Number(env.TEMPORAL_HISTORY_SHARDS));
      expect(Object.values(cfg.persistence.datastores).map((d) => [d.sql.pluginName, d.sql.connectAddr, d.sql.databaseName])).toEqual([
        ['postgres12', 'temporal-postgres:5432', 'temporal'],
        ['postgres12', 'temporal-postgres:5432', 'temporal_visibility'],
      ]);
      expect(Object.keys(cfg.services).sort()).toEqual(['frontend', 'history', 'matching', 'worker']);
      expect(cfg.services.frontend!.rpc).toMatchObject({ grpcPort: 7233, bindOnIP: '0.0.0.0' });
      expect(cfg.publicClient.hostPort).toBe('temporal-frontend:7233');
      const check = spawnSync(tools.server, ['validate-dynamic-config', path.join(dir, 'dynamicconfig', 'dhm.yaml')], { encoding: 'utf8' });
      expect({ status: check.status, out: check.stdout.trim() }).toEqual({ status: 0, out: path.join(dir, 'dynamicconfig', 'dhm.yaml') });
    });
  });

  test('the custom search attributes are registered at start, as Keyword', () => {
    const script = services['temporal-setup']!.command!.join('\n');
    for (const name of Object.keys(CUSTOM_SEARCH_ATTRIBUTES)) expect(script).toContain(name);
    expect(new Set(Object.values(CUSTOM_SEARCH_ATTRIBUTES))).toEqual(new Set(['Keyword']));
    expect(script).toContain('--type Keyword');
  });

  test('only the API is published on the host; the override publishes only the frontend (mutual TLS), on loopback by default; the Web UI never', () => {
    const published = Object.entries(services)
      .filter(([, s]) => (s.ports ?? []).length > 0)
      .map(([name]) => name);
    expect(published).toEqual(byRole('api').map(([name]) => name));
    const override = parse(fs.readFileSync(path.join(ROOT, 'deploy', 'compose.temporal-ports.yml'), 'utf8')) as { services: Record<string, Service> };
    expect(Object.keys(override.services).sort()).toEqual(['temporal-frontend']);
    for (const name of Object.keys(override.services)) expect(services[name]).toBeDefined();
    for (const s of Object.values(override.services)) for (const p of s.ports!) expect(interpolate(p, {})).toMatch(/^127\.0\.0\.1:\d+:\d+$/);
    // What is published takes mutual TLS only: the frontend's containers get TEMPORAL_TLS_DIR (the rendered
    // configuration's requireClientAuth is checked in the Temporal block above).
    expect(services['temporal-frontend']!.environment!.TEMPORAL_TLS_DIR).toBe('/pki/temporal/server');
  });

  test('the Dockerfile: a supported Node LTS, no install scripts but those package.json allows', () => {
    const df = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    const major = Number(/^ARG NODE_IMAGE=node:(\d+)-/m.exec(df)![1]);
    expect(major).toBeGreaterThanOrEqual(22);
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };
    expect(major).toBeGreaterThanOrEqual(Number(/>=\s*(\d+)/.exec(pkg.engines.node)![1]));
    const installs = df.match(/npm ci[^\n&]*/g)!;
    expect(installs.length).toBe(2);
    for (const i of installs) expect(i).toContain('--ignore-scripts');
    expect(df.match(/node scripts\/allowed-install-scripts\.js/g)!.length).toBe(2);
  });

  test('the Dockerfile: multi-stage, production dependencies, non-root, dhm as the entry point, the run-time files', () => {
    const df = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    expect(df.match(/^FROM /gm)!.length).toBeGreaterThanOrEqual(2);
    expect(df).toContain('RUN npm run build');
    expect(df).toContain('npm ci --omit=dev');
    expect(df).toMatch(/^USER (?!root)\S+/m);
    expect(df).toContain('ENTRYPOINT ["node", "bin/dhm.js"]');
    for (const p of ['inventory/migrations', 'inventory/fleets']) expect(df).toContain(`COPY ${p} ./${p}`);
  });

  const composeCli = spawnSync('docker-compose', ['version', '--short'], { encoding: 'utf8' });
  (composeCli.status === 0 ? test : test.skip)('docker-compose itself accepts the file', () => {
    execFileSync('docker-compose', ['-f', path.join(ROOT, 'docker-compose.yml'), 'config', '-q'], { env: { ...process.env, ...SECRETS }, stdio: 'pipe' });
  });
});

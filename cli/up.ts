import * as path from 'node:path';
import type { Command } from 'commander';
import { loadEnv } from '../common/config';
import { createLogger } from '../common/logger';
import { UserFacingError } from '../common/errors';
import type { TemporalClusterHandle } from '../stack/temporal-cluster';
import { startEmbeddedSystem } from '../stack/embedded-system';

/** Resolves on the first of SIGINT, SIGTERM or SIGHUP. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, () => resolve(sig));
  });
}

/** Where each process of the embedded cluster is, and what it runs on. */
function clusterLines(cluster: TemporalClusterHandle | undefined): string[] {
  if (!cluster) return [];
  const i = cluster.info;
  return [
    `  Temporal cluster: server ${i.serverVersion}, ${i.historyShardCount} shards, ${i.persistenceStore} + ${i.visibilityStore} visibility, serving after ${cluster.startupMs} ms`,
    `    processes:     ${cluster.processes.map((p) => `${p.name} (pid ${p.pid()})`).join(', ')}`,
    `    logs:          ${path.dirname(cluster.processes[0]!.logFile)}`,
  ];
}

/** `dhm up`: the whole embedded system in one foreground process with one log stream; Ctrl-C stops all of it. */
export function registerUpCommand(program: Command): void {
  program
    .command('up')
    .description('run dhm on this machine: Postgres, the Temporal dev server, sim host agents, a worker, the scheduler and the API')
    .option('--fleet <file>', 'fleet file (JSON) to seed and run agents for', undefined)
    .option(
      '--temporal <mode>',
      "dev: the CLI's dev server (default); cluster: frontend, history ×2, matching and worker processes on Postgres (DHM_TEMPORAL_MODE)",
    )
    .option('--upgrade-temporal-schema', 'cluster: upgrade an older Temporal schema to the one the server needs (back the database up first)')
    .action(async (opts: { fleet?: string; temporal?: string; upgradeTemporalSchema?: boolean }) => {
      if (opts.temporal !== undefined && !['dev', 'cluster'].includes(opts.temporal)) {
        throw new UserFacingError(`--temporal: must be dev or cluster (got ${JSON.stringify(opts.temporal)})`, '--temporal');
      }
      const env = loadEnv({
        ...process.env,
        ...(opts.fleet ? { DHM_FLEET_FILE: opts.fleet } : {}),
        ...(opts.temporal !== undefined ? { DHM_TEMPORAL_MODE: opts.temporal } : {}),
      });
      // On a terminal the banner is what a person reads: after it, only warnings and errors unless LOG_LEVEL says more.
      const logger = createLogger('dhm-up', env.LOG_LEVEL ?? (process.stdout.isTTY ? 'warn' : 'info'));
      const signal = untilSignal();
      const system = await startEmbeddedSystem({ env, logger, cluster: { upgradeSchema: opts.upgradeTemporalSchema } });
      try {
        const c = system.credentials;
        const lines = [
          'dhm is up.',
          `  API:             ${c.apiUrl}  (operator token in ${system.credentialsFile})`,
          `  Postgres:        ${system.stack.databaseUrl.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@')}`,
          `  Temporal:        ${c.temporalAddress} (namespace ${system.temporal.namespace}, task queue ${system.temporal.taskQueue})`,
          `  Temporal Web UI: ${c.temporalUiUrl ?? '(external cluster)'}`,
          ...clusterLines(system.stack.cluster),
          `  Fleet:           ${system.fleet.servers.length} servers, sim agents on loopback`,
          'Press Ctrl-C to stop.',
        ];
        process.stdout.write(`${lines.join('\n')}\n`);
        logger.info({ signal: await signal }, 'stopping');
      } finally {
        await system.stop();
      }
      process.exit(0);
    });
}

import type { Command } from 'commander';
import { loadEnv } from '../../common/config';
import { createLogger } from '../../common/logger';
import { startEmbeddedSystem } from '../embedded-system';

/** Resolves on the first of SIGINT, SIGTERM or SIGHUP. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, () => resolve(sig));
  });
}

/** `dhm up`: the whole embedded system in one foreground process with one log stream; Ctrl-C stops all of it. */
export function registerUpCommand(program: Command): void {
  program
    .command('up')
    .description('run dhm on this machine: Postgres, the Temporal dev server, sim host agents, a worker, the scheduler and the API')
    .option('--fleet <file>', 'fleet file (JSON) to seed and run agents for', undefined)
    .action(async (opts: { fleet?: string }) => {
      const env = loadEnv(opts.fleet ? { ...process.env, DHM_FLEET_FILE: opts.fleet } : process.env);
      // On a terminal the banner is what a person reads: after it, only warnings and errors unless LOG_LEVEL says more.
      const logger = createLogger('dhm-up', env.LOG_LEVEL ?? (process.stdout.isTTY ? 'warn' : 'info'));
      const signal = untilSignal();
      const system = await startEmbeddedSystem({ env, logger });
      try {
        const c = system.credentials;
        const lines = [
          'dhm is up.',
          `  API:             ${c.apiUrl}  (operator token in ${system.credentialsFile})`,
          `  Postgres:        ${system.stack.databaseUrl.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@')}`,
          `  Temporal:        ${c.temporalAddress} (namespace ${system.temporal.namespace}, task queue ${system.temporal.taskQueue})`,
          `  Temporal Web UI: ${c.temporalUiUrl ?? '(external cluster)'}`,
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

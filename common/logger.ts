import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export const LOG_FORMATS = ['json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/**
 * JSON for machines (a pipe, a file, a log collector), human-readable lines for a person at a terminal.
 * `LOG_FORMAT` decides when set; otherwise whether stdout is a terminal does.
 */
export function logFormat(env: NodeJS.ProcessEnv = process.env, isTty = Boolean(process.stdout.isTTY)): LogFormat {
  const asked = env.LOG_FORMAT;
  if (asked === 'json' || asked === 'pretty') return asked;
  return isTty ? 'pretty' : 'json';
}

/**
 * One structured logger per process; child loggers carry the component name. The pretty stream is synchronous, so a
 * line logged just before exit is not lost (pino's transport would put it on a worker thread).
 */
export function createLogger(component: string, level = process.env.LOG_LEVEL || 'info', format: LogFormat = logFormat()): Logger {
  const options = { name: 'dhm', level, base: { component, pid: process.pid } };
  if (format === 'json') return pino(options);
  return pino(
    options,
    pretty({ sync: true, colorize: Boolean(process.stdout.isTTY), ignore: 'pid,hostname,name', messageKey: 'msg', translateTime: 'SYS:HH:MM:ss.l' }),
  );
}

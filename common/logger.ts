import pino, { type Logger } from 'pino';

export type { Logger };

/** One structured logger per process; child loggers carry the component name. */
export function createLogger(component: string, level = process.env.LOG_LEVEL ?? 'info'): Logger {
  return pino({ name: 'dhm', level, base: { component, pid: process.pid } });
}

import { DefaultLogger, Runtime, type LogLevel } from '@temporalio/worker';
import type { Logger } from './logger';

let installed = false;

/**
 * Routes the Temporal SDK's own logs (worker, bundler, core) into the process's pino logger, so a service has one
 * structured log stream. Must run before the first worker or native connection is created. With
 * `metricsBindAddress` (`host:port`) the SDK's own worker metrics (task slots, poll and schedule-to-start latencies,
 * sticky cache) are served for Prometheus at `http://<bindAddress>/metrics`, prefixed `temporal_`.
 */
export function installTemporalRuntime(logger: Logger, opts: { metricsBindAddress?: string } = {}): void {
  if (installed) return;
  installed = true;
  const sdk = logger.child({ component: 'temporal-sdk' });
  const levels: Record<LogLevel, 'trace' | 'debug' | 'info' | 'warn' | 'error'> = {
    TRACE: 'trace',
    DEBUG: 'debug',
    INFO: 'info',
    WARN: 'warn',
    ERROR: 'error',
  };
  Runtime.install({
    // The process decides when to stop (and in which order); the SDK must not react to signals on its own.
    shutdownSignals: [],
    ...(opts.metricsBindAddress ? { telemetryOptions: { metrics: { prometheus: { bindAddress: opts.metricsBindAddress, countersTotalSuffix: true } } } } : {}),
    logger: new DefaultLogger('INFO', (entry) => {
      const level = levels[entry.level];
      // The bundler reports every module at INFO; that is noise in a service log.
      if (level === 'info' && /webpack|modules by path|asset workflow-bundle|\[built\]/.test(entry.message)) return;
      sdk[level]({ ...entry.meta }, entry.message);
    }),
  });
}

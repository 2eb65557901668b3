import type { Logger } from './logger';

/**
 * Runs a start-up's undo steps, last started first, each once: a failing step is logged and the rest still run, so
 * a half-started stack never leaves a process or a folder behind.
 */
export async function stopInReverse(stops: Array<() => Promise<void>>, logger: Logger, what: string): Promise<void> {
  for (const stop of stops.splice(0).reverse()) {
    try {
      await stop();
    } catch (err) {
      logger.error({ err }, `error while stopping ${what}`);
    }
  }
}

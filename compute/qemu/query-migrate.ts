import { z } from 'zod';

/**
 * The parts of QMP `query-migrate` the backend reads (QEMU 10). Lenient: QEMU adds fields between versions, and
 * most are absent in `setup` and after `cancelled`.
 */
export const queryMigrateSchema = z.object({
  status: z.string().optional(),
  'total-time': z.number().optional(),
  'expected-downtime': z.number().optional(),
  downtime: z.number().optional(),
  'setup-time': z.number().optional(),
  'cpu-throttle-percentage': z.number().optional(),
  'error-desc': z.string().optional(),
  'socket-address': z.array(z.record(z.string(), z.unknown())).optional(),
  ram: z
    .object({
      transferred: z.number(),
      remaining: z.number(),
      total: z.number(),
      mbps: z.number().optional(),
      'dirty-pages-rate': z.number().optional(),
      'dirty-sync-count': z.number().optional(),
      'page-size': z.number().optional(),
    })
    .optional(),
});
export type QueryMigrate = z.infer<typeof queryMigrateSchema>;

export const queryStatusSchema = z.object({ status: z.string(), running: z.boolean() });

import { collectDefaultMetrics, Counter, Histogram, Registry } from 'prom-client';

/**
 * The Prometheus metrics of one dhm process (prom-client, one registry per process or per test). Each role fills the
 * ones it can observe: the API counts migrations started and cancels asked for and times tenant requests (a request
 * on a migrating host is a workflow Update: `path="migration"`); a worker counts migrations completed and rolled back
 * (its `finalizeMigration` / `rollbackMigration` activities succeeding) and observes each VM move's downtime; the
 * scheduler counts de-provisionings; agents count their HTTP requests. The Temporal SDK's own worker metrics come from
 * its runtime's exporter (DHM_TEMPORAL_METRICS_PORT), not from here.
 */
export interface Metrics {
  registry: Registry;
  migrationsStarted: Counter;
  migrationCancelsRequested: Counter;
  migrationsCompleted: Counter;
  migrationsRolledBack: Counter;
  vmMoves: Counter<'direction'>;
  vmDowntime: Histogram<'direction'>;
  vmMoveDuration: Histogram<'direction'>;
  tenantRequestDuration: Histogram<'operation' | 'path' | 'outcome'>;
  deprovisions: Counter<'outcome'>;
  httpRequests: Counter<'service' | 'method' | 'route' | 'status'>;
  httpRequestDuration: Histogram<'service' | 'method' | 'route'>;
}

export function createMetrics(opts: { role?: string; defaultMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  if (opts.role) registry.setDefaultLabels({ role: opts.role });
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'dhm_' });
  const registers = [registry];
  return {
    registry,
    migrationsStarted: new Counter({ name: 'dhm_migrations_started_total', help: 'Host migrations started through the API', registers }),
    migrationCancelsRequested: new Counter({
      name: 'dhm_migration_cancels_requested_total',
      help: 'Cancels of running migrations accepted by the API',
      registers,
    }),
    migrationsCompleted: new Counter({ name: 'dhm_migrations_completed_total', help: 'Host migrations finalized (clone became the host)', registers }),
    migrationsRolledBack: new Counter({
      name: 'dhm_migrations_rolled_back_total',
      help: 'Host migrations rolled back (clone removed, target released)',
      registers,
    }),
    vmMoves: new Counter({
      name: 'dhm_vm_moves_total',
      help: 'Live VM moves finished, out to the clone or back to the source',
      labelNames: ['direction'],
      registers,
    }),
    vmDowntime: new Histogram({
      name: 'dhm_vm_downtime_seconds',
      help: 'Per-VM stop-and-copy downtime of a live move',
      labelNames: ['direction'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    vmMoveDuration: new Histogram({
      name: 'dhm_vm_move_duration_seconds',
      help: 'Wall time of a live VM move (pre-copy rounds + stop-and-copy)',
      labelNames: ['direction'],
      buckets: [0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800],
      registers,
    }),
    tenantRequestDuration: new Histogram({
      name: 'dhm_tenant_request_duration_seconds',
      help: 'Tenant VM create/delete latency; path="migration" is a workflow Update on a migrating host',
      labelNames: ['operation', 'path', 'outcome'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    }),
    deprovisions: new Counter({ name: 'dhm_deprovisions_total', help: 'Old incarnations torn down by the scheduler', labelNames: ['outcome'], registers }),
    httpRequests: new Counter({
      name: 'dhm_http_requests_total',
      help: 'HTTP requests served',
      labelNames: ['service', 'method', 'route', 'status'],
      registers,
    }),
    httpRequestDuration: new Histogram({
      name: 'dhm_http_request_duration_seconds',
      help: 'HTTP request latency',
      labelNames: ['service', 'method', 'route'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
  };
}

/** Fastify `onResponse` bookkeeping by route pattern (never the raw URL: ids would explode the label set). */
export function observeHttp(
  metrics: Metrics,
  service: string,
  req: { method: string; routeOptions?: { url?: string } },
  status: number,
  seconds: number,
): void {
  const route = req.routeOptions?.url ?? 'unmatched';
  metrics.httpRequests.inc({ service, method: req.method, route, status: String(status) });
  metrics.httpRequestDuration.observe({ service, method: req.method, route }, seconds);
}

import type { FastifyInstance, FastifyReply } from 'fastify';
import type { z } from 'zod';
import type { Resources } from '../common/resources';
import {
  acceptIncomingBodySchema,
  agentIdSchema,
  agentInfoSchema,
  commitIncomingBodySchema,
  createVmBodySchema,
  dirtyRateMeasurementSchema,
  expectedIncomingSchema,
  expectIncomingBodySchema,
  faultsSchema,
  faultsStateSchema,
  guestOpResultSchema,
  guestOpSchema,
  incarnationViewSchema,
  incomingViewSchema,
  linkMeasurementSchema,
  measureQuerySchema,
  migrationJobSchema,
  migrationWaitQuerySchema,
  routes,
  prepareIncarnationBodySchema,
  startMigrationBodySchema,
  vmViewSchema,
  type ErrorBody,
} from './agent-api';
import type { ComputeBackend } from './backend';
import { AgentFailure, invalidInput, notFound } from './errors';
import type { ExpectedMigrations } from './expected-migrations';

export interface AgentIdentity {
  serverId: string;
  bootId: string;
  capacity: Resources;
  /** Bits/s, reported as configured. */
  nicBandwidthBps: number;
}

/** Parses `data` or throws a 400 naming the first bad field, prefixed with where it came from (`spec.memoryMiB`). */
export function parseOr400<S extends z.ZodType>(schema: S, data: unknown, prefix = ''): z.infer<S> {
  const result = schema.safeParse(data);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const path = issue.path.map(String);
  if (issue.code === 'unrecognized_keys') path.push(issue.keys[0]!);
  const field = [prefix, ...path].filter((p) => p !== '').join('.') || 'body';
  throw invalidInput(field, `${field}: ${issue.message}`);
}

/** Replies are checked against the contract too: a reply that breaks it is a bug here, reported as a 500. */
function send<S extends z.ZodType>(reply: FastifyReply, schema: S, value: z.infer<S>, status = 200) {
  return reply.code(status).send(schema.parse(value));
}

type Params = Record<string, string>;
const id = (params: unknown, name: string): string => parseOr400(agentIdSchema, (params as Params)[name], name);

/** High-frequency routes (polling, guest operations) log at warn so a busy test does not drown the log. */
const quiet = { logLevel: 'warn' as const };

/** The host agent's HTTP API. Paths come from agent-api.ts so the client cannot drift from them. */
export function registerAgentRoutes(
  app: FastifyInstance,
  backend: ComputeBackend,
  me: AgentIdentity,
  opts: { expected: ExpectedMigrations; faultRoutes: boolean },
): void {
  app.get(routes.healthz, quiet, async () => ({ ok: true }));

  app.get(routes.info, quiet, async (_req, reply) =>
    send(reply, agentInfoSchema, {
      serverId: me.serverId,
      bootId: me.bootId,
      backend: backend.kind,
      capacity: me.capacity,
      nicBandwidthBps: me.nicBandwidthBps,
      incarnations: backend.incarnationIds(),
      diskKinds: [...backend.diskKinds()],
      localStorage: backend.localStorage(),
    }),
  );

  // ---- incarnations
  app.put(routes.incarnation, async (req, reply) => {
    const incarnationId = id(req.params, 'incarnationId');
    const body = parseOr400(prepareIncarnationBodySchema, req.body);
    return send(reply, incarnationViewSchema, backend.prepareIncarnation(incarnationId, body.capacity));
  });
  app.get(routes.incarnation, quiet, async (req, reply) => {
    const incarnationId = id(req.params, 'incarnationId');
    const view = backend.getIncarnation(incarnationId);
    if (!view) throw notFound('incarnationId', `no incarnation ${incarnationId} here`);
    return send(reply, incarnationViewSchema, view);
  });
  app.delete(routes.incarnation, async (req, reply) => {
    await backend.teardownIncarnation(id(req.params, 'incarnationId'));
    return reply.code(204).send();
  });

  // ---- VMs
  app.put(routes.vm, async (req, reply) => {
    const vmId = id(req.params, 'vmId');
    const body = parseOr400(createVmBodySchema, req.body);
    return send(reply, vmViewSchema, backend.createVm({ vmId, incarnationId: body.incarnationId, spec: body.spec }));
  });
  app.get(routes.vm, quiet, async (req, reply) => {
    const vmId = id(req.params, 'vmId');
    const found = backend.getVm(vmId);
    if (found && 'vm' in found) return send(reply, vmViewSchema, found.vm);
    // 404 either way (the VM is not here); a tombstone adds where it went.
    throw new AgentFailure(404, 'NOT_FOUND', found ? `VM ${vmId} has migrated to ${found.movedTo}` : `no VM ${vmId} here`, 'vmId', found?.movedTo);
  });
  app.delete(routes.vm, async (req, reply) => {
    await backend.deleteVm(id(req.params, 'vmId'));
    return reply.code(204).send();
  });
  app.post(routes.guestOps, quiet, async (req, reply) => {
    const vmId = id(req.params, 'vmId');
    const op = parseOr400(guestOpSchema, req.body);
    return send(reply, guestOpResultSchema, await backend.guestOp(vmId, op));
  });

  // ---- measurements (501 from a backend that cannot measure: the control plane then uses the declared hint)
  const notImplemented = (what: string) => new AgentFailure(501, 'NOT_IMPLEMENTED', `the ${backend.kind} backend does not measure ${what}`);
  app.get(routes.dirtyRate, quiet, async (req, reply) => {
    const vmId = id(req.params, 'vmId');
    const { sampleMs } = parseOr400(measureQuerySchema, req.query);
    if (!backend.measureDirtyRate) throw notImplemented('dirty rates');
    return send(reply, dirtyRateMeasurementSchema, await backend.measureDirtyRate(vmId, sampleMs));
  });
  app.get(routes.link, quiet, async (req, reply) => {
    const { sampleMs } = parseOr400(measureQuerySchema, req.query);
    if (!backend.measureLink) throw notImplemented('its link');
    return send(reply, linkMeasurementSchema, await backend.measureLink(sampleMs));
  });

  // ---- outbound migrations
  app.put(routes.migration, async (req, reply) => {
    const jobId = id(req.params, 'jobId');
    const body = parseOr400(startMigrationBodySchema, req.body);
    const { waitMs } = parseOr400(migrationWaitQuerySchema, req.query);
    const started = await backend.startMigration({ jobId, ...body });
    // Start and follow in one round trip: a short move is answered finished, without a second request.
    const job = waitMs && started.state === 'running' ? ((await backend.waitForMigration(jobId, waitMs)) ?? started) : started;
    return send(reply, migrationJobSchema, job);
  });
  app.get(routes.migration, quiet, async (req, reply) => {
    const jobId = id(req.params, 'jobId');
    const { waitMs } = parseOr400(migrationWaitQuerySchema, req.query);
    const job = waitMs ? await backend.waitForMigration(jobId, waitMs) : backend.getMigration(jobId);
    if (!job) throw notFound('jobId', `no migration ${jobId} here`);
    return send(reply, migrationJobSchema, job);
  });
  app.post(routes.cancelMigration, async (req, reply) => send(reply, migrationJobSchema, await backend.cancelMigration(id(req.params, 'jobId'))));

  // ---- inbound migrations: the control plane names the job, its VM and its source; then the source calls the rest
  app.put(routes.expectIncoming, async (req, reply) => {
    const jobId = id(req.params, 'jobId');
    return send(reply, expectedIncomingSchema, opts.expected.expect(jobId, parseOr400(expectIncomingBodySchema, req.body)));
  });

  // ---- inbound migrations (agent to agent)
  app.put(routes.incoming, async (req, reply) => {
    const jobId = id(req.params, 'jobId');
    const body = parseOr400(acceptIncomingBodySchema, req.body);
    return send(reply, incomingViewSchema, backend.acceptIncoming(jobId, body));
  });
  app.post(routes.commitIncoming, async (req, reply) => {
    const jobId = id(req.params, 'jobId');
    const body = parseOr400(commitIncomingBodySchema, req.body);
    return send(reply, vmViewSchema, await backend.commitIncoming(jobId, body));
  });
  app.delete(routes.incoming, async (req, reply) => {
    backend.releaseIncoming(id(req.params, 'jobId'));
    return reply.code(204).send();
  });

  // ---- faults (test only): not even a route unless the agent was started for tests
  if (!opts.faultRoutes) return;
  app.put(routes.faults, async (req, reply) => send(reply, faultsStateSchema, backend.setFaults(parseOr400(faultsSchema, req.body))));
  app.get(routes.faults, async (_req, reply) => send(reply, faultsStateSchema, backend.faults()));
}

export function errorBody(code: string, message: string, field?: string, movedTo?: string): ErrorBody {
  return { error: { code, message, ...(field ? { field } : {}), ...(movedTo ? { movedTo } : {}) } };
}

import { z } from 'zod';
import { resourcesSchema } from '../common/resources';
import { DISK_KINDS, vmSpecSchema } from '../common/vm-spec';

/**
 * The host agent's HTTP contract: every route's path, request body and reply, as zod schemas shared by the
 * service (which parses requests and its own replies) and the client (which parses replies).
 *
 * Units: `AgentInfo.nicBandwidthBps` is bits/s, as in the fleet file. Every other rate here
 * (`bandwidthCapBps`, `dirtyRateBps`, `throughputBps`) is bytes/s, the unit of the migration model.
 * Requests are strict (an unknown key is a 400 naming it); replies are parsed leniently so an agent may add fields.
 */

/** Ids the agent stores: safe in a URL path segment, case preserved (ids come from other services). */
export const agentIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/, 'letters, digits, ".", "_", ":" and "-" only');

/** Resource amounts that may be zero (what is used or free), unlike `resourcesSchema` (what is asked for). */
export const amountsSchema = z.object({
  vcpus: z.number().int().min(0),
  memoryMiB: z.number().int().min(0),
  diskGiB: z.number().int().min(0),
});

/** The VM spec (resources and the sim's workload) is the one of common/vm-spec.ts: the API, the inventory and the agents accept the same specs. */
export { vmSpecSchema, workloadSchema, type VmSpec } from '../common/vm-spec';

export const backendKindSchema = z.enum(['sim', 'qemu']);
export type BackendKind = z.infer<typeof backendKindSchema>;

// ---- errors ---------------------------------------------------------------------------------------------------

export const errorBodySchema = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    field: z.string().optional(),
    /** With `VM_MOVED` (and on a 404 for a VM that left): the agent URL the VM went to. */
    movedTo: z.string().optional(),
  }),
});
export type ErrorBody = z.infer<typeof errorBodySchema>;

// ---- info ------------------------------------------------------------------------------------------------------

export const agentInfoSchema = z.object({
  serverId: z.string(),
  /** Fresh per start: a different value means the agent restarted and lost its VMs. */
  bootId: z.string(),
  backend: backendKindSchema,
  capacity: resourcesSchema,
  /** Bits per second, as in the fleet file. */
  nicBandwidthBps: z.number().positive(),
  incarnations: z.array(z.string()),
  /** The disk kinds its VMs may have (a qemu agent serves `network` only when the fleet has a storage service). */
  diskKinds: z.array(z.enum(DISK_KINDS)),
  /** The tenants' local disks on this server: bytes held now, and bytes destroyed since the agent started. */
  localStorage: z.object({ diskBytes: z.number().min(0), wipedBytes: z.number().min(0) }),
});
export type AgentInfo = z.infer<typeof agentInfoSchema>;

// ---- incarnations ----------------------------------------------------------------------------------------------

export const prepareIncarnationBodySchema = z.object({ capacity: resourcesSchema }).strict();

export const incarnationViewSchema = z.object({
  incarnationId: z.string(),
  serverId: z.string(),
  capacity: resourcesSchema,
  /** VMs placed here plus capacity reserved for incoming migrations. */
  used: amountsSchema,
  free: amountsSchema,
  vmIds: z.array(z.string()),
});
export type IncarnationView = z.infer<typeof incarnationViewSchema>;

// ---- VMs -------------------------------------------------------------------------------------------------------

export const createVmBodySchema = z.object({ incarnationId: agentIdSchema, spec: vmSpecSchema }).strict();

export const vmStateSchema = z.enum(['running', 'migrating', 'paused-for-switchover']);
export type VmState = z.infer<typeof vmStateSchema>;

export const vmViewSchema = z.object({
  vmId: z.string(),
  incarnationId: z.string(),
  serverId: z.string(),
  spec: vmSpecSchema,
  state: vmStateSchema,
  counter: z.number().int().min(0),
  /** Auto-converge's throttle on the guest now, % of its CPU time (absent: not throttled); its operations slow accordingly. */
  throttlePct: z.number().min(0).max(100).optional(),
});
export type VmView = z.infer<typeof vmViewSchema>;

// ---- guest operations ------------------------------------------------------------------------------------------

export const guestOpSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('increment') }).strict(),
  z.object({ kind: z.literal('read') }).strict(),
]);
export type GuestOp = z.infer<typeof guestOpSchema>;

export const guestOpResultSchema = z.object({
  vmId: z.string(),
  counter: z.number().int().min(0),
  /** The server whose agent served the operation (where the VM runs). */
  servedBy: z.string(),
});
export type GuestOpResult = z.infer<typeof guestOpResultSchema>;

// ---- migrations ------------------------------------------------------------------------------------------------

export const migrationTargetSchema = z.object({ agentUrl: z.url({ protocol: /^https$/ }), incarnationId: agentIdSchema }).strict();

export const startMigrationBodySchema = z
  .object({
    vmId: agentIdSchema,
    target: migrationTargetSchema,
    maxDowntimeMs: z.number().positive().max(3_600_000),
    /** Bytes/s; caps this one stream below its fair share of the NIC. */
    bandwidthCapBps: z.number().positive().max(1e13).optional(),
    autoConverge: z.boolean(),
    maxRounds: z.number().int().min(1).max(1000).optional(),
    /**
     * Migration channels of this move (QEMU's multifd with `multifd-channels`): one VM's move may then use up to this
     * many times one channel's throughput, up to the whole NIC. Omitted: 1, a single stream.
     */
    channels: z.number().int().min(1).max(64).optional(),
    /**
     * Switch the move to post-copy when pre-copy does not converge (QEMU's `postcopy-ram` + `migrate-start-postcopy`)
     * instead of failing it: the VM then runs on the target and fetches its missing pages from the source. The risk:
     * from that moment the VM's memory is split over two servers, so a network break during post-copy loses it unless
     * the move is paused and recovered (`migrate-pause` / `migrate-recover`). Omitted: false.
     */
    postCopy: z.boolean().optional(),
  })
  .strict();
export type StartMigrationBody = z.infer<typeof startMigrationBodySchema>;
export type StartMigrationInput = StartMigrationBody & { jobId: string };

export const migrationStateSchema = z.enum(['running', 'completed', 'failed', 'cancelled']);
export type MigrationState = z.infer<typeof migrationStateSchema>;

/** The guest memory's part of a move: sent so far (pre-copy rounds included, so it can exceed the total) and still to go. */
export const memoryProgressSchema = z.object({
  bytesTotal: z.number().min(0),
  bytesTransferred: z.number().min(0),
  bytesRemaining: z.number().min(0),
});
export type MemoryProgress = z.infer<typeof memoryProgressSchema>;

/**
 * The local disks' part of a move (all of the VM's local disks together): the bulk copy plus blocks the guest wrote
 * again meanwhile. `bytesCopied` counts both, so it can exceed `bytesTotal`; `bytesRemaining` is what is still dirty
 * or not yet copied. Null when the VM has no local disk to copy (network disks move nothing).
 */
export const diskProgressSchema = z.object({
  bytesTotal: z.number().min(0),
  bytesCopied: z.number().min(0),
  bytesRemaining: z.number().min(0),
});
export type DiskProgress = z.infer<typeof diskProgressSchema>;

export const migrationJobSchema = z.object({
  jobId: z.string(),
  vmId: z.string(),
  target: z.object({ agentUrl: z.string(), incarnationId: z.string() }),
  state: migrationStateSchema,
  /** 0-based index of the current (or last) pre-copy round; the stop-and-copy is not counted as a round. */
  round: z.number().int().min(0),
  bytesSent: z.number().min(0),
  /** Left in the current round plus what has been dirtied since it began (at most W): what still has to go. */
  bytesRemaining: z.number().min(0),
  memoryBytes: z.number().min(0),
  /** Progress in two parts: the guest memory, and the local disks (null: none to copy). `bytesSent`/`bytesRemaining` above are their sums. */
  memory: memoryProgressSchema,
  disk: diskProgressSchema.nullable(),
  /** Bytes/s, after auto-converge throttling. */
  dirtyRateBps: z.number().min(0),
  /** Bytes/s: while running, this stream's current share of the NIC; once finished, its average over the job. */
  throughputBps: z.number().min(0),
  throttlePct: z.number().min(0).max(100),
  /** Simulated milliseconds the VM was paused for the switchover. */
  downtimeMs: z.number().min(0).optional(),
  /** Simulated milliseconds from the first byte to the VM running on the target (or to the failure). */
  totalTimeMs: z.number().min(0).optional(),
  /**
   * Milliseconds of a completed move off the link: before its first byte (destination started, VM accepted) and after
   * (commit). The workflow's concurrency reads it (workflows/scheduler.ts `setupEstimateMs`).
   */
  setupMs: z.number().min(0).optional(),
  /**
   * Where the job's wall time went, ms per phase in order (qemu: waiting for the target to listen, the disk mirror's
   * start, copy and sync, the RAM migration, the disks' switchover, the commit, the source's stop; `target.*` the
   * destination's own set-up as it reported it). Absent for backends that do not measure it.
   */
  phasesMs: z.record(z.string(), z.number().min(0)).optional(),
  startedAt: z.string(),
  finishedAt: z.string().optional(),
  /** code: 'NotConverging' | 'TargetUnavailable' | 'InjectedFault' | 'Cancelled' (| 'AgentStopped' on shutdown). */
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type MigrationJob = z.infer<typeof migrationJobSchema>;

/** The longest a `GET migration` (or `PUT migration`) long-poll may hold its request. */
export const MAX_MIGRATION_WAIT_MS = 30_000;

/**
 * Query of `GET /v1/migrations/:jobId`. With `waitMs` the agent holds the request until the job leaves `while`
 * (only `running` can be left; the default) or `waitMs` has passed, then answers the job as it is: a follower learns
 * of the end at once instead of at its next poll. Without it the agent answers at once. An agent that predates the
 * parameter ignores it and answers at once, so a client must not assume it waited.
 */
export const migrationWaitQuerySchema = z
  .object({
    waitMs: z.coerce.number().int().min(0).max(MAX_MIGRATION_WAIT_MS).optional(),
    while: z.literal('running').optional(),
  })
  .strict();
export type MigrationWaitQuery = z.infer<typeof migrationWaitQuerySchema>;

// ---- measurements ----------------------------------------------------------------------------------------------

/**
 * What dhm decides a move's settings from (auto-converge, streams, caps): measured on the agent, never taken from the
 * tenant's declared workload (at most a hint). Two measurements, each the analogue of a QEMU tool:
 *
 * - A VM's **dirty rate** before its move: `GET /v1/vms/:vmId/dirty-rate?sampleMs=` — QEMU's `calc-dirty-rate`
 *   (calc-time = sampleMs, then `query-dirty-rate` until its status is `measured`; its `dirty-rate` is MiB/s). The
 *   rate is the distinct memory dirtied over the sample divided by its length, so a guest rewriting a small hot set
 *   measures lower over a long sample than over a short one, as in QEMU. During a move the job's `dirtyRateBps`
 *   (QEMU: query-migrate's `ram.dirty-pages-rate` × page size) is the live figure.
 * - The **migration path** of the server: `GET /v1/link?sampleMs=` — the NIC's bandwidth and the throughput one
 *   migration stream (one channel) has been measured to reach alone on it. The agent measures it once, on an idle link
 *   (the first call, made before any move starts), and answers that measurement afterwards.
 *
 * Backends that cannot measure answer 501 `NOT_IMPLEMENTED`; the control plane then falls back on the declared hint.
 */
export const measureQuerySchema = z
  .object({
    /** How long to sample, ms (QEMU's calc-time is whole seconds: a qemu agent rounds up). Default 1000. */
    sampleMs: z.coerce.number().int().min(100).max(60_000).default(1000),
  })
  .strict();
export type MeasureQuery = z.infer<typeof measureQuerySchema>;

export const dirtyRateMeasurementSchema = z.object({
  vmId: z.string(),
  /** Bytes/s of distinct guest memory dirtied over the sample (after any auto-converge throttle in force). */
  dirtyRateBps: z.number().min(0),
  /** How long the sample really was, ms (simulated ms on a sim agent). */
  sampleMs: z.number().min(0),
  /** How it was measured: `sim` (the model, with measurement noise), `calc-dirty-rate` (QEMU's page sampling), `dirty-ring`, `dirty-bitmap`. */
  method: z.string(),
});
export type DirtyRateMeasurement = z.infer<typeof dirtyRateMeasurementSchema>;

export const linkMeasurementSchema = z.object({
  serverId: z.string(),
  /** The NIC's bandwidth B, bytes/s (as configured; the fleet file's bits/s ÷ 8). */
  nicBytesPerSec: z.number().positive(),
  /**
   * Measured: what one migration stream (one channel: a single TCP connection and the thread behind it) carries alone
   * on this link, bytes/s (≤ B). A move with `channels` k gets at most min(B, k × this).
   */
  streamBytesPerSec: z.number().positive(),
  sampleMs: z.number().min(0),
  /** `sim` (the model, with measurement noise), `probe` (a timed transfer to a peer), `migration` (a finished move's ram.mbps). */
  method: z.string(),
});
export type LinkMeasurement = z.infer<typeof linkMeasurementSchema>;

// ---- agent-to-agent: receiving a migration ---------------------------------------------------------------------

/** The source asks the target to reserve room for a VM before it sends a byte. */
export const acceptIncomingBodySchema = z
  .object({
    vmId: agentIdSchema,
    incarnationId: agentIdSchema,
    spec: vmSpecSchema,
    sourceServerId: z.string().min(1),
    /** The move's channels and post-copy permission (qemu: the destination's multifd and postcopy-ram must match the source's). */
    channels: z.number().int().min(1).max(64).optional(),
    postCopy: z.boolean().optional(),
  })
  .strict();
export type AcceptIncomingBody = z.infer<typeof acceptIncomingBodySchema>;

export const incomingViewSchema = z.object({
  jobId: z.string(),
  vmId: z.string(),
  incarnationId: z.string(),
  serverId: z.string(),
  bootId: z.string(),
  state: z.enum(['reserved', 'committed']),
  /**
   * Where the destination listens once it does (qemu): `tcp:<target's migration address>:<port>` between servers,
   * `unix:<path>` between agents of one host. The source migrates there; until it is set the source asks again.
   */
  migrationUri: z.string().optional(),
  /** The destination requires TLS (the fleet's CA, the source server's certificate). */
  tls: z.boolean().optional(),
  /**
   * Where the target exports the VM's empty local disks, writable, for the source's mirror (qemu): `tcp:<host>:<port>`
   * or `unix:<path>`, export names `disk<i>` in the spec's disk order; with TLS when `tls` is.
   */
  nbdAddress: z.string().optional(),
  /**
   * Where the destination's set-up time went, ms (qemu, once it listens): `qemuStart` from the accept to QEMU's QMP
   * answering, `listenSetup` from then to listening (capabilities, TLS objects, NBD exports, migrate-incoming).
   */
  setupMs: z.record(z.string(), z.number().min(0)).optional(),
});
export type IncomingView = z.infer<typeof incomingViewSchema>;

/** At switchover the source hands over the VM's state; the target starts it. */
export const commitIncomingBodySchema = z.object({ vmId: agentIdSchema, spec: vmSpecSchema, counter: z.number().int().min(0) }).strict();
export type CommitIncomingBody = z.infer<typeof commitIncomingBodySchema>;

/**
 * The control plane tells a target to expect a job before the source starts it: a peer server may then call the
 * incoming-migration routes of that job, for that VM and incarnation, and only that source server (mTLS identity).
 */
export const expectIncomingBodySchema = z.object({ vmId: agentIdSchema, incarnationId: agentIdSchema, sourceServerId: z.string().min(1).max(128) }).strict();
export type ExpectIncomingBody = z.infer<typeof expectIncomingBodySchema>;
export const expectedIncomingSchema = expectIncomingBodySchema.extend({ jobId: z.string() });
export type ExpectedIncoming = z.infer<typeof expectedIncomingSchema>;

// ---- faults ----------------------------------------------------------------------------------------------------

/** Test-only. Keys left out keep their value; `failMigrationAtRound: null` clears a pending failure. */
export const faultsSchema = z
  .object({
    /** The next outbound migration fails with `InjectedFault` when it reaches this pre-copy round. */
    failMigrationAtRound: z.number().int().min(0).nullable().optional(),
    /** Every route but the faults route answers 503 `AGENT_UNAVAILABLE`. */
    unreachable: z.boolean().optional(),
    /** Divides the NIC bandwidth (1 = normal). */
    linkSlowdown: z.number().min(1).max(1e6).optional(),
  })
  .strict();
export type Faults = z.infer<typeof faultsSchema>;

export const faultsStateSchema = z.object({
  failMigrationAtRound: z.number().int().nullable(),
  unreachable: z.boolean(),
  linkSlowdown: z.number(),
});
export type FaultsState = z.infer<typeof faultsStateSchema>;

// ---- routes ----------------------------------------------------------------------------------------------------

/** Route templates, as the service registers them. */
export const routes = {
  healthz: '/healthz',
  info: '/v1/info',
  incarnation: '/v1/incarnations/:incarnationId',
  vm: '/v1/vms/:vmId',
  guestOps: '/v1/vms/:vmId/guest-ops',
  dirtyRate: '/v1/vms/:vmId/dirty-rate',
  link: '/v1/link',
  migration: '/v1/migrations/:jobId',
  cancelMigration: '/v1/migrations/:jobId/cancel',
  incoming: '/v1/incoming-migrations/:jobId',
  commitIncoming: '/v1/incoming-migrations/:jobId/commit',
  expectIncoming: '/v1/expected-migrations/:jobId',
  /** Only on agents started with fault injection on (DHM_AGENT_FAULTS=1, the tests' stacks): 404 elsewhere. */
  faults: '/v1/faults',
} as const;

/** A template with its one parameter filled in, URL-encoded. */
const fill = (template: string) => (id: string) => template.replace(/:[A-Za-z]+/, encodeURIComponent(id));

/** Concrete paths, as the client calls them. */
export const paths = {
  healthz: routes.healthz,
  info: routes.info,
  incarnation: fill(routes.incarnation),
  vm: fill(routes.vm),
  guestOps: fill(routes.guestOps),
  dirtyRate: fill(routes.dirtyRate),
  link: routes.link,
  migration: fill(routes.migration),
  cancelMigration: fill(routes.cancelMigration),
  incoming: fill(routes.incoming),
  commitIncoming: fill(routes.commitIncoming),
  expectIncoming: fill(routes.expectIncoming),
  faults: routes.faults,
};

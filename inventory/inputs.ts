import { z } from 'zod';
import { idSchema } from '../common/fleet';
import { afterDeprovisionSchema } from '../common/migration';
import { MAX_DISK_GIB } from '../common/resources';
import { vmSpecSchema, volumeIdSchema } from '../common/vm-spec';
import { invalidInput } from './errors';
import { IDLE_SERVER_STATES, SERVER_STATES } from './types';

/**
 * The inventory's door: every operation's input, validated before any SQL runs. Ids, VM specs and the
 * de-provisioning after-state are common/ schemas (the API and the workflow use the same ones); what is only the
 * inventory's — who acts, migration ids as the inventory keys them — is defined here.
 */

/** Who acts, as the audit log records it (`operator`, `tenant:<id>`, `migration:<id>`, `scheduler:<id>`). */
export const actorSchema = z.string().min(1).max(200);
/** Migration ids are derived from workflow ids (which embed the host id), so they may be longer than entity ids. */
export const migrationIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[a-z0-9][a-z0-9._-]*$/, 'lowercase letters, digits, ".", "_" and "-" only');
const nameSchema = z.string().min(1).max(200);
const schedulerIdSchema = z.string().min(1).max(100); // the audit actor is `scheduler:<id>`, at most 200

export function parse<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  const r = schema.safeParse(input);
  if (!r.success) throw invalidInput(r.error);
  return r.data;
}

export { idSchema };
export const tenantInput = z.object({ name: nameSchema, actor: actorSchema });
export const tenantActionInput = z.object({ tenantId: idSchema, actor: actorSchema });
/** A quota: a whole number, or null for the default. */
const quotaValue = (max: number, min = 0) => z.number().int().min(min).max(max).nullable().optional();
export const setQuotasInput = z
  .object({
    tenantId: idSchema,
    hostsPerZoneClass: quotaValue(100_000),
    vmsPerHost: quotaValue(100_000),
    requestsPerSecond: quotaValue(100_000, 1),
    actor: actorSchema,
  })
  .strict();
export const createHostInput = z.object({
  tenantId: idSchema,
  name: nameSchema,
  zone: idSchema,
  resourceClass: idSchema,
  dedicatedHostId: idSchema.optional(),
  actor: actorSchema,
});
export const deleteHostInput = z.object({
  dedicatedHostId: idSchema,
  tenantId: idSchema.optional(),
  afterState: afterDeprovisionSchema.default('available'),
  actor: actorSchema,
});
export const placeVmInput = z.object({
  vmId: idSchema.optional(),
  tenantId: idSchema.optional(),
  dedicatedHostId: idSchema,
  name: nameSchema,
  spec: vmSpecSchema,
  incarnationId: idSchema.optional(),
  migrationId: migrationIdSchema.optional(),
  actor: actorSchema,
});
export const deleteVmInput = z.object({
  vmId: idSchema,
  tenantId: idSchema.optional(),
  migrationId: migrationIdSchema.optional(),
  actor: actorSchema,
});
export const markLostInput = z.object({ vmId: idSchema, migrationId: migrationIdSchema, reason: z.string().min(1).max(2000), actor: actorSchema });
export const hostMigrationInput = z.object({ dedicatedHostId: idSchema, migrationId: migrationIdSchema, actor: actorSchema });
export const reserveInput = hostMigrationInput.extend({ targetServerId: idSchema.optional() });
export const cloneInput = hostMigrationInput.extend({ serverId: idSchema, incarnationId: idSchema.optional() });
export const provisionInput = hostMigrationInput.extend({
  vmId: idSchema,
  name: nameSchema,
  spec: vmSpecSchema,
  tenantId: idSchema.optional(),
});
export const moveInput = z.object({ vmId: idSchema, migrationId: migrationIdSchema, toIncarnationId: idSchema, actor: actorSchema });
export const finalizeInput = hostMigrationInput.extend({ afterState: afterDeprovisionSchema.default('available') });
export const claimInput = z.object({
  schedulerId: schedulerIdSchema,
  limit: z.number().int().min(1).max(1000).default(10),
  staleAfterMs: z
    .number()
    .int()
    .min(0)
    .max(7 * 24 * 3600 * 1000)
    .default(5 * 60 * 1000),
});
export const jobInput = z.object({ jobId: z.number().int().positive(), schedulerId: schedulerIdSchema });
export const releaseJobInput = jobInput.extend({ error: z.string().max(10_000), giveUp: z.boolean().default(false) });
export const jobStateInput = z.enum(['pending', 'done']);
export const serverStateInput = z.object({ serverId: idSchema, state: z.enum(IDLE_SERVER_STATES), actor: actorSchema });
export const listServersInput = z.object({
  zone: idSchema.optional(),
  resourceClass: idSchema.optional(),
  state: z.enum(SERVER_STATES).optional(),
});
export const listVmsInput = z.object({ dedicatedHostId: idSchema, tenantId: idSchema.optional(), includeDeleted: z.boolean().default(false) });
export const listIncarnationsInput = z.object({ dedicatedHostId: idSchema, includeDeleted: z.boolean().default(false) });
export const eventsInput = z.object({
  dedicatedHostId: idSchema.optional(),
  migrationId: migrationIdSchema.optional(),
  afterId: z.number().int().min(0).optional(),
  limit: z.number().int().min(1).max(10_000).default(1000),
});
export const createVolumeInput = z.object({
  tenantId: idSchema,
  name: nameSchema,
  zone: idSchema,
  sizeGiB: z.number().int().min(1).max(MAX_DISK_GIB),
  volumeId: volumeIdSchema.optional(),
  actor: actorSchema,
});
export const volumeLookupInput = z.object({ volumeId: volumeIdSchema, tenantId: idSchema.optional() });
export const deleteVolumeInput = volumeLookupInput.extend({ actor: actorSchema });

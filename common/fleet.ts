import { z } from 'zod';
import { resourcesSchema } from './resources';

/**
 * A fleet file seeds the inventory (servers) and tells `dhm up` which host agents to run.
 * A server's capacity is at least its resource class's; a dedicated host on it is given exactly the class amounts.
 */
export const idSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[a-z0-9][a-z0-9._-]*$/, 'lowercase letters, digits, ".", "_" and "-" only');

export const fleetServerSchema = z
  .object({
    id: idSchema,
    zone: idSchema,
    resourceClass: idSchema,
    capacity: resourcesSchema,
    /** NIC bandwidth in bits per second (10 Gbit/s = 10e9). */
    nicBandwidthBps: z.number().positive().max(1e13),
    /** Port of its host agent on loopback; 0 lets the OS choose (tests). */
    agentPort: z.number().int().min(0).max(65535).default(0),
    backend: z.enum(['sim', 'qemu']).default('sim'),
    /** The server reaches its zone's storage service, so its VMs may have network disks (volumes). Omitted: true. */
    networkStorage: z.boolean().optional(),
  })
  .strict();
export type FleetServer = z.infer<typeof fleetServerSchema>;

/**
 * How VM memory crosses the network between servers. `tls` (the default): QEMU's TLS with the fleet's CA (a
 * certificate per server, made by dhm). `insecure` (as Proxmox's `migration: insecure`): plaintext, only when the
 * fleet says so explicitly; dhm warns at start. Migrations between agents of one host use a UNIX socket either way.
 */
export const fleetMigrationSchema = z.object({ transport: z.enum(['tls', 'insecure']).default('tls') }).strict();
export type FleetMigration = z.infer<typeof fleetMigrationSchema>;

/**
 * The fleet's storage service for network disks: an NBD server every server reaches (export name = volume id),
 * with TLS from the fleet's CA when `migration.transport` is tls (`serverName`: the name in its certificate).
 */
export const fleetStorageSchema = z
  .object({
    nbd: z.object({ host: z.string().min(1), port: z.number().int().min(1).max(65535).default(10809), serverName: idSchema.default('storage') }).strict(),
  })
  .strict();
export type FleetStorage = z.infer<typeof fleetStorageSchema>;

export const fleetSchema = z
  .object({
    zones: z.array(idSchema).min(1),
    resourceClasses: z.record(idSchema, resourcesSchema),
    servers: z.array(fleetServerSchema).min(1),
    migration: fleetMigrationSchema.optional(),
    storage: fleetStorageSchema.optional(),
  })
  .strict()
  .superRefine((fleet, ctx) => {
    const ids = new Set<string>();
    fleet.servers.forEach((s, i) => {
      if (ids.has(s.id)) ctx.addIssue({ code: 'custom', path: ['servers', i, 'id'], message: `duplicate server id ${s.id}` });
      ids.add(s.id);
      if (!fleet.zones.includes(s.zone)) ctx.addIssue({ code: 'custom', path: ['servers', i, 'zone'], message: `unknown zone ${s.zone}` });
      const cls = fleet.resourceClasses[s.resourceClass];
      if (!cls) {
        ctx.addIssue({ code: 'custom', path: ['servers', i, 'resourceClass'], message: `unknown resource class ${s.resourceClass}` });
      } else if (s.capacity.vcpus < cls.vcpus || s.capacity.memoryMiB < cls.memoryMiB || s.capacity.diskGiB < cls.diskGiB) {
        ctx.addIssue({ code: 'custom', path: ['servers', i, 'capacity'], message: `smaller than resource class ${s.resourceClass}` });
      }
    });
  });
export type Fleet = z.infer<typeof fleetSchema>;

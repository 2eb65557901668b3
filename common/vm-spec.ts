import { z } from 'zod';
import { MAX_DISK_GIB, MAX_MEMORY_MIB, resourcesSchema } from './resources';

/**
 * A VM's spec: what the API accepts, the inventory records and the host agents run. One schema, so a spec one of them
 * accepts is never refused by another.
 */

/** Sim-only workload knobs: how fast the guest dirties memory (D), how much of it it rewrites (W), and how fast it writes its local disks. */
export const workloadSchema = z
  .object({
    dirtyRateMiBps: z.number().min(0).max(1e6),
    workingSetMiB: z.number().min(0).max(MAX_MEMORY_MIB),
    /**
     * MiB/s the guest writes over the rest of its memory (the cold set, outside the working set), each write on a page
     * at random (compute/sim/dirty-model.ts). Omitted: 0 (all writes go to the working set).
     */
    coldDirtyRateMiBps: z.number().min(0).max(1e6).optional(),
    /**
     * GiB of its local disks the guest has written (at most their size): what a move's disk mirror copies; blocks
     * never written read as zeros and are skipped (QEMU's mirror with zero detection). Omitted: 0, a fresh disk.
     */
    diskUsedGiB: z.number().min(0).max(MAX_DISK_GIB).optional(),
    /** MiB/s the guest writes to its local disks: blocks the mirror sends again, then mirrors as they are written. */
    diskWriteMiBps: z.number().min(0).max(1e6).optional(),
  })
  .strict();
export type Workload = z.infer<typeof workloadSchema>;

/** At most this many disks per VM (a guest's virtio slots are few; a spec is not a place to store a list). */
export const MAX_DISKS = 8;

/** A disk's name inside its VM (`root`, `data`...): what the guest's device is called. */
export const diskNameSchema = z
  .string()
  .min(1)
  .max(32)
  .regex(/^[a-z][a-z0-9-]*$/, 'lowercase letters, digits and "-", starting with a letter');

/** A network volume's id: an inventory id, also the storage service's export name. */
export const volumeIdSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[a-z0-9][a-z0-9._-]*$/, 'lowercase letters, digits, ".", "_" and "-" only');

/** On the server's own storage: counted in `diskGiB`, copied to the target when the VM moves. */
export const localDiskSchema = z.object({ name: diskNameSchema, kind: z.literal('local'), sizeGiB: z.number().int().min(1).max(MAX_DISK_GIB) }).strict();
/** A volume of the storage service both servers reach: re-attached on the target, nothing copied. */
export const networkDiskSchema = z.object({ name: diskNameSchema, kind: z.literal('network'), volumeId: volumeIdSchema }).strict();
export const diskSchema = z.discriminatedUnion('kind', [localDiskSchema, networkDiskSchema]);
export type Disk = z.infer<typeof diskSchema>;
export type LocalDisk = z.infer<typeof localDiskSchema>;
export type NetworkDisk = z.infer<typeof networkDiskSchema>;
export const DISK_KINDS = ['local', 'network'] as const;
export type DiskKind = (typeof DISK_KINDS)[number];

export const disksSchema = z
  .array(diskSchema)
  .min(1)
  .max(MAX_DISKS)
  .describe(`at most ${MAX_DISKS}; names unique; local sizeGiB sum to at most diskGiB; omitted: one local disk "root" of diskGiB`);

/**
 * Rules of a VM spec that a JSON Schema cannot state (they relate fields). `withVmSpecRules` enforces them; the API
 * document carries them as `x-dhm-rules`, so a client generated from it knows them too.
 */
export const VM_SPEC_RULES = [
  { rule: 'lessOrEqual', field: 'workload.workingSetMiB', than: 'memoryMiB', message: 'cannot exceed memoryMiB (the working set is part of the guest memory)' },
  { rule: 'lessOrEqual', field: 'workload.diskUsedGiB', than: 'diskGiB', message: 'cannot exceed diskGiB (the data is on the local disks)' },
  {
    rule: 'sumLessOrEqual',
    items: 'disks',
    where: { kind: 'local' },
    field: 'sizeGiB',
    than: 'diskGiB',
    message: 'the local disks together cannot exceed diskGiB (the local storage the VM reserves)',
  },
  { rule: 'unique', items: 'disks', field: 'name', message: 'disk names are unique within a VM' },
] as const;

/** What the VM spec rules read. */
export interface RuledSpec {
  memoryMiB: number;
  diskGiB: number;
  workload?: Workload | undefined;
  disks?: Disk[] | undefined;
}

/** VM_SPEC_RULES, as a zod refinement. */
export function checkVmSpecRules(spec: RuledSpec, ctx: z.RefinementCtx): void {
  if (spec.workload && spec.workload.workingSetMiB > spec.memoryMiB)
    ctx.addIssue({ code: 'custom', path: ['workload', 'workingSetMiB'], message: `cannot exceed memoryMiB (${spec.memoryMiB})` });
  if (spec.workload?.diskUsedGiB !== undefined && spec.workload.diskUsedGiB > spec.diskGiB)
    ctx.addIssue({ code: 'custom', path: ['workload', 'diskUsedGiB'], message: `cannot exceed diskGiB (${spec.diskGiB})` });
  if (!spec.disks) return;
  const local = spec.disks.reduce((sum, d) => sum + (d.kind === 'local' ? d.sizeGiB : 0), 0);
  if (local > spec.diskGiB)
    ctx.addIssue({ code: 'custom', path: ['disks'], message: `the local disks' sizeGiB add up to ${local}, more than diskGiB (${spec.diskGiB})` });
  const seen = new Set<string>();
  spec.disks.forEach((d, i) => {
    if (seen.has(d.name)) ctx.addIssue({ code: 'custom', path: ['disks', i, 'name'], message: `${d.name} names two disks (names are unique within a VM)` });
    seen.add(d.name);
  });
}

/** VM_SPEC_RULES on any object schema with the ruled fields (the VM spec, the API's create body). */
export function withVmSpecRules<T extends z.ZodType<RuledSpec>>(schema: T): T {
  return schema.superRefine(checkVmSpecRules).meta({ 'x-dhm-rules': VM_SPEC_RULES }) as unknown as T;
}

export const vmSpecSchema = withVmSpecRules(resourcesSchema.extend({ workload: workloadSchema.optional(), disks: disksSchema.optional() }).strict());
export type VmSpec = z.infer<typeof vmSpecSchema>;

/** The disk a VM has when its spec names none: all of its local storage, one disk. */
export const DEFAULT_DISK_NAME = 'root';

/**
 * The VM's disks, normalized: a spec without `disks` has one local disk `root` of `diskGiB`. Every backend and the
 * control plane read disks through this, so nobody re-derives the default.
 */
export function vmDisks(spec: { diskGiB: number; disks?: Disk[] | undefined }): Disk[] {
  return spec.disks ? spec.disks.map((d) => ({ ...d })) : [{ name: DEFAULT_DISK_NAME, kind: 'local', sizeGiB: spec.diskGiB }];
}

/** The VM's local disks (what a move copies). */
export function localDisks(spec: { diskGiB: number; disks?: Disk[] | undefined }): LocalDisk[] {
  return vmDisks(spec).filter((d): d is LocalDisk => d.kind === 'local');
}

/** GiB of local disk a move copies: the sum of the local disks' sizes (at most `diskGiB`). */
export function localDiskGiB(spec: { diskGiB: number; disks?: Disk[] | undefined }): number {
  return localDisks(spec).reduce((sum, d) => sum + d.sizeGiB, 0);
}

/** The network volumes the VM attaches, in disk order. */
export function networkVolumeIds(spec: { disks?: Disk[] | undefined }): string[] {
  return (spec.disks ?? []).filter((d): d is NetworkDisk => d.kind === 'network').map((d) => d.volumeId);
}

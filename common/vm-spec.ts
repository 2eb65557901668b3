import { z } from 'zod';
import { MAX_MEMORY_MIB, resourcesSchema } from './resources';

/**
 * A VM's spec: what the API accepts, the inventory records and the host agents run. One schema, so a spec one of them
 * accepts is never refused by another.
 */

/** Sim-only workload knobs: how fast the guest dirties memory (D), and how much of it it rewrites (W). */
export const workloadSchema = z
  .object({
    dirtyRateMiBps: z.number().min(0).max(1e6),
    workingSetMiB: z.number().min(0).max(MAX_MEMORY_MIB),
  })
  .strict();
export type Workload = z.infer<typeof workloadSchema>;

/** The working set is part of the guest's memory: it cannot be larger than the VM. */
export function checkWorkingSet(spec: { memoryMiB: number; workload?: Workload | undefined }, ctx: z.RefinementCtx): void {
  if (spec.workload && spec.workload.workingSetMiB > spec.memoryMiB)
    ctx.addIssue({ code: 'custom', path: ['workload', 'workingSetMiB'], message: `cannot exceed memoryMiB (${spec.memoryMiB})` });
}

export const vmSpecSchema = resourcesSchema.extend({ workload: workloadSchema.optional() }).strict().superRefine(checkWorkingSet);
export type VmSpec = z.infer<typeof vmSpecSchema>;

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

/**
 * Rules of a VM spec that a JSON Schema cannot state (they relate two fields). `withVmSpecRules` enforces them; the API
 * document carries them as `x-dhm-rules`, so a client generated from it knows them too.
 */
export const VM_SPEC_RULES = [
  { rule: 'lessOrEqual', field: 'workload.workingSetMiB', than: 'memoryMiB', message: 'cannot exceed memoryMiB (the working set is part of the guest memory)' },
] as const;

/** The working set is part of the guest's memory: it cannot be larger than the VM. */
export function checkWorkingSet(spec: { memoryMiB: number; workload?: Workload | undefined }, ctx: z.RefinementCtx): void {
  if (spec.workload && spec.workload.workingSetMiB > spec.memoryMiB)
    ctx.addIssue({ code: 'custom', path: ['workload', 'workingSetMiB'], message: `cannot exceed memoryMiB (${spec.memoryMiB})` });
}

/** VM_SPEC_RULES on any object schema with `memoryMiB` and an optional `workload` (the VM spec, the API's create body). */
export function withVmSpecRules<T extends z.ZodType<{ memoryMiB: number; workload?: Workload | undefined }>>(schema: T): T {
  return schema.superRefine(checkWorkingSet).meta({ 'x-dhm-rules': VM_SPEC_RULES }) as unknown as T;
}

export const vmSpecSchema = withVmSpecRules(resourcesSchema.extend({ workload: workloadSchema.optional() }).strict());
export type VmSpec = z.infer<typeof vmSpecSchema>;

import { z } from 'zod';

/** Upper bounds keep absurd requests (10^12 MiB) out before they reach arithmetic or the database. */
export const MAX_VCPUS = 1024;
export const MAX_MEMORY_MIB = 16 * 1024 * 1024; // 16 TiB
export const MAX_DISK_GIB = 1024 * 1024; // 1 PiB

/** An amount of compute: what a server has, what an incarnation is given, what a VM asks for. */
export const resourcesSchema = z
  .object({
    vcpus: z.number().int().min(1).max(MAX_VCPUS),
    memoryMiB: z.number().int().min(1).max(MAX_MEMORY_MIB),
    diskGiB: z.number().int().min(1).max(MAX_DISK_GIB),
  })
  .strict();
export type Resources = z.infer<typeof resourcesSchema>;

export const ZERO: Resources = Object.freeze({ vcpus: 0, memoryMiB: 0, diskGiB: 0 }) as Resources;

export function addResources(a: Resources, b: Resources): Resources {
  return { vcpus: a.vcpus + b.vcpus, memoryMiB: a.memoryMiB + b.memoryMiB, diskGiB: a.diskGiB + b.diskGiB };
}

export function subtractResources(a: Resources, b: Resources): Resources {
  return { vcpus: a.vcpus - b.vcpus, memoryMiB: a.memoryMiB - b.memoryMiB, diskGiB: a.diskGiB - b.diskGiB };
}

/** True when `have` covers `need` in every dimension. */
export function fits(need: Resources, have: Resources): boolean {
  return need.vcpus <= have.vcpus && need.memoryMiB <= have.memoryMiB && need.diskGiB <= have.diskGiB;
}

/** The first dimension in which `have` falls short of `need`, for error messages that name the field. */
export function shortfall(need: Resources, have: Resources): keyof Resources | null {
  for (const k of ['vcpus', 'memoryMiB', 'diskGiB'] as const) if (need[k] > have[k]) return k;
  return null;
}

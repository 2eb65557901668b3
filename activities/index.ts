import type { Inventory } from '../inventory';
import type { AgentDirectory } from '../compute/agent-directory';
import { classified } from './failures';
import { createLiveMigration } from './live-migrate';
import { createMeasurements } from './measure';
import { createMigrationSteps } from './migration-steps';
import { createVmCensus } from './vm-census';

export interface ActivityDeps {
  inventory: Inventory;
  agents: AgentDirectory;
}

/** Every activity of the migration workflow, built from its dependencies (the samples' factory pattern). */
export function createActivities(deps: ActivityDeps) {
  return classified({
    ...createMigrationSteps(deps),
    ...createLiveMigration(deps),
    ...createVmCensus(deps),
    ...createMeasurements(deps),
  });
}

export type MigrationActivities = ReturnType<typeof createActivities>;
export { createAgentDirectory, type AgentDirectory } from '../compute/agent-directory';

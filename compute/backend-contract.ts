import type { Logger } from 'pino';
import type { Resources } from '../common/resources';
import type { MigrationJob, StartMigrationInput, VmSpec, VmView } from './agent-api';
import type { PeerClient } from './peer-client';

/**
 * What the agent's shared bookkeeping (`BackendBase`) needs from a backend: its options, and the shape of its VMs,
 * outbound migration jobs and inbound reservations. The sim and qemu backends each implement these.
 */

/** What every backend is built with; each adds its own options. */
export interface BackendBaseOptions {
  serverId: string;
  bootId: string;
  capacity: Resources;
  peer: PeerClient;
  logger: Logger;
  /** This agent's own URL, known once it listens; used to spot a migration to itself and in tombstones. */
  selfUrl: () => string;
}

/** A VM as the shared bookkeeping sees it. */
export interface BackendVm {
  readonly vmId: string;
  readonly incarnationId: string;
  readonly spec: VmSpec;
  /** The outbound migration that owns this VM now, from the moment it is requested. */
  migrationJobId: string | null;
  view(serverId: string): VmView;
}

/** An outbound migration as the shared bookkeeping sees it. */
export interface BackendJob {
  readonly input: StartMigrationInput;
  /** Resolves once the job has left `running` (completed, failed, cancelled, or halted). */
  readonly settled: Promise<void>;
  snapshot(): MigrationJob;
  /** Throws `MIGRATION_COMPLETED` once the VM has moved. */
  cancel(): Promise<MigrationJob>;
  /** Stops the job's timers and in-flight work (the agent is stopping). */
  halt(): void;
  /** A job that never started because the target could not be reached: it exists so a retry with its id sees why. */
  failBeforeStart(code: string, message: string): void;
}

/** Room reserved for a VM migrating in; `committed` once the VM runs here. */
export interface BackendIncoming {
  readonly jobId: string;
  readonly vmId: string;
  readonly incarnationId: string;
  readonly spec: VmSpec;
  state: 'reserved' | 'committed';
}

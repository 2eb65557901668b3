import type { ExpectedIncoming, ExpectIncomingBody } from './agent-api';

/** At most this many expectations are kept; the oldest gives way (a job is expected seconds before it starts). */
export const MAX_EXPECTED = 4096;

/**
 * The incoming migrations the control plane told this agent to expect: the only jobs for which a peer server may
 * reserve, commit or release an incoming VM here, and only the source server named. Lost with the daemon (as its jobs are).
 */
export class ExpectedMigrations {
  private readonly byJob = new Map<string, ExpectedIncoming>();

  /**
   * Idempotent. The control plane has the last word: announcing a job again with other values replaces the
   * announcement (a reservation already made for the job keeps its own check, `JOB_CONFLICT`, in the backend).
   */
  expect(jobId: string, body: ExpectIncomingBody): ExpectedIncoming {
    const e = { jobId, ...body };
    this.byJob.delete(jobId);
    this.byJob.set(jobId, e);
    if (this.byJob.size > MAX_EXPECTED) this.byJob.delete(this.byJob.keys().next().value!);
    return e;
  }

  get(jobId: string): ExpectedIncoming | undefined {
    return this.byJob.get(jobId);
  }

  clear(): void {
    this.byJob.clear();
  }
}

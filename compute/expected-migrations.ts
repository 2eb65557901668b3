import type { ExpectedIncoming, ExpectIncomingBody } from './agent-api';
import { conflict } from './errors';

/** At most this many expectations are kept; the oldest gives way (a job is expected seconds before it starts). */
export const MAX_EXPECTED = 4096;

/**
 * The incoming migrations the control plane told this agent to expect: the only jobs for which a peer server may
 * reserve, commit or release an incoming VM here, and only the source server named. Lost with the daemon (as its jobs are).
 */
export class ExpectedMigrations {
  private readonly byJob = new Map<string, ExpectedIncoming>();

  /** Idempotent: the same job with the same VM, incarnation and source is fine; with others it is a 409. */
  expect(jobId: string, body: ExpectIncomingBody): ExpectedIncoming {
    const known = this.byJob.get(jobId);
    if (known) {
      if (known.vmId !== body.vmId || known.incarnationId !== body.incarnationId || known.sourceServerId !== body.sourceServerId)
        throw conflict('JOB_CONFLICT', 'jobId', `migration ${jobId} is expected for another VM, incarnation or source`);
      return known;
    }
    const e = { jobId, ...body };
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

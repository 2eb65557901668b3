import type { Logger } from 'pino';
import { z } from 'zod';
import type { MachineDisk } from './disks';
import { EventWake } from './event-wake';
import { QmpError, type QmpClient } from './qmp';

/**
 * The source side of a migration with local disks, as libvirt and Proxmox do it: each local disk is mirrored
 * (`blockdev-mirror`, sync full) into the target's empty disk, which the target exports writable over NBD (TLS with
 * the migration's credentials). Once every mirror is READY it is switched to write-blocking mode (a guest write
 * completes only once the target has it too, so the copy cannot fall behind); at the RAM migration's
 * pre-switchover pause the mirrors are completed without pivoting (`block-job-cancel` on a READY job), so the
 * target's disks equal the source's at the instant the guest stopped. Until then the source's disks are the VM's:
 * an abort cancels the jobs and detaches the NBD targets, and the source disk was only ever read.
 */

const jobInfoSchema = z
  .object({
    device: z.string(),
    type: z.string(),
    len: z.number(),
    offset: z.number(),
    ready: z.boolean().optional(),
    status: z.string(),
    error: z.string().optional(),
  })
  .passthrough();
type JobInfo = z.infer<typeof jobInfoSchema>;

export interface DiskProgress {
  bytesTotal: number;
  bytesCopied: number;
  bytesRemaining: number;
}

export interface MirrorTarget {
  /** The target's `IncomingView.nbdAddress`: `tcp:<host>:<port>` or `unix:<path>`. */
  address: string;
  /** TLS: the client credentials object on the source and the name the target's certificate carries. */
  tlsCredsId?: string;
  tlsHostname?: string;
}

export type MirrorPoll = { state: 'copying' | 'ready'; progress: DiskProgress } | { state: 'failed'; message: string; progress: DiskProgress };

const JOB_END_WAIT_MS = 10_000;
const JOB_END_EVENTS: ReadonlySet<string> = new Set(['JOB_STATUS_CHANGE', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED']);

export class DiskMirror {
  private readonly disks: Array<Extract<MachineDisk, { kind: 'local' }>>;
  private readonly attached = new Set<string>();
  private readonly started = new Set<string>();
  private last: DiskProgress;
  private synced = false;

  constructor(
    private readonly qmp: QmpClient,
    disks: MachineDisk[],
    private readonly jobId: string,
    private readonly log: Logger,
  ) {
    this.disks = disks.filter((d): d is Extract<MachineDisk, { kind: 'local' }> => d.kind === 'local');
    const total = this.disks.reduce((a, d) => a + d.sizeBytes, 0);
    this.last = { bytesTotal: total, bytesCopied: 0, bytesRemaining: total };
  }

  get progress(): DiskProgress {
    return this.last;
  }

  private targetNode = (d: { node: string }) => `mirror-target-${d.node}`;
  private jobName = (d: { node: string }) => `mirror-${d.node}`;

  /** Attaches the target's exports and starts one background mirror per local disk. */
  async start(target: MirrorTarget, speedBps: number): Promise<void> {
    const server = parseNbdAddress(target.address);
    for (const d of this.disks) {
      const node = this.targetNode(d);
      await this.qmp.execute('blockdev-add', {
        driver: 'nbd',
        'node-name': node,
        server,
        export: d.node,
        ...(target.tlsCredsId ? { 'tls-creds': target.tlsCredsId, 'tls-hostname': target.tlsHostname } : {}),
        // Zero blocks go as NBD write-zeroes (the target stays sparse), not as data.
        discard: 'unmap',
        'detect-zeroes': 'unmap',
      });
      this.attached.add(node);
      await this.qmp.execute('blockdev-mirror', {
        'job-id': this.jobName(d),
        device: d.node,
        target: node,
        sync: 'full',
        'copy-mode': 'background',
        speed: Math.max(0, Math.round(speedBps)),
        // A failed job stays (concluded, with its error) until dismissed: its reason is read, not raced.
        'auto-dismiss': false,
      });
      this.started.add(this.jobName(d));
    }
    this.log.info({ jobId: this.jobId, disks: this.disks.map((d) => d.node), target: target.address, tls: !!target.tlsCredsId }, 'disk mirror started');
  }

  async poll(): Promise<MirrorPoll> {
    const jobs = await this.jobs();
    let total = 0;
    let copied = 0;
    let ready = true;
    for (const d of this.disks) {
      const j = jobs.get(this.jobName(d));
      if (!j) return { state: 'failed', message: `mirror of ${d.node} vanished`, progress: this.last };
      total += j.len;
      copied += j.offset;
      if (j.error) return { state: 'failed', message: `mirror of ${d.node} failed: ${j.error}`, progress: this.last };
      if (j.status === 'concluded' || j.status === 'aborting')
        return { state: 'failed', message: `mirror of ${d.node} ended (${j.status})`, progress: this.last };
      if (!j.ready) ready = false;
    }
    this.last = { bytesTotal: total, bytesCopied: copied, bytesRemaining: Math.max(0, total - copied) };
    return { state: ready ? 'ready' : 'copying', progress: this.last };
  }

  /** Every mirror is READY: from now on a guest write completes only once the target has it too. */
  async activeSync(): Promise<void> {
    for (const d of this.disks) await this.qmp.execute('block-job-change', { id: this.jobName(d), type: 'mirror', 'copy-mode': 'write-blocking' });
    this.synced = true;
    this.log.info({ jobId: this.jobId }, 'disk mirror ready; switched to write-blocking');
  }

  async setSpeed(speedBps: number): Promise<void> {
    for (const d of this.disks)
      if (this.started.has(this.jobName(d)))
        await this.qmp.execute('block-job-set-speed', { device: this.jobName(d), speed: Math.max(0, Math.round(speedBps)) }).catch(() => undefined);
  }

  /**
   * At pre-switchover (the guest is stopped): each READY mirror is ended without a pivot, which flushes what is
   * still dirty, and must conclude without an error; the target then holds the VM's disks as of this instant.
   */
  async complete(): Promise<void> {
    if (!this.synced) throw new Error('the disk mirror is not in write-blocking mode yet');
    for (const d of this.disks) await this.qmp.execute('block-job-cancel', { device: this.jobName(d) });
    const ended = await this.waitConcluded();
    for (const d of this.disks) {
      const j = ended.get(this.jobName(d));
      if (j?.error) throw new Error(`mirror of ${d.node} failed at switchover: ${j.error}`);
      if (j && j.offset < j.len) throw new Error(`mirror of ${d.node} ended at ${j.offset} of ${j.len} bytes`);
    }
    await this.dismissAll();
    this.last = { bytesTotal: this.last.bytesTotal, bytesCopied: this.last.bytesTotal, bytesRemaining: 0 };
    this.log.info({ jobId: this.jobId, bytes: this.last.bytesTotal }, 'disk mirror completed at switchover');
  }

  /** The job is over (moved or given up): detaches the target's exports from the source. */
  async detach(): Promise<void> {
    for (const node of [...this.attached]) {
      try {
        await this.qmp.execute('blockdev-del', { 'node-name': node });
        this.attached.delete(node);
      } catch (err) {
        this.log.warn({ jobId: this.jobId, node, err: errText(err) }, 'could not detach a mirror target');
      }
    }
  }

  /** Cancel or failure: the mirrors are cancelled (force) and dismissed, the targets detached. The source disk is as the guest left it. */
  async abort(): Promise<void> {
    if (this.qmp.closed) return;
    const jobs = await this.jobs().catch(() => new Map<string, JobInfo>());
    for (const [id, j] of jobs)
      if (this.started.has(id) && j.status !== 'concluded') await this.qmp.execute('block-job-cancel', { device: id, force: true }).catch(() => undefined);
    await this.waitConcluded().catch(() => undefined);
    await this.dismissAll();
    await this.detach();
    this.log.info({ jobId: this.jobId }, 'disk mirror aborted; targets detached');
  }

  private async dismissAll(): Promise<void> {
    const jobs = await this.jobs().catch(() => new Map<string, JobInfo>());
    for (const [id, j] of jobs)
      if (this.started.has(id) && j.status === 'concluded') {
        await this.qmp.execute('job-dismiss', { id }).catch((err: unknown) => this.log.warn({ id, err: errText(err) }, 'could not dismiss a mirror job'));
      }
    const left = await this.jobs().catch(() => new Map<string, JobInfo>());
    for (const id of [...this.started]) if (!left.has(id)) this.started.delete(id);
  }

  /** Waits until every mirror of ours is concluded (or gone); returns their last info. */
  private async waitConcluded(): Promise<Map<string, JobInfo>> {
    const deadline = Date.now() + JOB_END_WAIT_MS;
    // At switchover the guest is stopped while this waits: each job's end (JOB_STATUS_CHANGE) is acted on at once.
    const wake = new EventWake(this.qmp, JOB_END_EVENTS);
    try {
      for (;;) {
        const jobs = await this.jobs();
        const mine = [...jobs.entries()].filter(([id]) => this.started.has(id));
        if (mine.every(([, j]) => j.status === 'concluded' || j.status === 'null')) return new Map(mine);
        if (Date.now() > deadline) throw new Error(`disk mirror jobs did not end within ${JOB_END_WAIT_MS} ms`);
        await wake.sleep(50); // poll interval within the deadline, cut short by the job's event
      }
    } finally {
      wake.close();
    }
  }

  private async jobs(): Promise<Map<string, JobInfo>> {
    const raw = await this.qmp.execute('query-block-jobs', undefined, { timeoutMs: 5_000 });
    return new Map(
      z
        .array(jobInfoSchema)
        .parse(raw)
        .map((j) => [j.device, j]),
    );
  }
}

/** `tcp:<host>:<port>` / `tcp:[v6]:<port>` / `unix:<path>` as a QMP SocketAddress. */
export function parseNbdAddress(address: string): Record<string, string> {
  if (address.startsWith('unix:')) return { type: 'unix', path: address.slice(5) };
  const m = /^tcp:(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(address);
  if (!m) throw new Error(`not an NBD address: ${address}`);
  return { type: 'inet', host: m[1] ?? m[2]!, port: m[3]! };
}

function errText(err: unknown): string {
  return err instanceof QmpError || err instanceof Error ? err.message : String(err);
}

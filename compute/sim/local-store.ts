/**
 * The sim's stand-in for a server's local disks: which incarnation's VM holds how many bytes here, and how many bytes
 * have been destroyed. A wipe is what the qemu backend does to a disk file (overwrite or discard, then remove); here
 * it is recorded, so tests can see that a tenant's data left the server before it went back to the pool.
 */
export class LocalStore {
  private readonly disks = new Map<string, { incarnationId: string; vmId: string; bytes: number }>();
  private wiped = 0;

  private static key(incarnationId: string, vmId: string): string {
    return `${incarnationId}\0${vmId}`;
  }

  /** A VM's local disks exist here (created, or being received). Holding them again changes nothing. */
  hold(incarnationId: string, vmId: string, bytes: number): void {
    if (bytes <= 0) return;
    this.disks.set(LocalStore.key(incarnationId, vmId), { incarnationId, vmId, bytes });
  }

  /** Destroys a VM's local disks in an incarnation; idempotent. */
  wipe(incarnationId: string, vmId: string): void {
    const k = LocalStore.key(incarnationId, vmId);
    const d = this.disks.get(k);
    if (!d) return;
    this.wiped += d.bytes;
    this.disks.delete(k);
  }

  /** Destroys every local disk of an incarnation; idempotent. */
  wipeIncarnation(incarnationId: string): void {
    for (const d of [...this.disks.values()]) if (d.incarnationId === incarnationId) this.wipe(d.incarnationId, d.vmId);
  }

  usage(): { diskBytes: number; wipedBytes: number } {
    let held = 0;
    for (const d of this.disks.values()) held += d.bytes;
    return { diskBytes: held, wipedBytes: this.wiped };
  }
}

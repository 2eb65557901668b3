import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';

/**
 * A VM's disks as QEMU runs them. Local disks are raw files in this server's storage folder (sparse, the spec's
 * size); network disks are volumes of the fleet's storage service, attached over NBD with TLS. Both ends of a
 * migration attach the same list in the same order with the same node names (`disk<i>`), so the device trees match
 * and the target's NBD exports carry the names the source mirrors to.
 */
export type MachineDisk =
  | { node: string; name: string; kind: 'local'; path: string; sizeBytes: number }
  | { node: string; name: string; kind: 'network'; volumeId: string; nbd: NetworkStorage };

/** Where the fleet's storage service listens (fleet file `storage.nbd`); export name = volume id. */
export interface NetworkStorage {
  host: string;
  port: number;
  /** The name in the service's certificate (tls-hostname); unset with `transport: insecure`. */
  tlsHostname?: string;
  /** The id of this QEMU's client credentials object (`-object tls-creds-x509,…`), when TLS is on. */
  tlsCredsId?: string;
}

export const diskNode = (i: number) => `disk${i}`;
export const BLOCK_BYTES = 4096;
const GIB = 2 ** 30;
export const gibToBytes = (gib: number) => gib * GIB;

/** QEMU arguments for one disk: a protocol node, a raw format node over it, a virtio-blk device on that. */
export function diskArgs(d: MachineDisk): string[] {
  const proto =
    d.kind === 'local'
      ? { driver: 'file', filename: d.path, 'node-name': `${d.node}-proto`, discard: 'unmap', aio: 'threads' }
      : {
          driver: 'nbd',
          'node-name': `${d.node}-proto`,
          server: { type: 'inet', host: d.nbd.host, port: String(d.nbd.port) },
          export: d.volumeId,
          ...(d.nbd.tlsCredsId ? { 'tls-creds': d.nbd.tlsCredsId, 'tls-hostname': d.nbd.tlsHostname } : {}),
        };
  return [
    '-blockdev',
    JSON.stringify(proto),
    // detect-zeroes: zero writes become holes (and the mirror sends them as NBD write-zeroes, not data).
    '-blockdev',
    JSON.stringify({ driver: 'raw', file: `${d.node}-proto`, 'node-name': d.node, discard: 'unmap', 'detect-zeroes': 'unmap' }),
    '-device',
    `virtio-blk-pci,drive=${d.node},id=vd-${d.node},serial=dhm-${d.node}`,
  ];
}

/** An empty local disk: a sparse file of the disk's size, readable by this agent only. Idempotent. */
export function createDiskFile(file: string, sizeBytes: number): void {
  const fd = fs.openSync(file, fs.constants.O_CREAT | fs.constants.O_RDWR, 0o600);
  try {
    fs.ftruncateSync(fd, sizeBytes);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Fills the last `bytes` of a disk with random data: test data standing in for a tenant's files, so a mirror has
 * real bytes to send (the guest's numbered blocks start at offset 0 and stop before it).
 */
export function fillDiskTail(file: string, sizeBytes: number, bytes: number): void {
  if (bytes <= 0) return;
  const fd = fs.openSync(file, 'r+');
  const chunk = Buffer.alloc(4 << 20);
  try {
    for (let off = sizeBytes - bytes; off < sizeBytes; off += chunk.length) {
      const n = Math.min(chunk.length, sizeBytes - off);
      randomFillSync(chunk, 0, n);
      fs.writeSync(fd, chunk, 0, n, off);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Destroys a local disk: its blocks are discarded (a punched hole: the file system frees them, and an SSD mounted
 * with discard trims them), or overwritten with zeros where the file system cannot punch holes, then the file is
 * removed. Returns the bytes wiped; a disk that is already gone is 0 (idempotent).
 */
export function wipeDiskFile(file: string): number {
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch {
    return 0;
  }
  if (size > 0) {
    try {
      execFileSync('fallocate', ['--punch-hole', '--offset', '0', '--length', String(size), file], { stdio: 'ignore', timeout: 30_000 });
    } catch {
      overwriteWithZeros(file, size);
    }
  }
  fs.rmSync(file, { force: true });
  return size;
}

function overwriteWithZeros(file: string, size: number): void {
  const fd = fs.openSync(file, 'r+');
  const zeros = Buffer.alloc(4 << 20);
  try {
    for (let off = 0; off < size; off += zeros.length) fs.writeSync(fd, zeros, 0, Math.min(zeros.length, size - off), off);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

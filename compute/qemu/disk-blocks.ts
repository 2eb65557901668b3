import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { BLOCK_BYTES } from './disks';

/**
 * The test guest's numbered blocks (scripts/qemu/guest-init.sh): block k at offset k × 4096 is the header
 * `DHMBLK <k, 10 digits> <sha256 hex>\n` (83 bytes) and 4013 random bytes; the hash is over `"<k>\n" + payload`, so a
 * block that lands at another offset, loses bytes or mixes two writes fails. The guest prints `dhm-disk k` on its
 * serial console once block k (and every block before it) is fsync'd.
 */
const MAGIC = Buffer.from('DHMBLK ');
const HEADER_BYTES = 83;
/** How far past the last block the check looks for a later one (a hole in the sequence). */
const GAP_SCAN_BLOCKS = 256;

export interface DiskBlocksReport {
  /** Blocks 0 … blocks − 1 are present, in order, with correct checksums. */
  blocks: number;
  /** The first block that is wrong (corrupt, out of place, or a later block after a hole); null when none is. */
  bad: { index: number; reason: string } | null;
  /** The guest (still running) was writing the block after the last good one while it was read. */
  tornTail: boolean;
  /** `bad` is null and at least `expectAtLeast` blocks are there. */
  ok: boolean;
}

/**
 * Checks a disk (a file: a local disk, or a storage service's volume) for the guest's blocks. `expectAtLeast`: the
 * blocks the guest has reported written (`lastDiskBlock` + 1); `live`: the guest may be writing while this reads, so
 * one partly written block right after the last good one is allowed.
 */
export function verifyDiskBlocks(file: string, opts: { expectAtLeast?: number; live?: boolean } = {}): DiskBlocksReport {
  const fd = fs.openSync(file, 'r');
  const size = fs.fstatSync(fd).size;
  const block = Buffer.alloc(BLOCK_BYTES);
  const read = (i: number) => (i * BLOCK_BYTES + BLOCK_BYTES <= size ? fs.readSync(fd, block, 0, BLOCK_BYTES, i * BLOCK_BYTES) === BLOCK_BYTES : false);
  let blocks = 0;
  let bad: DiskBlocksReport['bad'] = null;
  let tornTail = false;
  try {
    for (;;) {
      if (!read(blocks)) break;
      if (!block.subarray(0, MAGIC.length).equals(MAGIC)) {
        if (!isZero(block)) {
          if (opts.live) tornTail = true;
          else bad = { index: blocks, reason: 'neither a block nor empty' };
        }
        break;
      }
      const why = checkBlock(block, blocks);
      if (why) {
        if (opts.live && !tornTail && isLastWritten(fd, size, blocks + 1)) tornTail = true;
        else bad = { index: blocks, reason: why };
        break;
      }
      blocks++;
    }
    if (!bad) {
      for (let i = blocks + 1; i <= blocks + GAP_SCAN_BLOCKS; i++) {
        if (!read(i)) break;
        if (block.subarray(0, MAGIC.length).equals(MAGIC)) {
          bad = { index: i, reason: `block ${i} is there but block ${blocks} is not` };
          break;
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return { blocks, bad, tornTail, ok: bad === null && blocks >= (opts.expectAtLeast ?? 0) };
}

function checkBlock(block: Buffer, index: number): string | null {
  const header = block.subarray(0, HEADER_BYTES).toString('latin1');
  const m = /^DHMBLK (\d{10}) ([0-9a-f]{64})\n$/.exec(header);
  if (!m) return 'malformed header';
  const seq = Number(m[1]);
  if (seq !== index) return `block ${seq} found at position ${index}`;
  const sum = createHash('sha256').update(`${seq}\n`).update(block.subarray(HEADER_BYTES)).digest('hex');
  return sum === m[2] ? null : `checksum mismatch in block ${seq}`;
}

/** Nothing but zeros after `from`, for a few blocks: the bad block is the one being written now. */
function isLastWritten(fd: number, size: number, from: number): boolean {
  const b = Buffer.alloc(BLOCK_BYTES);
  if (from * BLOCK_BYTES + BLOCK_BYTES > size) return true;
  fs.readSync(fd, b, 0, BLOCK_BYTES, from * BLOCK_BYTES);
  return isZero(b);
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i += 8) if (b.readBigUInt64LE(i) !== 0n) return false;
  return true;
}

const DISK_LINE = /dhm-disk (\d+)\r?\n/g;

/** The last block the guest reported written (`dhm-disk k` on its serial console), or null before the first report. */
export function lastDiskBlock(serialPath: string): number | null {
  let text: string;
  try {
    text = fs.readFileSync(serialPath, 'latin1');
  } catch {
    return null;
  }
  let last: number | null = null;
  for (const m of text.matchAll(DISK_LINE)) last = Number(m[1]);
  return last;
}

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UserFacingError } from '../../common/errors';

/** Which 198.18.<slot>.0/24 each testbed on this machine holds, claimed by a file under /run. */

/** 198.18.<slot>.0/24 per testbed: the fabric of two testbeds never overlaps in the root namespace's routes. */
const MAX_SLOT = 254;
const SLOT_DIR = '/run/dhm-testbed';

/**
 * A /24 of 198.18.0.0/15 that no other testbed on this machine holds and the root namespace does not route yet.
 * Claimed by creating `/run/dhm-testbed/slot-<n>` exclusively; a claim whose testbed folder is gone is stale.
 */
export function claimSlot(dir: string): number {
  fs.mkdirSync(SLOT_DIR, { recursive: true });
  for (let n = 1; n <= MAX_SLOT; n++) {
    const f = path.join(SLOT_DIR, `slot-${n}`);
    if (fs.existsSync(f)) {
      const owner = fs.readFileSync(f, 'utf8');
      if (owner !== dir && fs.existsSync(owner)) continue;
      fs.rmSync(f, { force: true });
    }
    if (routed(`198.18.${n}.`)) continue;
    try {
      fs.writeFileSync(f, dir, { flag: 'wx' });
      return n;
    } catch {
      continue; // another testbed took it just now
    }
  }
  throw new UserFacingError(`name: no free 198.18.x.0/24 left for another testbed on this machine (${MAX_SLOT} in use)`, 'name');
}

export function releaseSlot(dir: string): void {
  if (!fs.existsSync(SLOT_DIR)) return;
  for (const f of fs.readdirSync(SLOT_DIR)) {
    const p = path.join(SLOT_DIR, f);
    try {
      if (fs.readFileSync(p, 'utf8') === dir) fs.rmSync(p, { force: true });
    } catch {
      // raced with another release
    }
  }
}

/** Whether an interface of the root namespace already has an address in that /24. */
function routed(prefix: string): boolean {
  return Object.values(os.networkInterfaces()).some((l) => (l ?? []).some((a) => a.address.startsWith(prefix)));
}

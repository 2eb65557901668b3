import type { MachineSpec } from './qemu-process';

/**
 * The QEMU features of one move: multifd channels and post-copy. Both ends decide them with this one function from
 * the same request (the job's `channels` / `postCopy`, passed to the target in the accept body) and the same machine,
 * because QEMU requires the destination's capabilities to match the source's before `migrate-incoming`.
 * - QEMU 10.0 refuses multifd together with postcopy-ram ("Postcopy is not yet compatible with multifd"): a move that
 *   may switch to post-copy runs on one channel.
 * - A VM with local disks may switch too: `migrate-start-postcopy` stops the guest and honours
 *   pause-before-switchover, so the mirrors are completed at pre-switchover as in a pre-copy switchover.
 * - Zero pages: QEMU's `zero-page-detection` default (`multifd`: detected in the channel threads; with one channel
 *   the main thread does it the legacy way) sends a zero page as a flag, not 4 KiB. Nothing to set.
 */
export interface MoveFeatures {
  channels: number;
  postCopy: boolean;
}

export function moveFeatures(req: { channels?: number | undefined; postCopy?: boolean | undefined }, _machine: MachineSpec): MoveFeatures {
  const postCopy = req.postCopy === true;
  return { channels: postCopy ? 1 : Math.max(1, req.channels ?? 1), postCopy };
}

/** The capabilities `migrate-set-capabilities` gets for these features (on both ends). */
export function featureCapabilities(f: MoveFeatures): Array<{ capability: string; state: boolean }> {
  return [
    { capability: 'multifd', state: f.channels > 1 },
    { capability: 'postcopy-ram', state: f.postCopy },
  ];
}

/** The parameters `migrate-set-parameters` gets for these features (on both ends). */
export function featureParameters(f: MoveFeatures): Record<string, number> {
  return f.channels > 1 ? { 'multifd-channels': f.channels } : {};
}

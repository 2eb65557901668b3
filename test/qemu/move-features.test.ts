import { featureCapabilities, featureParameters, moveFeatures } from '../../compute/qemu/move-features';
import type { MachineSpec } from '../../compute/qemu/qemu-process';

/** The features both ends of a move derive from the same request: they must agree, and respect QEMU 10.0's limits. */

const machine: MachineSpec = { memoryMiB: 256, vcpus: 1, dirtyMiB: 0, dirtyRateMiBps: 0 };

test('channels become multifd with multifd-channels; one channel is a plain stream', () => {
  expect(moveFeatures({}, machine)).toEqual({ channels: 1, postCopy: false });
  const four = moveFeatures({ channels: 4 }, machine);
  expect(featureCapabilities(four)).toEqual([
    { capability: 'multifd', state: true },
    { capability: 'postcopy-ram', state: false },
  ]);
  expect(featureParameters(four)).toEqual({ 'multifd-channels': 4 });
  expect(featureParameters(moveFeatures({ channels: 1 }, machine))).toEqual({});
  expect(featureCapabilities(moveFeatures({ channels: 1 }, machine))).toContainEqual({ capability: 'multifd', state: false });
});

test('post-copy wins over multifd (QEMU 10.0: "Postcopy is not yet compatible with multifd"), with or without local disks', () => {
  const f = moveFeatures({ channels: 4, postCopy: true }, machine);
  expect(f).toEqual({ channels: 1, postCopy: true });
  expect(featureCapabilities(f)).toEqual([
    { capability: 'multifd', state: false },
    { capability: 'postcopy-ram', state: true },
  ]);
  const withDisk: MachineSpec = { ...machine, disks: [{ node: 'disk0', name: 'root', kind: 'local', path: '/nonexistent', sizeBytes: 2 ** 30 }] };
  expect(moveFeatures({ postCopy: true }, withDisk).postCopy).toBe(true);
  expect(moveFeatures({ postCopy: false, channels: 2 }, withDisk)).toEqual({ channels: 2, postCopy: false });
});

import type { VmMigrationState } from '../../common/migration';
import { autoSchedulePolicy, bandwidthCapFor } from '../../workflows/vm-order';

/** `bandwidthCapFor`: the per-move cap that gives a critical-path VM a whole stream (workflow code, so pure). */
describe('bandwidthCapFor', () => {
  // B = 1.25e9 B/s, S = 0.5e9, 3 streams (the auto policy's maxParallel is a ceiling; the workflow runs ⌈B/S⌉ = 3).
  const policy = { ...autoSchedulePolicy({ nicBandwidthBps: 10e9, streamCapFraction: 0.4 }), maxParallel: 3 };
  const vm = (vmId: string, gib: number, state: VmMigrationState = 'pending') => ({ vmId, spec: { vcpus: 1, memoryMiB: gib * 1024, diskGiB: 10 }, state });
  // Benchmark 1's 8-VM host of seed 1: the 32 GiB VM holds 40 % of 80 GiB, so at S it alone needs ΣM/B.
  const skewed = [vm('a', 32), vm('b', 16), vm('c', 8), vm('d', 8), vm('e', 8), vm('f', 4), vm('g', 2), vm('h', 2)];
  const withStates = (states: Record<string, VmMigrationState>) => skewed.map((v) => ({ ...v, state: states[v.vmId] ?? v.state }));

  it('caps the other moves at (B − S)/(streams − 1) while the critical VM is in flight', () => {
    expect(bandwidthCapFor(policy, skewed[1]!, withStates({ a: 'moving' }))).toBe(Math.floor((1.25e9 - 0.5e9) / 2));
    // Later moves too, with VMs already moved (the critical VM is judged on the whole host, not on what is left).
    expect(bandwidthCapFor(policy, skewed[7]!, withStates({ a: 'moving', b: 'moved', c: 'moved', d: 'moving', e: 'moved', f: 'moved', g: 'moved' }))).toBe(
      375_000_000,
    );
    // The policy's own cap still wins when it is lower.
    expect(bandwidthCapFor({ ...policy, bandwidthCapBps: 1e8 }, skewed[1]!, withStates({ a: 'moving' }))).toBe(1e8);
  });

  it('does not cap the critical VM itself, moves while it is not in flight, or hosts without a critical VM', () => {
    expect(bandwidthCapFor(policy, skewed[0]!, skewed)).toBeUndefined(); // the critical VM: a whole stream
    expect(bandwidthCapFor(policy, skewed[0]!, withStates({ a: 'moving', b: 'moving' }))).toBeUndefined(); // its own state is ignored
    expect(bandwidthCapFor(policy, skewed[1]!, withStates({ a: 'moved' }))).toBeUndefined(); // it has ended
    expect(bandwidthCapFor(policy, skewed[1]!, withStates({ a: 'pending', c: 'moving' }))).toBeUndefined(); // it has not started
    const even = [vm('a', 8, 'moving'), vm('b', 8), vm('c', 8), vm('d', 8)];
    expect(bandwidthCapFor(policy, even[1]!, even)).toBeUndefined();
    // Two VMs of the same size: capping the second would make it, not the first, the last to end.
    const twins = [vm('a', 64, 'moving'), vm('b', 64), vm('c', 16), vm('d', 8)];
    expect(bandwidthCapFor(policy, twins[1]!, twins)).toBeUndefined();
    // A policy without the link figures (every existing caller and recorded history) keeps its own cap.
    const plain = { maxParallel: 3, bandwidthCapBps: 2e8 };
    expect(bandwidthCapFor(plain, skewed[1]!, withStates({ a: 'moving' }))).toBe(2e8);
    expect(bandwidthCapFor({ ...policy, maxParallel: 1 }, skewed[1]!, withStates({ a: 'moving' }))).toBeUndefined();
  });

  it('is deterministic and independent of the order the VMs are listed in', () => {
    const states = withStates({ a: 'moving', b: 'moving' });
    const first = bandwidthCapFor(policy, skewed[2]!, states);
    expect(first).toBe(375_000_000);
    for (let i = 0; i < 5; i++) expect(bandwidthCapFor(policy, skewed[2]!, [...states].reverse())).toBe(first);
    expect(
      bandwidthCapFor(
        policy,
        skewed[2]!,
        states.filter((v) => v.vmId !== 'c'),
      ),
    ).toBe(first); // with or without the VM itself
    expect(Number.isInteger(first)).toBe(true);
  });
});

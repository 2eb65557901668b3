import * as path from 'node:path';
import { compareArm, compareRun, concurrencyOf, constantsFittedOn, readTestbedRun, SHIPPED } from '../../bench/testbed-vs-sim';

/** bench/testbed-vs-sim.ts replays a testbed run's arms on benchmark 1's engine with benchmark 1's constants. */
const file = path.resolve(__dirname, '../../bench/results/2026-12-02T06-46-00-testbed-evacuation.json');
const figure = (rows: Array<{ figure: string; testbed: number; sim: number }>, f: string) => rows.find((r) => r.figure === f)!;

describe('testbed vs sim', () => {
  it('reads each arm’s concurrency: the baselines’ number, dhm’s moves at most in flight', () => {
    expect(concurrencyOf({ schedule: 'x', concurrency: 2, makespanMs: 1, bytesMiB: 1, moves: [] })).toBe(2);
    expect(
      concurrencyOf({ schedule: 'dhm', concurrency: 'workflow: maxParallel 8, channels 1, 3 at most in flight', makespanMs: 1, bytesMiB: 1, moves: [] }),
    ).toBe(3);
    expect(() => concurrencyOf({ schedule: 'dhm', concurrency: 'workflow', makespanMs: 1, bytesMiB: 1, moves: [] })).toThrow(/dhm/);
  });

  it('says whether the predicted run is held out from the constants’ fit', () => {
    const inSample = compareRun(file, { ...SHIPPED, fittedOn: ['2026-12-02T06-46-00'] });
    expect(inSample.map((a) => a.heldOut)).toEqual([false, false, false, false]);
    const heldOut = compareRun(file, constantsFittedOn(['2026-12-02T06-32-23', '2026-12-02T06-39-13']));
    expect(heldOut.every((a) => a.heldOut)).toBe(true);
    expect(heldOut.map((a) => a.concurrency)).toEqual([1, 1, 2, 3]);
  });

  it('replays the arm’s schedule: each move pays the set-up, and moves in flight together overlap it', () => {
    const { run, stamp, streamBytesPerSec } = readTestbedRun(file);
    const [sequential, , kubevirt] = run.evacuations;
    const at = (arm: typeof sequential, setup: number) =>
      figure(compareArm(run, stamp, arm!, streamBytesPerSec, { ...SHIPPED, moveSetupMs: setup }).rows, 'makespan').sim;
    // 4 moves one after the other: 1 s more set-up each is 4 s more makespan.
    expect(at(sequential, 4000) - at(sequential, 3000)).toBeCloseTo(4000, -1);
    // 2 at once: less than that, and faster than one at a time.
    expect(at(kubevirt, 4000) - at(kubevirt, 3000)).toBeLessThan(3000);
    expect(at(kubevirt, 3000)).toBeLessThan(at(sequential, 3000));
    // The testbed's side is the run's own figures.
    expect(figure(compareArm(run, stamp, sequential!, streamBytesPerSec, SHIPPED).rows, 'makespan').testbed).toBe(sequential!.makespanMs);
  });
});

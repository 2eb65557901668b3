import {
  CALIBRATED_SWITCHOVER_COST_MS,
  CALIBRATION_RUNS,
  footprintBytes,
  GUEST_BASE_BYTES,
  MOVE_SETUP_MS,
  TESTBED_MEDIAN_DOWNTIME_MS,
} from '../../compute/sim/calibration';
import { MEASURED_MOVE_SETUP_MS } from '../../workflows/scheduler';
import { errorsWithConstants, fitGuestBase, fitMoveSetupMs, fitSwitchover, simulateAlone } from '../../bench/sim/calibrate';

/** compute/sim/calibration.ts's constants are the fits of the testbed's files, not choices. */
describe('sim calibration', () => {
  it('the per-move setup cost is the testbed runs’ setupOverheadMs less their disk mirror', () => {
    const fit = fitMoveSetupMs();
    expect(fit.perRun).toHaveLength(CALIBRATION_RUNS.length);
    expect(Math.abs(fit.mean - MOVE_SETUP_MS)).toBeLessThan(1);
  });

  it('the workflow’s set-up prior for new runs stays within 10 % of the measured set-up (a refit that moves it needs a new patch)', () => {
    expect(Math.abs(MEASURED_MOVE_SETUP_MS - MOVE_SETUP_MS) / MOVE_SETUP_MS).toBeLessThan(0.1);
  });

  it('the switchover cost is the median downtime less what QEMU’s rule leaves to copy', () => {
    const fit = fitSwitchover();
    expect(fit.medianDowntimeMs).toBe(TESTBED_MEDIAN_DOWNTIME_MS);
    expect(fit.switchoverCostMs).toBe(CALIBRATED_SWITCHOVER_COST_MS);
  });

  it('the guest base is the best fit of the bytes the testbed’s single moves sent, and brings the bytes error under 10 %', () => {
    const fit = fitGuestBase();
    expect(fit.moves).toBeGreaterThan(20);
    expect(fit.baseMiB * 2 ** 20).toBe(GUEST_BASE_BYTES);
    expect(errorsWithConstants().bytes).toBeLessThan(0.1);
  });

  it('round 0 sends the footprint, not the RAM: a 4 GiB guest with a 64 MiB writer sends about base + 2 working sets', () => {
    const MIB = 2 ** 20;
    const ram = 4096 * MIB;
    const s = simulateAlone({
      memoryBytes: ram,
      nonZeroBytes: footprintBytes(ram, 64 * MIB),
      dirtyBps: 8 * MIB,
      workingSetBytes: 64 * MIB,
      maxDowntimeMs: 300,
      autoConverge: false,
      rateBps: 100e6,
    });
    expect(s.bytes).toBeGreaterThan(GUEST_BASE_BYTES + 64 * MIB);
    expect(s.bytes).toBeLessThan(0.1 * ram);
    // QEMU's rule: the stop-and-copy uses most of the limit, not the tail of a full pass.
    expect(s.stopCopyMs).toBeGreaterThan(200);
    expect(s.stopCopyMs).toBeLessThanOrEqual(300);
  });
});

import * as fs from 'node:fs';
import * as path from 'node:path';
import { temporal } from '@temporalio/proto';
import { Worker } from '@temporalio/worker';

const DIR = path.join(__dirname, '..', 'fixtures', 'histories');

/**
 * Every history recorded from the end-to-end tests replays against today's workflow code without a determinism
 * error. A change to the workflow that would break running migrations fails here; guard it with `patched()`.
 */
describe('replay of recorded migration histories', () => {
  const files = (fs.existsSync(DIR) ? fs.readdirSync(DIR) : []).filter((f) => f.endsWith('.json')).sort();

  it('has recorded histories to replay (completed, cancelled, retried; before and after the hand-over, lost-VM and local-activity patches; a rollback that strands a VM; requests that straddle workflow tasks; measured inputs before and after the dirty-rate sample ahead and the measured set-up rule; a move retried after its target did not answer; first tries aimed below the downtime limit)', () => {
    const names = ['completed-with-requests', 'cancelled', 'retry-auto-converge'];
    expect(files).toEqual(
      expect.arrayContaining([
        ...names.map((n) => `${n}.json`),
        ...names.map((n) => `${n}.v2.json`),
        'rollback-incomplete.json',
        'straddled-requests.1-vm.json',
        'straddled-requests.2-vm.json',
        'measured-inputs.json',
        'measured-inputs.ahead.json',
        'target-unavailable-retried.json',
        'measured-inputs.setup-measured.json',
        'measured-inputs.aimed.json',
      ]),
    );
  });

  it.each(files)('%s replays deterministically', async (file) => {
    const history = temporal.api.history.v1.History.fromObject(JSON.parse(fs.readFileSync(path.join(DIR, file), 'utf8')));
    await Worker.runReplayHistory({ workflowBundle: { codePath: process.env.DHM_TEST_WORKFLOW_BUNDLE! } }, history, file);
  });
});

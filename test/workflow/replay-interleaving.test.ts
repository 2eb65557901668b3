import * as fs from 'node:fs';
import * as path from 'node:path';
import { temporal } from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { deleteVmDuringMigration, provisionVmDuringMigration } from '../../client/migrations';
import { testFleet } from '../support/fleets';
import { eventually, startTestSystem, type TestSystem } from '../support/system';

type History = temporal.api.history.v1.History;
const T = temporal.api.enums.v1.EventType;
const FIXTURES = path.join(__dirname, '..', 'fixtures', 'histories');

/**
 * A migration whose tenant requests straddle workflow tasks must replay. A local activity (a tenant's provision) that
 * runs while the last moving VM arrives splits the workflow task: the worker completes the task it has (Core does so
 * to answer a query, or when the local activity outlives 80 % of the task timeout) and gets a new one holding the
 * arrival, while the local activity still runs; its result comes later in that new task. On replay Core hands the
 * local activity's result over together with the arrival, in one activation. Workflow code whose commands depend on
 * which of the two it saw first makes different commands on replay: a determinism error on the next worker restart.
 *
 * Here a row lock (the dedicated host's, which a provision takes first) holds the provision's local activity while
 * the first VM's move completes; a delete of the other VM waits behind the provision (requests run one at a time);
 * the lock is released only once the arrival was handed to the worker in a task of its own. The history must then
 * replay against the workflow code. With the requests' steps as local activities both cases failed here, the first
 * with the error seen on the cluster ("Non-deprecated patch marker encountered for change
 * moves-done-waits-for-earlier-requests-only"), the second with "Update machine does not handle this event".
 * `DHM_TEST_RECORD_HISTORIES=1` records them as fixtures (test/fixtures/histories/straddled-requests.*.json).
 */
describe('replay of a migration whose requests straddle workflow tasks', () => {
  let sys: TestSystem;
  beforeAll(async () => {
    sys = await startTestSystem({ fleet: testFleet({ servers: 4 }), timeScale: 10 });
  });
  afterAll(async () => {
    await sys?.stop();
  });

  it.each([
    ['the only VM', 1],
    ['the first of two, with a delete of the other one waiting behind the provision', 2],
  ])(
    'a provision held while %s arrives: the history replays',
    async (_what, vms) => {
      const { hostId, vmIds } = await sys.createHostWithVms({ vms, memoryMiB: [1024], dirtyRateMiBps: [0] });
      const handle = await sys.startMigration(hostId, { maxParallel: 1 });
      const st = await eventually(
        'one VM moving, the others pending',
        async () => {
          const s = await sys.status(hostId);
          return s.vms.filter((v) => v.state === 'moving').length === 1 && s.vms.filter((v) => v.state === 'pending').length === vms - 1 ? s : null;
        },
        30_000,
        20,
      );
      const pending = st.vms.find((v) => v.state === 'pending')?.vmId;
      expect(st.vms.map((v) => v.vmId).sort()).toEqual([...vmIds].sort());

      // Hold the provision: it locks the host row first (FOR NO KEY UPDATE); FOR SHARE lets the arrival through.
      const lock = await sys.db.pool.connect();
      let released = false;
      const release = async () => {
        if (released) return;
        released = true;
        await lock.query('COMMIT');
        lock.release();
      };
      try {
        await lock.query('BEGIN');
        await lock.query('SELECT id FROM dedicated_hosts WHERE id = $1 FOR SHARE', [hostId]);
        const provision = provisionVmDuringMigration(sys.temporal.client, hostId, {
          vmId: `vm-straddle-${hostId}`,
          name: 'straddle',
          spec: { vcpus: 1, memoryMiB: 512, diskGiB: 5 },
        });
        await eventually(
          'the provision accepted',
          async () => (await events(handle)).some((e) => e.eventType === T.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED),
          20_000,
          50,
        );
        const del = pending ? deleteVmDuringMigration(sys.temporal.client, hostId, { vmId: pending }) : Promise.resolve(null);
        // Released once the arrival was handed to the worker in a workflow task after the one that accepted the
        // provision (no query here: with a local activity running, the worker completes that task by itself before
        // the task timeout; with a regular activity the arrival simply comes in a task of its own).
        await eventually(
          'the arrival handed to the worker, the provision still held',
          async () => {
            const evs = await events(handle);
            const accepted = evs.findIndex((e) => e.eventType === T.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED);
            const arrived = evs.findIndex(
              (e, i) => i > accepted && e.eventType === T.EVENT_TYPE_ACTIVITY_TASK_COMPLETED && activityName(evs, e) === 'liveMigrateVm',
            );
            return arrived >= 0 && evs.slice(arrived).some((e) => e.eventType === T.EVENT_TYPE_WORKFLOW_TASK_STARTED);
          },
          30_000,
          20,
        );
        await release();
        const [prov, deleted] = await Promise.all([provision, del]);
        expect(prov.state).toBe('provisioned-on-clone');
        if (pending) expect(deleted?.deleted).toBe(true);
      } finally {
        await release();
      }
      const result = await handle.result();
      expect(result.phase).toBe('completed');
      const history = (await handle.fetchHistory()) as History;
      if (process.env.DHM_TEST_RECORD_HISTORIES) {
        const file = path.join(FIXTURES, `straddled-requests.${vms}-vm.json`);
        fs.writeFileSync(file, JSON.stringify(temporal.api.history.v1.History.toObject(history, { longs: String, enums: String, bytes: String })));
      }
      await Worker.runReplayHistory({ workflowBundle: { codePath: process.env.DHM_TEST_WORKFLOW_BUNDLE! } }, history, handle.workflowId);
    },
    120_000,
  );
});

async function events(handle: { fetchHistory(): Promise<unknown> }): Promise<temporal.api.history.v1.IHistoryEvent[]> {
  return ((await handle.fetchHistory()) as History).events;
}

function activityName(evs: temporal.api.history.v1.IHistoryEvent[], completed: temporal.api.history.v1.IHistoryEvent): string | undefined {
  const scheduledId = Number(completed.activityTaskCompletedEventAttributes!.scheduledEventId);
  return evs.find((e) => Number(e.eventId) === scheduledId)?.activityTaskScheduledEventAttributes?.activityType?.name ?? undefined;
}

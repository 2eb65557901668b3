import * as fs from 'node:fs';
import * as path from 'node:path';
import { temporal } from '@temporalio/proto';
import type { TestSystem } from './system';

export const HISTORY_FIXTURES = path.join(__dirname, '..', 'fixtures', 'histories');

/**
 * Records a migration's history for the replay test when asked (DHM_TEST_RECORD_HISTORIES=1). Recorded histories are
 * committed and replayed by later code, so a run must not overwrite them with histories of the code under test.
 */
export async function saveHistory(sys: TestSystem, hostId: string, name: string): Promise<void> {
  if (!process.env.DHM_TEST_RECORD_HISTORIES) return;
  const history = await sys.temporal.client.workflow.getHandle(`migration-${hostId}`).fetchHistory();
  fs.mkdirSync(HISTORY_FIXTURES, { recursive: true });
  const json = temporal.api.history.v1.History.toObject(history as temporal.api.history.v1.History, {
    longs: String,
    enums: String,
    bytes: String,
    defaults: false,
  });
  fs.writeFileSync(path.join(HISTORY_FIXTURES, `${name}.json`), JSON.stringify(json));
}

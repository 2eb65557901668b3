import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { writeFileAtomic } from '../../common/atomic-file';

/**
 * A file another process polls for (an agent's ready file, a testbed's state) is replaced whole: a reader never opens
 * it empty or half-written. The failure CI found: `dhm testbed up` parsed an agent's ready file the instant it existed,
 * between the agent's open (which truncates) and its write, and died on "Unexpected end of JSON input".
 */
let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-atomic-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

test('a reader polling the file in another thread sees one whole version each time, never a part', async () => {
  const file = path.join(dir, 'ready.json');
  const versions = Array.from({ length: 40 }, (_, i) => JSON.stringify({ i, pad: 'x'.repeat(256 * 1024) }));
  fs.writeFileSync(file, versions[0]!);
  const stopFlag = new Int32Array(new SharedArrayBuffer(4));
  // The reader reads as fast as it can until told to stop, and reports every read that was not one whole version.
  const reader = new Worker(
    `const { parentPort, workerData } = require('node:worker_threads'); const fs = require('node:fs');
     let reads = 0; const bad = [];
     parentPort.postMessage('reading');
     while (Atomics.load(workerData.stop, 0) === 0) {
       let s; try { s = fs.readFileSync(workerData.file, 'utf8'); } catch { continue; }
       reads++; try { JSON.parse(s); } catch { bad.push(s.length); }
     }
     parentPort.postMessage({ reads, bad });`,
    { eval: true, workerData: { file, stop: stopFlag } },
  );
  const messages: unknown[] = [];
  const result = new Promise<{ reads: number; bad: number[] }>((resolve) =>
    reader.on('message', (m: unknown) => (messages.push(m), m !== 'reading' && resolve(m as { reads: number; bad: number[] }))),
  );
  await waitFor(() => messages.includes('reading'), 10_000);
  for (const v of versions.slice(1)) writeFileAtomic(file, v);
  Atomics.store(stopFlag, 0, 1);
  const { reads, bad } = await result;
  await reader.terminate();
  expect(reads).toBeGreaterThan(0);
  expect(bad).toEqual([]);
  expect(fs.readFileSync(file, 'utf8')).toBe(versions[versions.length - 1]);
  expect(fs.readdirSync(dir)).toEqual(['ready.json']);
});

async function waitFor(cond: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setImmediate(r));
  }
}

test('the mode asked for is the mode the file gets, whatever the umask', () => {
  const file = path.join(dir, 'crl.pem');
  const old = process.umask(0o077);
  try {
    writeFileAtomic(file, 'x', { mode: 0o644 });
  } finally {
    process.umask(old);
  }
  expect(fs.statSync(file).mode & 0o777).toBe(0o644);
});

test('a failed write leaves the old content and no staged file', () => {
  const file = path.join(dir, 'state.json');
  fs.writeFileSync(file, 'old');
  // An owner the process may not give (a non-root process) or a uid that does not exist makes chown fail after the write.
  const owner = process.geteuid?.() === 0 ? { uid: -2, gid: -2 } : { uid: 0, gid: 0 };
  expect(() => writeFileAtomic(file, 'new', { owner })).toThrow();
  expect(fs.readFileSync(file, 'utf8')).toBe('old');
  expect(fs.readdirSync(dir)).toEqual(['state.json']);
});

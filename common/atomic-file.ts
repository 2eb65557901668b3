import * as fs from 'node:fs';

/**
 * Writes `file` so that a reader sees either the old content or the whole new one, never a truncated half: another
 * process polls for it (an agent's ready file), or a crash mid-write must not leave a state nobody can undo. The
 * content goes to a sibling in the same folder (so the rename stays on one file system) and is renamed over `file`.
 */
export function writeFileAtomic(file: string, data: string | Uint8Array, opts: { mode?: number; owner?: { uid: number; gid: number } } = {}): void {
  const staged = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(staged, data, { mode: opts.mode ?? 0o600 });
    if (opts.mode !== undefined) fs.chmodSync(staged, opts.mode); // the umask does not narrow what was asked for
    if (opts.owner) fs.chownSync(staged, opts.owner.uid, opts.owner.gid);
    fs.renameSync(staged, file);
  } catch (err) {
    fs.rmSync(staged, { force: true });
    throw err;
  }
}

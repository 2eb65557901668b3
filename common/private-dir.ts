import * as fs from 'node:fs';
import { UserFacingError } from './errors';

/**
 * Makes `dir` (and missing parents, 0700) and checks it is a real folder of this process's user that nobody else can
 * enter: state that holds keys or sockets a guest's memory goes through must not sit where another local user could
 * plant or read a file. A folder of another owner, or a symbolic link, is refused with one line naming `field`; one of
 * ours with a wider mode is narrowed to 0700 (or 0710 when its group is `searchGid`: a folder above QEMU's own, which
 * QEMU's unprivileged user must pass through without listing it).
 */
export function ensurePrivateDir(dir: string, field: string, searchGid?: number): string {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  if (st.isSymbolicLink()) throw new UserFacingError(`${field}: ${dir} is a symbolic link; it must be a folder of its own`, field);
  if (!st.isDirectory()) throw new UserFacingError(`${field}: ${dir} is not a folder`, field);
  const uid = process.geteuid?.();
  if (uid !== undefined && st.uid !== uid)
    throw new UserFacingError(`${field}: ${dir} belongs to uid ${st.uid}, not to this process's user (uid ${uid}); refusing to keep state there`, field);
  const allowed = searchGid !== undefined && st.gid === searchGid ? 0o710 : 0o700;
  if ((st.mode & 0o777 & ~allowed) !== 0) fs.chmodSync(dir, (st.mode & allowed) | 0o700);
  return dir;
}

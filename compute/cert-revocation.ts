import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../common/atomic-file';

/**
 * The agent plane's revoked certificates: a list of serial numbers (`revoked.json`, written by `dhm pki --revoke`
 * or `--rotate`) that agents and the control plane check on every call, on top of the fleet CA's signature. Each
 * role reads the copy in its own credentials volume (the servers' folder, the control plane's), and a change is
 * seen at the next call: nobody restarts to stop trusting a certificate.
 */
export const REVOKED_FILE = 'revoked.json';

interface RevokedFile {
  serials: Array<{ serial: string; subject: string; revokedAt: string }>;
}

/** Serial numbers compare as hex without leading zeros, upper case (Node prints them so; openssl may pad). */
export const normalSerial = (s: string) =>
  s
    .replace(/:/g, '')
    .toUpperCase()
    .replace(/^0+(?=.)/, '');

/** Where the revocation list of a server's credentials folder is (`<servers>/<id>` → `<servers>/revoked.json`). */
export const serverRevocationFile = (serverDir: string) => path.join(path.dirname(serverDir), REVOKED_FILE);
/** Where the control plane's list is (in its own folder). */
export const controlPlaneRevocationFile = (dir: string) => path.join(dir, REVOKED_FILE);

/** The entries of a revocation list file (none when it does not exist). */
export function readRevoked(file: string): RevokedFile['serials'] {
  return readList(file).serials;
}

function readList(file: string): RevokedFile {
  try {
    const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as RevokedFile;
    return Array.isArray(parsed.serials) ? parsed : { serials: [] };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { serials: [] };
    throw err;
  }
}

/**
 * The revoked serials of `file`, re-read when the file changes (one stat per check). A list that cannot be read
 * or parsed revokes everything but refuses loudly: failing open would trust a certificate someone revoked.
 */
export class RevocationList {
  private stamp = '';
  private serials = new Set<string>();
  private broken: string | null = null;

  constructor(readonly file: string) {}

  /** Null when `serial` may be trusted; otherwise why not. */
  check(serial: string | undefined): string | null {
    this.refresh();
    return this.verdict(serial);
  }

  /** Reads the file again if it changed; true when it did (what a watcher acts on). */
  poll(): boolean {
    return this.refresh();
  }

  /** `check` without looking at the file: the list as last read. */
  verdict(serial: string | undefined): string | null {
    if (this.broken) return `the revocation list ${this.file} cannot be read: ${this.broken}`;
    if (serial && this.serials.has(normalSerial(serial))) return `certificate ${normalSerial(serial)} is revoked`;
    return null;
  }

  private refresh(): boolean {
    let stamp: string;
    try {
      const st = fs.statSync(this.file);
      stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      stamp = 'absent';
    }
    if (stamp === this.stamp) return false;
    try {
      this.serials = new Set(readList(this.file).serials.map((s) => normalSerial(s.serial)));
      this.broken = null;
    } catch (err) {
      this.broken = (err as Error).message;
    }
    this.stamp = stamp;
    return true;
  }
}

/** How often a watched list is looked at (one `stat`), whoever watches it: a revocation cuts live connections within this. */
export const REVOCATION_POLL_MS = 500;

const watched = new Map<string, { list: RevocationList; timer: NodeJS.Timeout; listeners: Set<(list: RevocationList) => void> }>();

/**
 * Calls `onChange` each time `file` changes (read again, as `RevocationList`), so that connections already open to or
 * from a certificate revoked since are cut, not only the next ones refused. One timer per file for every watcher of
 * this process (unref'd: it never keeps a process alive). Returns the unsubscribe.
 */
export function watchRevocations(file: string, onChange: (list: RevocationList) => void): () => void {
  let w = watched.get(file);
  if (!w) {
    const list = new RevocationList(file);
    list.poll();
    const entry = {
      list,
      listeners: new Set<(list: RevocationList) => void>(),
      timer: setInterval(() => {
        if (!entry.list.poll()) return;
        for (const l of [...entry.listeners]) l(entry.list);
      }, REVOCATION_POLL_MS),
    };
    entry.timer.unref();
    watched.set(file, entry);
    w = entry;
  }
  const entry = w;
  entry.listeners.add(onChange);
  return () => {
    entry.listeners.delete(onChange);
    if (entry.listeners.size === 0 && watched.get(file) === entry) {
      clearInterval(entry.timer);
      watched.delete(file);
    }
  };
}

/** Adds the serials of `certFiles` to each list in `files` (atomically: a reader never sees half a file). */
export function revokeCertificates(files: string[], certFiles: string[], now = new Date()): string[] {
  const added = certFiles.filter((f) => fs.existsSync(f)).map((f) => new X509Certificate(fs.readFileSync(f)));
  for (const file of files) {
    const list = readList(file);
    const have = new Set(list.serials.map((s) => normalSerial(s.serial)));
    for (const c of added)
      if (!have.has(normalSerial(c.serialNumber)))
        list.serials.push({ serial: normalSerial(c.serialNumber), subject: c.subject.replace(/\n/g, ', '), revokedAt: now.toISOString() });
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    writeFileAtomic(file, `${JSON.stringify(list, null, 2)}\n`, { mode: 0o644 });
  }
  return added.map((c) => normalSerial(c.serialNumber));
}

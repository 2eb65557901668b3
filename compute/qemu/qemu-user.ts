import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { UserFacingError } from '../../common/errors';
import type { QemuTools } from './tools';
import { writeFileAtomic } from '../../common/atomic-file';

/**
 * The unprivileged user QEMU runs as when the agent runs as root: a guest that escapes its emulator lands in a user
 * that owns nothing but the agent's QEMU folders (its VMs' sockets, serial logs, disk files and per-VM copies of the
 * migration credentials), never in root. The agent spawns QEMU with this uid/gid directly (not `-run-with user=`:
 * QEMU's own setuid is what `-sandbox elevateprivileges=deny` forbids, and a credential change would clear the
 * parent-death signal that kills QEMU with a crashed agent).
 */
export interface QemuUser {
  name: string;
  uid: number;
  gid: number;
}

/** The user the agent creates (a system user without a home or shell) when it runs as root and none is configured. */
export const DEFAULT_QEMU_USER = 'dhm-qemu';

const isRoot = () => process.geteuid?.() === 0;

function lookupUser(name: string): QemuUser | null {
  for (const line of fs.readFileSync('/etc/passwd', 'utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f.length >= 4) return { name, uid: Number(f[2]), gid: Number(f[3]) };
  }
  return null;
}

/**
 * Who QEMU runs as: null when the agent is not root (QEMU runs as the agent's own user, which is not root). As root:
 * `configured` (`qemu.user`, which must exist and must not be root), or dhm-qemu, created on first use.
 */
export function resolveQemuUser(configured: string | undefined, logger: Logger): QemuUser | null {
  if (!isRoot()) return null;
  const name = configured ?? DEFAULT_QEMU_USER;
  let user = lookupUser(name);
  if (!user && configured === undefined) {
    try {
      execFileSync('useradd', ['--system', '--user-group', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', name], {
        stdio: ['ignore', 'ignore', 'pipe'],
        timeout: 10_000,
      });
      logger.info({ user: name }, 'created the system user QEMU runs as');
    } catch (err) {
      // Exit 9: another agent starting at the same moment created it first.
      if ((err as { status?: number }).status !== 9) {
        const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
        throw new UserFacingError(`qemu.user: could not create the user ${name} QEMU runs as: ${stderr || (err as Error).message}`, 'qemu.user');
      }
    }
    user = lookupUser(name);
  }
  if (!user) throw new UserFacingError(`qemu.user: there is no user ${name} on this machine`, 'qemu.user');
  if (user.uid === 0 || user.gid === 0) throw new UserFacingError(`qemu.user: ${name} is root (uid/gid 0); QEMU must run unprivileged`, 'qemu.user');
  return user;
}

function canSearch(st: fs.Stats, u: QemuUser): boolean {
  if (st.uid === u.uid) return (st.mode & 0o100) !== 0;
  if (st.gid === u.gid) return (st.mode & 0o010) !== 0;
  return (st.mode & 0o001) !== 0;
}

/**
 * Every folder above `dir` must let QEMU's user pass (search, not list). One of root's that does not is given to the
 * user's group with search only (`g=x`; it keeps its owner and its other bits); any other is refused naming `field`.
 */
export function letQemuReach(dir: string, u: QemuUser, field: string, logger: Logger): void {
  const parts = path.resolve(dir).split(path.sep).filter(Boolean);
  for (let i = 0; i < parts.length - 1; i++) {
    const p = path.sep + parts.slice(0, i + 1).join(path.sep);
    const st = fs.statSync(p);
    if (canSearch(st, u)) continue;
    if (st.uid !== process.geteuid?.() || (st.gid !== 0 && st.gid !== u.gid))
      throw new UserFacingError(
        `${field}: QEMU runs as ${u.name} (uid ${u.uid}), which cannot pass through ${p} (owner uid ${st.uid}, group ${st.gid}); give it search permission or choose another folder`,
        field,
      );
    fs.chownSync(p, st.uid, u.gid);
    fs.chmodSync(p, (st.mode & 0o7707) | 0o010);
    logger.info({ folder: p, user: u.name }, "gave QEMU's user search permission on a folder above its own");
  }
}

/**
 * QEMU's user must reach what it runs and reads: its binary (a wrapper script), shared libraries, modules, firmware
 * and the guest's kernel and initramfs. The tools are world-readable inside their folder, but the folders above may
 * not let that user pass (a checkout in a 0700 folder of root's): those are given search permission as for its state
 * folders (`letQemuReach`); a file it still cannot read is refused naming `qemu.toolsDir`.
 */
export function letQemuReadTools(tools: QemuTools, u: QemuUser, logger: Logger): void {
  const files = [tools.qemuBinary, tools.kernel, tools.initrd];
  const dirs = [tools.dir, tools.moduleDir, ...tools.dataDirs, ...tools.libraryPath].filter((d) => fs.existsSync(d));
  // letQemuReach checks the folders above its argument: a name inside each folder covers the folder itself.
  for (const f of [...files, ...dirs.map((d) => path.join(d, '.reach'))]) letQemuReach(f, u, 'qemu.toolsDir', logger);
  for (const f of files) {
    const st = fs.statSync(f);
    const readable = st.uid === u.uid ? (st.mode & 0o400) !== 0 : st.gid === u.gid ? (st.mode & 0o040) !== 0 : (st.mode & 0o004) !== 0;
    if (!readable)
      throw new UserFacingError(`qemu.toolsDir: QEMU runs as ${u.name}, which cannot read ${f} (mode ${(st.mode & 0o777).toString(8)})`, 'qemu.toolsDir');
  }
}

/**
 * A folder of QEMU's user (0700) that the root agent makes and reaches: not a symbolic link, and owned by root or by
 * that user already; a folder of anyone else is refused with one line naming `field`.
 */
export function ensureQemuDir(dir: string, u: QemuUser, field: string, logger: Logger): string {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  if (st.isSymbolicLink()) throw new UserFacingError(`${field}: ${dir} is a symbolic link; it must be a folder of its own`, field);
  if (!st.isDirectory()) throw new UserFacingError(`${field}: ${dir} is not a folder`, field);
  if (st.uid !== process.geteuid?.() && st.uid !== u.uid)
    throw new UserFacingError(
      `${field}: ${dir} belongs to uid ${st.uid}, not to this process's user (uid ${process.geteuid?.()}) nor to QEMU's (${u.name}, uid ${u.uid}); refusing to keep state there`,
      field,
    );
  fs.chownSync(dir, u.uid, u.gid);
  fs.chmodSync(dir, 0o700);
  letQemuReach(dir, u, field, logger);
  return dir;
}

/** A folder of QEMU's (made by `ensureQemuDir`) is its user's, 0700, again: one stat when nothing changed. */
export function claimForQemu(dir: string, u: QemuUser): void {
  const st = fs.statSync(dir);
  if (st.uid !== u.uid || st.gid !== u.gid) fs.chownSync(dir, u.uid, u.gid);
  if ((st.mode & 0o777) !== 0o700) fs.chmodSync(dir, 0o700);
}

/** The files QEMU's tls-creds-x509 reads from a credentials folder (compute/fleet-ca.ts). */
const TLS_FILES = ['ca-cert.pem', 'ca-crl.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem', 'dh-params.pem'];

/**
 * A copy of a server's credentials folder that QEMU's user can read (0700 folder, 0600 files, owned by that user),
 * for one QEMU process: the agent's own folder stays root's. Removed with the process (`removeQemuTls`).
 */
export function copyTlsForQemu(from: string, to: string, u: QemuUser): string {
  fs.rmSync(to, { recursive: true, force: true });
  fs.mkdirSync(to, { mode: 0o700 });
  for (const f of TLS_FILES) {
    const src = path.join(from, f);
    if (!fs.existsSync(src)) continue;
    const dst = path.join(to, f);
    fs.copyFileSync(src, dst);
    fs.chmodSync(dst, 0o600);
    fs.chownSync(dst, u.uid, u.gid);
  }
  fs.chownSync(to, u.uid, u.gid);
  return to;
}

/**
 * The copy's revocation list (`ca-crl.pem`) made the server's again: a QEMU process lives for weeks, and the list it
 * checks a migration's peer against must be the one of now. QEMU loads it at each `object-add` of credentials.
 */
export function refreshQemuCrl(from: string, to: string, u: QemuUser): void {
  const src = path.join(from, 'ca-crl.pem');
  const dst = path.join(to, 'ca-crl.pem');
  if (!fs.existsSync(src)) {
    fs.rmSync(dst, { force: true });
    return;
  }
  writeFileAtomic(dst, fs.readFileSync(src), { mode: 0o600, owner: { uid: u.uid, gid: u.gid } });
}

/**
 * QEMU opens /dev/net/tun to attach to its VM's tap (made for its user, so the kernel lets only that user attach).
 * Where the device is root's only (0600, as in some containers), it is given to QEMU's group (0660): creating a new
 * tap still needs CAP_NET_ADMIN, attaching to one still needs to be its user.
 */
export function letQemuOpenTun(u: QemuUser, logger: Logger): void {
  const dev = '/dev/net/tun';
  const st = fs.statSync(dev);
  const ok = st.uid === u.uid ? (st.mode & 0o600) === 0o600 : st.gid === u.gid ? (st.mode & 0o060) === 0o060 : (st.mode & 0o006) === 0o006;
  if (ok) return;
  if (st.gid !== 0 && st.gid !== u.gid)
    throw new UserFacingError(
      `qemu.user: ${u.name} cannot open ${dev} (group ${st.gid}, mode ${(st.mode & 0o777).toString(8)}); give it read/write on the device`,
      'qemu.user',
    );
  fs.chownSync(dev, st.uid, u.gid);
  fs.chmodSync(dev, (st.mode & 0o7707) | 0o060);
  logger.warn({ device: dev, user: u.name }, "gave QEMU's group read/write on /dev/net/tun (a tap still admits only the user it was made for)");
}

/**
 * Post-copy needs userfaultfd on the destination, for faults the kernel takes too (a device's DMA into a page not
 * there yet), which an unprivileged process gets only through /dev/userfaultfd (Linux ≥ 5.11; QEMU ≥ 8.1 opens it) or
 * the vm.unprivileged_userfaultfd sysctl. Only QEMU's group gets read/write on the device: userfaultfd is also a tool
 * for widening kernel races, so it is not opened to everyone. Without the device, post-copy moves fail at setup (logged).
 */
export function letQemuUseUserfaultfd(u: QemuUser, logger: Logger): void {
  const dev = '/dev/userfaultfd';
  if (!fs.existsSync(dev)) {
    logger.warn({ device: dev }, 'no /dev/userfaultfd: post-copy moves into this server need vm.unprivileged_userfaultfd=1');
    return;
  }
  const st = fs.statSync(dev);
  const ok = st.uid === u.uid ? (st.mode & 0o600) === 0o600 : st.gid === u.gid ? (st.mode & 0o060) === 0o060 : (st.mode & 0o006) === 0o006;
  if (ok) return;
  if (st.gid !== 0 && st.gid !== u.gid) {
    logger.warn({ device: dev, gid: st.gid }, `${u.name} cannot open ${dev} (another group owns it): post-copy moves into this server will fail`);
    return;
  }
  fs.chownSync(dev, st.uid, u.gid);
  fs.chmodSync(dev, (st.mode & 0o7707) | 0o060);
  logger.warn({ device: dev, user: u.name }, "gave QEMU's group read/write on /dev/userfaultfd (post-copy's destination needs it)");
}

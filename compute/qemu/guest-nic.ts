import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as net from 'node:net';

/**
 * A VM's NIC on the tenant network: virtio-net on a tap in this server's tenant bridge. Its MAC, IP and tap name are
 * derived from the VM id alone, so the source and the destination of a migration (and the tenant) agree without
 * being told, and a VM keeps its address wherever it runs.
 *
 * The tenant network is one L2 segment (VXLAN between the servers' bridges), 198.19.0.0/16: guests get addresses
 * below 198.19.255.0; 198.19.255.x is for the servers' bridges (the agent's probe) and the tenant's client.
 */

export const TENANT_PREFIX_LENGTH = 16;
/** The guest's counter service (busybox nc in guest-init.sh). */
export const GUEST_SERVICE_PORT = 7000;
/** VXLAN leaves 1450 bytes of the fabric's 1500. */
export const TENANT_MTU = 1450;

export interface GuestNic {
  mac: string;
  ip: string;
  tap: string;
}

const digest = (s: string) => createHash('sha256').update(s).digest();

export function guestNic(vmId: string): GuestNic {
  const h = digest(`dhm-nic\0${vmId}`);
  // 198.19.0.1 – 198.19.254.254: never .0 or .255 in the last byte, never the 198.19.255.x infrastructure range.
  const ip = `198.19.${h[3]! % 255}.${1 + (h[4]! % 254)}`;
  const mac = ['52', '54', '00', h[0]!, h[1]!, h[2]!].map((b) => (typeof b === 'string' ? b : b.toString(16).padStart(2, '0'))).join(':');
  return { mac, ip, tap: `dt${h.subarray(5, 11).toString('hex').slice(0, 11)}` };
}

/** A string only the guest's memory holds (the kernel command line and a tmpfs file): never sent by the agents. */
export function guestMarker(vmId: string): string {
  return `dhmmark${digest(`dhm-marker\0${vmId}`).toString('hex').slice(0, 24)}`;
}

/** Synchronous: a few ms, and VM creation (which needs the tap before QEMU starts) is synchronous. */
function ip(args: string[]): void {
  try {
    execFileSync('ip', args, { timeout: 10_000, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`ip ${args.join(' ')}: ${stderr || (err as Error).message}`);
  }
}

/**
 * Makes the VM's tap (persistent, so QEMU only opens it) in `bridge`, up, at the tenant MTU. With `owner` (QEMU's
 * unprivileged user) the kernel lets that user attach to it without CAP_NET_ADMIN, and nobody else.
 */
export function createTap(tap: string, bridge: string, owner?: { uid: number; gid: number } | null): void {
  deleteTap(tap); // a leftover of a crashed agent
  ip(['tuntap', 'add', 'dev', tap, 'mode', 'tap', ...(owner ? ['user', String(owner.uid), 'group', String(owner.gid)] : [])]);
  ip(['link', 'set', tap, 'mtu', String(TENANT_MTU), 'master', bridge, 'up']);
}

export function deleteTap(tap: string): void {
  try {
    ip(['link', 'del', tap]);
  } catch {
    // not there
  }
}

/** QEMU arguments of the NIC (identical on both ends of a migration). */
export function nicArgs(nic: GuestNic): string[] {
  return ['-netdev', `tap,id=net0,ifname=${nic.tap},script=no,downscript=no`, '-device', `virtio-net-pci,netdev=net0,mac=${nic.mac},romfile=`];
}

/** How often the probe opens a further connection while none has been answered (see probeGuest). */
export const PROBE_ATTEMPT_MS = 150;

/**
 * One request to the guest's counter service: resolves its counter, rejects after `timeoutMs`. The agent uses it to
 * see that a VM that migrated in answers on its NIC here before the move is reported done.
 *
 * Right after a switchover the first SYN may meet a guest whose network is not up here yet (the bridge still
 * learning its MAC, the guest just resumed): the kernel would resend it only after its 1 s initial RTO. So while no
 * connection has been established, a further one is opened every `attemptMs` (once one is, the guest is reachable
 * and only its answer is awaited: no more connections for it to serve); the first answer wins, the rest are closed.
 *
 * `until: 'handshake'` ends at the TCP handshake (resolves null): the guest's kernel answers on its NIC here, its
 * service's socket is listening; the answer itself waits for the guest to fork a handler, which under TCG on a loaded
 * host took 1–2.5 s after a switchover (bench/results/*-testbed-move-phases.md, the `commit` phase).
 */
export function probeGuest(
  guestIp: string,
  timeoutMs: number,
  opts: { port?: number; attemptMs?: number; until?: 'answer' | 'handshake' } = {},
): Promise<number | null> {
  const port = opts.port ?? GUEST_SERVICE_PORT;
  const attemptMs = opts.attemptMs ?? PROBE_ATTEMPT_MS;
  return new Promise((resolve, reject) => {
    const socks = new Set<net.Socket>();
    let lastErr: Error | null = null;
    let settled = false;
    let connected = false;
    const finish = (err: Error | null, n?: number | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearInterval(again);
      for (const s of socks) s.destroy();
      if (err) reject(err);
      else resolve(n!);
    };
    const attempt = () => {
      if (connected) return;
      const sock = net.connect({ host: guestIp, port });
      socks.add(sock);
      let buf = '';
      sock.setEncoding('latin1');
      sock.on('connect', () => {
        connected = true;
        if (opts.until === 'handshake') return finish(null, null);
        sock.write('probe\n');
      });
      sock.on('data', (d: string) => {
        buf += d;
        const m = /^probe (\d+)\n/m.exec(buf);
        if (m) finish(null, Number(m[1]));
      });
      sock.on('error', (err) => {
        lastErr = err;
        // Attempts go on unless another connection is up (one that broke after it was made counts for nothing).
        connected = [...socks].some((x) => x !== sock && x.readyState === 'open');
        socks.delete(sock);
        sock.destroy();
      });
    };
    const timer = setTimeout(
      () => finish(new Error(`no answer from ${guestIp}:${port} within ${timeoutMs} ms${lastErr ? ` (${lastErr.message})` : ''}`)),
      timeoutMs,
    );
    const again = setInterval(attempt, attemptMs);
    attempt();
  });
}

import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import type { ClientRequest } from 'node:http';
import * as https from 'node:https';
import type { Socket } from 'node:net';
import * as path from 'node:path';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { UserFacingError } from '../common/errors';
import { idSchema } from '../common/fleet';
import { ensurePrivateDir } from '../common/private-dir';
import { controlPlaneRevocationFile, readRevoked, RevocationList, revokeCertificates, serverRevocationFile, watchRevocations } from './cert-revocation';
import { checkServerCreds, CRL_FILE, ensureFleetCa, issueClientCreds, issueServerCreds, writeCrl, type FleetCa } from './fleet-ca';

/**
 * The agent plane's mutual TLS, with the fleet CA (compute/fleet-ca.ts). Every agent listens with its server's own
 * certificate (`CN=<serverId>`, serverAuth) and asks every caller for a certificate of the same CA; the caller's
 * subject says who it is: the control plane (`CN=dhm control plane`, a name no server id can have: ids have no
 * spaces) or a peer server (`CN=<serverId>`, its clientAuth certificate). What each may call is decided in
 * agent-service.ts. Nothing else authenticates a request: there is no shared secret on the agent plane.
 */
export const CONTROL_PLANE_CN = 'dhm control plane';

/** What an agent needs: its server certificate to listen with, its client certificate to call peers, the fleet CA. */
export interface AgentServerTls {
  serverId: string;
  ca: string;
  cert: string;
  key: string;
  clientCert: string;
  clientKey: string;
  /** The revoked serials this server checks its callers and peers against (compute/cert-revocation.ts). */
  revokedFile?: string;
}

/** What a caller needs: its client certificate (the control plane's, or a server's for peer calls) and the fleet CA. */
export interface AgentClientTls {
  ca: string;
  cert: string;
  key: string;
  /** The revoked serials the agents it calls are checked against. */
  revokedFile?: string;
}

export type Caller = { kind: 'control-plane' } | { kind: 'server'; serverId: string };

const read = (dir: string, f: string) => fs.readFileSync(path.join(dir, f), 'utf8');

/** A server's credential folder (fleet-ca.ts file names), checked: the agent refuses to start with anything less. */
export function loadServerTls(dir: string, serverId: string, field: string): AgentServerTls {
  checkServerCreds(dir, serverId, path.join(dir, 'ca-cert.pem'), field);
  return {
    serverId,
    ca: read(dir, 'ca-cert.pem'),
    cert: read(dir, 'server-cert.pem'),
    key: read(dir, 'server-key.pem'),
    clientCert: read(dir, 'client-cert.pem'),
    clientKey: read(dir, 'client-key.pem'),
    revokedFile: serverRevocationFile(dir),
  };
}

/** The control plane's credential folder: `ca-cert.pem`, `client-cert.pem` (CN=dhm control plane, by that CA), `client-key.pem` (0600). */
export function loadControlPlaneTls(dir: string, field: string): AgentClientTls {
  const fail = (why: string): never => {
    throw new UserFacingError(`${field}: ${why}`, field);
  };
  for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) if (!fs.existsSync(path.join(dir, f))) fail(`${path.join(dir, f)} is missing`);
  if ((fs.statSync(path.join(dir, 'client-key.pem')).mode & 0o077) !== 0) fail(`${path.join(dir, 'client-key.pem')} is readable by others (must be 0600)`);
  const ca = new X509Certificate(read(dir, 'ca-cert.pem'));
  const cert = new X509Certificate(read(dir, 'client-cert.pem'));
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) fail(`${path.join(dir, 'client-cert.pem')} is not issued by ${path.join(dir, 'ca-cert.pem')}`);
  if (!cert.subject.split('\n').includes(`CN=${CONTROL_PLANE_CN}`))
    fail(`${path.join(dir, 'client-cert.pem')} is not the control plane's (CN=${CONTROL_PLANE_CN})`);
  return { ca: read(dir, 'ca-cert.pem'), cert: read(dir, 'client-cert.pem'), key: read(dir, 'client-key.pem'), revokedFile: controlPlaneRevocationFile(dir) };
}

/** A server's own client identity, for the calls it makes to peers. */
export const peerClientTls = (t: AgentServerTls): AgentClientTls => ({
  ca: t.ca,
  cert: t.clientCert,
  key: t.clientKey,
  ...(t.revokedFile ? { revokedFile: t.revokedFile } : {}),
});

function commonName(cert: PeerCertificate | X509Certificate | undefined): string | undefined {
  if (!cert) return undefined;
  if (cert instanceof X509Certificate)
    return cert.subject
      .split('\n')
      .find((l) => l.startsWith('CN='))
      ?.slice(3);
  const cn = (cert.subject as Record<string, string | string[]> | undefined)?.CN;
  return Array.isArray(cn) ? undefined : cn; // two CNs: ambiguous, nobody
}

/** Who is at the other end of an agent's TLS connection (verified against the fleet CA by the handshake); null: nobody we know. */
export function callerOf(socket: TLSSocket): Caller | null {
  if (!socket.authorized) return null;
  const cn = commonName(socket.getPeerCertificate());
  if (cn === CONTROL_PLANE_CN) return { kind: 'control-plane' };
  if (cn !== undefined && idSchema.safeParse(cn).success) return { kind: 'server', serverId: cn };
  return null;
}

/** The server id an agent's certificate names, when it names one (the client's check that it reached a fleet server). */
export function serverIdOf(cert: PeerCertificate | undefined): string | null {
  const cn = commonName(cert);
  return cn !== undefined && idSchema.safeParse(cn).success ? cn : null;
}

/** The serial of the certificate the other end of a TLS socket proved (undefined before the handshake). */
const peerSerial = (socket: unknown): string | undefined => (socket as Partial<TLSSocket>).getPeerCertificate?.()?.serialNumber;

/** An agent pool that never sends a request over a kept-alive connection to an agent whose certificate was revoked since. */
class AgentPool extends https.Agent {
  constructor(
    opts: https.AgentOptions,
    private readonly revoked: RevocationList | null,
  ) {
    super(opts);
  }

  override reuseSocket(socket: Socket, req: ClientRequest): void {
    super.reuseSocket(socket, req);
    const why = this.revoked?.check(peerSerial(socket));
    if (why) {
      const err = new Error(`the agent at ${req.host}: ${why}`);
      socket.destroy(err);
      req.destroy(err);
    }
  }

  // Node's pool destroys a freed socket when this returns false (its typings say void).
  override keepSocketAlive(socket: Socket): void {
    if (this.revoked?.check(peerSerial(socket))) return false as unknown as void;
    return super.keepSocketAlive(socket);
  }

  /** Destroys every socket (busy or idle) whose agent's certificate the list now revokes. */
  cutRevoked(list: RevocationList): number {
    let cut = 0;
    for (const group of [this.sockets, this.freeSockets])
      for (const sockets of Object.values(group))
        for (const socket of sockets ?? []) {
          const why = list.verdict(peerSerial(socket));
          if (why) {
            socket.destroy(new Error(`agent connection cut: ${why}`));
            cut++;
          }
        }
    return cut;
  }
}

/** Pools are dropped without a close (a client per call in places): their watch ends when they are collected. */
const unwatchPool = new FinalizationRegistry<() => void>((stop) => stop());

/**
 * An HTTPS connection pool presenting `tls`'s client certificate. The server must prove a certificate of the fleet CA
 * naming a server (host names are not what identifies an agent: its certificate's subject is; addresses change).
 * Connections are kept alive, so the revocation list is checked on each new connection, again before each request on
 * a kept-alive one, and, when the list changes, every open connection to a now-revoked agent is cut.
 */
export function agentHttpsAgent(tls: AgentClientTls): https.Agent {
  const revoked = tls.revokedFile ? new RevocationList(tls.revokedFile) : null;
  const pool = new AgentPool(
    {
      keepAlive: true,
      // No session resumption: a resumed session carries no peer certificate to check the agent's identity against.
      maxCachedSessions: 0,
      noDelay: true,
      ca: tls.ca,
      cert: tls.cert,
      key: tls.key,
      checkServerIdentity: (_host, cert) => {
        if (!serverIdOf(cert)) return new Error(`the certificate of ${_host} names no fleet server (${JSON.stringify(cert.subject)})`);
        const revokedWhy = revoked?.check(cert.serialNumber);
        return revokedWhy ? new Error(`the agent at ${_host}: ${revokedWhy}`) : undefined;
      },
    },
    revoked,
  );
  if (tls.revokedFile) {
    const ref = new WeakRef(pool);
    const stop = watchRevocations(tls.revokedFile, (list) => {
      const p = ref.deref();
      if (p) p.cutRevoked(list);
      else stop();
    });
    unwatchPool.register(pool, stop);
  }
  return pool;
}

/** Files of the agent plane's PKI under one root folder (0700, keys 0600). */
export interface AgentPki {
  root: string;
  caDir: string;
  controlPlaneDir: string;
  controlPlane: AgentClientTls;
  /** A server's credential folder; made by `ensureAgentPki` for the ids it was given. */
  serverDir(serverId: string): string;
  server(serverId: string): AgentServerTls;
}

/**
 * The fleet CA, the control plane's client certificate and one certificate pair per server under `root`, made on
 * first use and reused afterwards (a server's folder is re-issued only when its check fails). What `dhm up` and the
 * in-process stacks use, so the agent plane needs no configuration on one machine.
 */
export async function ensureAgentPki(root: string, serverIds: string[], opts: { addresses?: string[]; field?: string } = {}): Promise<AgentPki> {
  const field = opts.field ?? 'DHM_HOME';
  ensurePrivateDir(root, field);
  const caDir = ensurePrivateDir(path.join(root, 'ca'), field);
  const ca = await ensureFleetCa(caDir);
  const controlPlaneDir = path.join(root, 'control-plane');
  const serverDir = (id: string) => path.join(root, 'servers', id);
  ensurePrivateDir(path.join(root, 'servers'), field);
  const valid = (check: () => void) => {
    try {
      check();
      return true;
    } catch {
      return false;
    }
  };
  if (!valid(() => loadControlPlaneTls(controlPlaneDir, field))) await issueClientCreds(ca, CONTROL_PLANE_CN, ensurePrivateDir(controlPlaneDir, field));
  const missing = [...new Set(serverIds)].filter((id) => !valid(() => checkServerCreds(serverDir(id), id, ca.certPath, field)));
  // Four at a time: each is six openssl runs, and a fleet of a hundred servers should not take a minute.
  for (let i = 0; i < missing.length; i += 4)
    await Promise.all(missing.slice(i, i + 4).map((id) => issueServerCreds(ca, id, opts.addresses ?? ['127.0.0.1'], ensurePrivateDir(serverDir(id), field))));
  copyCrlToServers(root); // a server added after a revocation gets the list too
  return {
    root,
    caDir,
    controlPlaneDir,
    controlPlane: loadControlPlaneTls(controlPlaneDir, field),
    serverDir,
    server: (id) => loadServerTls(serverDir(id), id, field),
  };
}

/** The IP addresses in a certificate's SAN (`IP Address:…`), to reissue it for the same addresses. */
function sanAddresses(certFile: string): string[] {
  const san = new X509Certificate(fs.readFileSync(certFile)).subjectAltName ?? '';
  return san
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.startsWith('IP Address:'))
    .map((s) => s.slice('IP Address:'.length));
}

const lists = (root: string) => [serverRevocationFile(path.join(root, 'servers', 'x')), controlPlaneRevocationFile(path.join(root, 'control-plane'))];

/** `servers/ca-crl.pem` into every server's folder, where QEMU's `tls-creds-x509` (`dir=`) loads it. */
function copyCrlToServers(root: string): void {
  const servers = path.join(root, 'servers');
  const crl = path.join(servers, CRL_FILE);
  if (!fs.existsSync(crl)) return;
  for (const e of fs.readdirSync(servers, { withFileTypes: true })) {
    if (!e.isDirectory() || !fs.existsSync(path.join(servers, e.name, 'server-cert.pem'))) continue;
    const staged = path.join(servers, e.name, `${CRL_FILE}.${process.pid}.tmp`);
    fs.copyFileSync(crl, staged);
    fs.renameSync(staged, path.join(servers, e.name, CRL_FILE));
  }
}

/**
 * The fleet CA's CRL of every revoked certificate (the servers' list), as QEMU reads it: QEMU's own migration TLS
 * (GnuTLS) checks a peer's certificate against `ca-crl.pem` in its credentials folder, which the agent plane's
 * `revoked.json` does not reach. Written to `servers/ca-crl.pem` and each server's folder.
 */
export function writeFleetCrl(root: string, entries = readRevoked(serverRevocationFile(path.join(root, 'servers', 'x')))): void {
  const caDir = path.join(root, 'ca');
  const ca: FleetCa = { dir: caDir, certPath: path.join(caDir, 'ca-cert.pem'), keyPath: path.join(caDir, 'ca-key.pem') };
  writeCrl(ca, entries, path.join(root, 'servers', CRL_FILE));
  copyCrlToServers(root);
}

/**
 * `dhm pki --revoke <id>`: the server's certificates (server and client) go on the revocation lists of the servers'
 * and the control plane's folders; every agent and the control plane refuse them from their next call on.
 */
export function revokeServer(root: string, serverId: string, field: string): string[] {
  const dir = path.join(root, 'servers', serverId);
  if (!fs.existsSync(path.join(dir, 'server-cert.pem')))
    throw new UserFacingError(`${field}: no certificates of server ${serverId} in ${path.join(root, 'servers')}`, field);
  const revoked = revokeCertificates(lists(root), [path.join(dir, 'server-cert.pem'), path.join(dir, 'client-cert.pem')]);
  writeFleetCrl(root);
  return revoked;
}

/**
 * `dhm pki --rotate <id>`: new keys and certificates for the server (same name and addresses), the old ones revoked.
 * Only that server's agent restarts (or is given the new folder); the others accept the new certificate at once.
 */
export async function rotateServer(root: string, serverId: string, field: string): Promise<{ revoked: string[] }> {
  const dir = path.join(root, 'servers', serverId);
  const old = path.join(dir, 'server-cert.pem');
  if (!fs.existsSync(old)) throw new UserFacingError(`${field}: no certificates of server ${serverId} in ${path.join(root, 'servers')}`, field);
  const caDir = path.join(root, 'ca');
  const ca: FleetCa = { dir: caDir, certPath: path.join(caDir, 'ca-cert.pem'), keyPath: path.join(caDir, 'ca-key.pem') };
  const addresses = sanAddresses(old);
  const revoked = revokeServer(root, serverId, field);
  await issueServerCreds(ca, serverId, addresses, dir);
  return { revoked };
}

import * as fs from 'node:fs';
import * as path from 'node:path';
import { X509Certificate } from 'node:crypto';
import type { TLSConfig } from '@temporalio/client';
import { UserFacingError } from '../common/errors';
import { ensurePrivateDir } from '../common/private-dir';
import { ensureFleetCa, issueCert } from '../compute/fleet-ca';

/**
 * Mutual TLS for Temporal's frontend: a CA of its own (not the fleet CA: a server's agent certificate must not be a
 * Temporal client, and Temporal's frontend, without an authorizer, lets any certificate of its client CA do
 * everything), the frontend's server certificate, and client certificates for dhm's own clients (worker, scheduler,
 * API, CLI), Temporal's system worker and the Web UI server. `dhm pki` makes them under `<out>/temporal/`:
 *   ca/       ca-cert.pem, ca-key.pem (stays there)
 *   server/   what every Temporal server process mounts (TEMPORAL_TLS_DIR of deploy/temporal/config/base.yaml):
 *             server-cert.pem/-key.pem (CN=temporal-frontend, SAN the frontend's names) and client-cert.pem/-key.pem
 *             (CN=temporal system worker: the worker service calls the frontend like any client)
 *   client/   dhm's roles: TEMPORAL_TLS_CA=client/ca-cert.pem, TEMPORAL_TLS_CERT/KEY=client/client-cert.pem/-key.pem
 *   ui/       the Web UI server's client certificate (same file names as client/)
 * Folders 0700, keys 0600 (compute/fleet-ca.ts's openssl helper: keys are written by openssl to files, never argv).
 */
export const TEMPORAL_FRONTEND_NAME = 'temporal-frontend';

export interface TemporalPki {
  root: string;
  caDir: string;
  /** TEMPORAL_TLS_DIR of every Temporal server process. */
  serverDir: string;
  /** dhm's client identity (TEMPORAL_TLS_CA / _CERT / _KEY). */
  clientDir: string;
  uiDir: string;
  /** The name clients check the frontend's certificate for (TEMPORAL_TLS_SERVER_NAME). */
  serverName: string;
}

const valid = (dir: string, role: 'server' | 'client', cn: string, caCert: string): boolean => {
  try {
    const ca = new X509Certificate(fs.readFileSync(caCert));
    const cert = new X509Certificate(fs.readFileSync(path.join(dir, `${role}-cert.pem`)));
    return (
      fs.existsSync(path.join(dir, `${role}-key.pem`)) &&
      fs.readFileSync(path.join(dir, 'ca-cert.pem')).equals(fs.readFileSync(caCert)) &&
      cert.checkIssued(ca) &&
      cert.verify(ca.publicKey) &&
      cert.subject.split('\n').includes(`CN=${cn}`) &&
      Date.parse(cert.validTo) > Date.now()
    );
  } catch {
    return false;
  }
};

/**
 * Temporal's CA and certificates under `<root>` (made once, reused; a folder whose certificate does not check is
 * issued again). `names`/`addresses` go into the frontend certificate's SAN, besides `temporal-frontend`,
 * `localhost` and 127.0.0.1.
 */
export async function ensureTemporalPki(root: string, opts: { names?: string[]; addresses?: string[]; field?: string } = {}): Promise<TemporalPki> {
  const field = opts.field ?? '--out';
  ensurePrivateDir(root, field);
  const caDir = ensurePrivateDir(path.join(root, 'ca'), field);
  const ca = await ensureFleetCa(caDir, 'dhm temporal CA');
  const pki: TemporalPki = {
    root,
    caDir,
    serverDir: path.join(root, 'server'),
    clientDir: path.join(root, 'client'),
    uiDir: path.join(root, 'ui'),
    serverName: TEMPORAL_FRONTEND_NAME,
  };
  const san = [...new Set([TEMPORAL_FRONTEND_NAME, 'localhost', ...(opts.names ?? [])])]
    .map((n) => `DNS:${n}`)
    .concat([...new Set(['127.0.0.1', ...(opts.addresses ?? [])])].map((a) => `IP:${a}`))
    .join(',');
  const issue = async (dir: string, role: 'server' | 'client', cn: string, withSan: boolean) => {
    ensurePrivateDir(dir, field);
    if (valid(dir, role, cn, ca.certPath)) return;
    fs.copyFileSync(ca.certPath, path.join(dir, 'ca-cert.pem'));
    await issueCert(ca, cn, role, withSan ? san : null, dir);
  };
  await issue(pki.serverDir, 'server', TEMPORAL_FRONTEND_NAME, true);
  await issue(pki.serverDir, 'client', 'temporal system worker', false);
  await issue(pki.clientDir, 'client', 'dhm temporal client', false);
  await issue(pki.uiDir, 'client', 'temporal web ui', false);
  return pki;
}

/** The client-side TLS settings of a client folder (`client/` or `ui/`), as the SDK takes them. */
export function temporalClientTls(pki: Pick<TemporalPki, 'serverName'>, dir: string): TLSConfig {
  const read = (f: string) => {
    try {
      return fs.readFileSync(path.join(dir, f));
    } catch (err) {
      throw new UserFacingError(`temporal tls: cannot read ${path.join(dir, f)} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, 'TEMPORAL_TLS_CERT');
    }
  };
  return {
    serverNameOverride: pki.serverName,
    serverRootCACertificate: read('ca-cert.pem'),
    clientCertPair: { crt: read('client-cert.pem'), key: read('client-key.pem') },
  };
}

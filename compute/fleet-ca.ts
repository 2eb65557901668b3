import { execFile, execFileSync } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserFacingError } from '../common/errors';
import { writeFileAtomic } from '../common/atomic-file';

/**
 * The fleet's certificate authority and the certificates it issues to servers, made with the `openssl` command (no
 * key ever passes through argv or the environment: openssl writes keys to files, created 0600).
 *
 * A CA folder holds `ca-key.pem` (0600, never leaves it) and `ca-cert.pem`. A server's folder has QEMU's fixed file
 * names for `tls-creds-x509`: `ca-cert.pem`, `server-cert.pem`/`server-key.pem` (serverAuth, SAN with its name and
 * address) and `client-cert.pem`/`client-key.pem` (clientAuth); both certificates' subject is `CN=<serverId>`, which
 * is the identity a target's `tls-authz` checks. The agent plane's mTLS (compute/agent-tls.ts) uses the same
 * CA and certificates, plus a client-only certificate for the control plane.
 */

export interface FleetCa {
  dir: string;
  certPath: string;
  keyPath: string;
}

export interface ServerCreds {
  /** The folder QEMU's `tls-creds-x509` reads (`dir=`). */
  dir: string;
  serverId: string;
}

const CA_DAYS = 3650;
const CERT_DAYS = 825;

function openssl(args: string[], cwd?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { cwd, timeout: 30_000 }, (err, _stdout, stderr) => {
      if (err) reject(new Error(`openssl ${args[0]} failed: ${stderr.trim() || err.message}`));
      else resolve();
    });
  });
}

/** `openssl` run synchronously (the revocation list is written inside `dhm pki --revoke`'s synchronous step). */
function opensslSync(args: string[]): void {
  try {
    execFileSync('openssl', args, { timeout: 30_000, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = String((err as { stderr?: Buffer }).stderr ?? '').trim();
    throw new Error(`openssl ${args[0]} failed: ${stderr || (err as Error).message}`);
  }
}

/** QEMU's name for a revocation list in a `tls-creds-x509` folder: loaded with the CA when the file is there. */
export const CRL_FILE = 'ca-crl.pem';
/** How long a written CRL is valid (its nextUpdate): as long as the CA, so an old list never turns into a refusal of every peer. */
const CRL_DAYS = CA_DAYS;

/** An X.509 date as openssl's CA database writes it (`YYMMDDHHMMSSZ`). */
const dbDate = (d: Date) => d.toISOString().replace(/[-:T]/g, '').slice(2, 14) + 'Z';

/**
 * A CRL signed by the CA, listing `revoked` (serial in hex, subject, when), written to `outFile` (0644: it is public).
 * Made with `openssl ca -gencrl` over a CA database written for the occasion in a private folder next to the key;
 * the key is passed as a path, never its contents.
 */
export function writeCrl(ca: FleetCa, revoked: Array<{ serial: string; subject: string; revokedAt: string }>, outFile: string): void {
  const work = fs.mkdtempSync(path.join(ca.dir, '.crl-'));
  try {
    const index = revoked.map((r) => {
      const subject = '/' + r.subject.split(/,\s*/).join('/');
      const serial = r.serial.length % 2 ? `0${r.serial}` : r.serial;
      // Status R, an expiry (openssl needs one; the CRL does not carry it), revocation date, serial, file, subject.
      return ['R', dbDate(new Date(Date.parse(r.revokedAt) + CERT_DAYS * 86_400_000)), dbDate(new Date(r.revokedAt)), serial, 'unknown', subject].join('\t');
    });
    fs.writeFileSync(path.join(work, 'index.txt'), index.length ? `${index.join('\n')}\n` : '');
    fs.writeFileSync(path.join(work, 'crlnumber'), `${Date.now().toString(16).padStart(16, '0')}\n`);
    fs.writeFileSync(
      path.join(work, 'ca.cnf'),
      [
        '[ca]',
        'default_ca = fleet',
        '[fleet]',
        `database = ${path.join(work, 'index.txt')}`,
        `crlnumber = ${path.join(work, 'crlnumber')}`,
        'default_md = sha256',
        `default_crl_days = ${CRL_DAYS}`,
        'unique_subject = no',
        '',
      ].join('\n'),
    );
    const tmp = path.join(work, CRL_FILE);
    opensslSync(['ca', '-gencrl', '-batch', '-config', path.join(work, 'ca.cnf'), '-keyfile', ca.keyPath, '-cert', ca.certPath, '-out', tmp]);
    writeFileAtomic(outFile, fs.readFileSync(tmp), { mode: 0o644 }); // QEMU loading its credentials never sees half a file
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** A new P-256 key in `file`, created 0600 before openssl writes into it. */
async function newKey(file: string): Promise<void> {
  fs.rmSync(file, { force: true });
  fs.closeSync(fs.openSync(file, 'wx', 0o600));
  await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', file]);
  fs.chmodSync(file, 0o600);
}

/** The CA in `dir`, made once (an existing one is reused: the fleet keeps one CA). */
export async function ensureFleetCa(dir: string, name = 'dhm fleet CA'): Promise<FleetCa> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const ca: FleetCa = { dir, certPath: path.join(dir, 'ca-cert.pem'), keyPath: path.join(dir, 'ca-key.pem') };
  if (fs.existsSync(ca.certPath) && fs.existsSync(ca.keyPath)) return ca;
  await newKey(ca.keyPath);
  await openssl([
    'req',
    '-x509',
    '-new',
    '-key',
    ca.keyPath,
    '-out',
    ca.certPath,
    '-days',
    String(CA_DAYS),
    '-subj',
    `/CN=${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return ca;
}

/** One certificate for `cn` with `role`'s extended key usage, as `<role>-cert.pem`/`<role>-key.pem` in `outDir`. */
export async function issueCert(ca: FleetCa, cn: string, role: 'server' | 'client', san: string | null, outDir: string): Promise<void> {
  const key = path.join(outDir, `${role}-key.pem`);
  const csr = path.join(outDir, `${role}.csr`);
  const ext = path.join(outDir, `${role}.ext`);
  await newKey(key);
  await openssl(['req', '-new', '-key', key, '-out', csr, '-subj', `/CN=${cn}`]);
  fs.writeFileSync(
    ext,
    [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      `extendedKeyUsage=${role === 'server' ? 'serverAuth' : 'clientAuth'}`,
      ...(san ? [`subjectAltName=${san}`] : []),
    ].join('\n'),
  );
  // A serial per certificate from the random source, not a shared serial file: issuing in parallel stays safe.
  await openssl([
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    ca.certPath,
    '-CAkey',
    ca.keyPath,
    '-set_serial',
    `0x${randomBytes(16).toString('hex')}`,
    '-out',
    path.join(outDir, `${role}-cert.pem`),
    '-days',
    String(CERT_DAYS),
    '-extfile',
    ext,
  ]);
  fs.rmSync(csr, { force: true });
  fs.rmSync(ext, { force: true });
}

/**
 * RFC 7919's ffdhe2048 group (`openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048`), public and fixed.
 * Without a `dh-params.pem` QEMU generates DH parameters each time it loads server credentials (tls-creds-x509,
 * endpoint=server): 0.1–1.2 s of CPU on an idle machine here, and on a starved one longer than a destination's
 * 10 s QMP timeout, which failed testbed moves with "the target's destination did not listen".
 */
const FFDHE2048_PEM = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`;

/** Puts the fixed DH group in a server credentials folder (QEMU's `dh-params.pem`), if it is not there. Idempotent. */
export function ensureDhParams(dir: string): void {
  const file = path.join(dir, 'dh-params.pem');
  if (!fs.existsSync(file)) fs.writeFileSync(file, FFDHE2048_PEM, { mode: 0o644 });
}

/**
 * Issues `serverId`'s server and client certificates into `outDir` (QEMU's file names), with the CA's certificate.
 * `addresses` go into the SAN as IPs, the server id as a DNS name (what a source's `tls-hostname` checks).
 */
export async function issueServerCreds(ca: FleetCa, serverId: string, addresses: string[], outDir: string): Promise<ServerCreds> {
  fs.mkdirSync(outDir, { recursive: true, mode: 0o700 });
  fs.copyFileSync(ca.certPath, path.join(outDir, 'ca-cert.pem'));
  const san = [`DNS:${serverId}`, ...addresses.map((a) => `IP:${a}`)].join(',');
  for (const role of ['server', 'client'] as const) await issueCert(ca, serverId, role, san, outDir);
  ensureDhParams(outDir);
  return { dir: outDir, serverId };
}

/**
 * A client-only identity (`client-cert.pem`/`client-key.pem`, clientAuth, subject `CN=<cn>`, no SAN) with the CA's
 * certificate: the control plane's certificate for the agent plane.
 */
export async function issueClientCreds(ca: FleetCa, cn: string, outDir: string): Promise<{ dir: string }> {
  fs.mkdirSync(outDir, { recursive: true, mode: 0o700 });
  fs.copyFileSync(ca.certPath, path.join(outDir, 'ca-cert.pem'));
  await issueCert(ca, cn, 'client', null, outDir);
  return { dir: outDir };
}

const CRED_FILES = ['ca-cert.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem'] as const;

/**
 * Checks a server's credential folder before an agent uses it: every file present, keys not readable by others, the
 * CA the fleet's (same certificate as `fleetCaCert`), both certificates issued by it to `CN=<serverId>`. Throws one
 * line naming `field` otherwise.
 */
export function checkServerCreds(dir: string, serverId: string, fleetCaCert: string, field: string): void {
  const fail = (why: string): never => {
    throw new UserFacingError(`${field}: ${why}`, field);
  };
  for (const f of CRED_FILES) if (!fs.existsSync(path.join(dir, f))) fail(`${path.join(dir, f)} is missing`);
  for (const f of ['server-key.pem', 'client-key.pem'])
    if ((fs.statSync(path.join(dir, f)).mode & 0o077) !== 0) fail(`${path.join(dir, f)} is readable by others (must be 0600)`);
  let fleetCa: X509Certificate;
  try {
    fleetCa = new X509Certificate(fs.readFileSync(fleetCaCert));
  } catch (err) {
    return fail(`the fleet CA certificate ${fleetCaCert} cannot be read: ${(err as Error).message}`);
  }
  const ca = new X509Certificate(fs.readFileSync(path.join(dir, 'ca-cert.pem')));
  if (ca.fingerprint256 !== fleetCa.fingerprint256) fail(`${path.join(dir, 'ca-cert.pem')} is not the fleet's CA`);
  for (const f of ['server-cert.pem', 'client-cert.pem']) {
    const cert = new X509Certificate(fs.readFileSync(path.join(dir, f)));
    if (!cert.checkIssued(fleetCa) || !cert.verify(fleetCa.publicKey)) fail(`${path.join(dir, f)} is not issued by the fleet's CA`);
    if (!cert.subject.split('\n').includes(`CN=${serverId}`)) fail(`${path.join(dir, f)} is for ${cert.subject.replace(/\n/g, ',')}, not CN=${serverId}`);
    if (Date.parse(cert.validTo) < Date.now()) fail(`${path.join(dir, f)} expired on ${cert.validTo}`);
  }
}

/** The identity a target's `tls-authz` admits: the subject of the source's client certificate (GnuTLS's DN form). */
export const tlsIdentity = (serverId: string) => `CN=${serverId}`;

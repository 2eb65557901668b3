import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { spawnDhm } from '../support/dhm-process';

/**
 * `dhm pki` as the compose job runs it: besides the agent plane's folders it makes Temporal's (its own CA, the
 * frontend's server certificate with the names asked for, dhm's and the UI's client certificates), keys 0600; a bad
 * `--temporal-name` is refused naming the option before anything is written.
 */
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dhm-pki-cli-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

async function pki(args: string[]) {
  const run = spawnDhm(['pki', ...args], { DHM_FLEET_FILE: '', DATABASE_URL: '', TEMPORAL_ADDRESS: '' });
  return { code: await run.exited, out: run.output() };
}

test("dhm pki makes Temporal's mTLS folders with a CA of their own; a bad --temporal-name changes nothing", async () => {
  const bad = path.join(root, 'bad');
  const refused = await pki(['--fleet', 'deploy/fleet.compose.json', '--out', bad, '--temporal-name', 'ok.example,not a name']);
  expect(refused.code).toBe(2);
  expect(refused.out).toMatch(/--temporal-name: "not a name" is not a DNS name/);
  expect(fs.existsSync(bad)).toBe(false);

  const out = path.join(root, 'pki');
  const made = await pki(['--fleet', 'deploy/fleet.compose.json', '--out', out, '--temporal-name', 'temporal.internal']);
  expect({ code: made.code, out: made.out }).toMatchObject({ code: 0 });
  const t = path.join(out, 'temporal');
  const frontend = new X509Certificate(fs.readFileSync(path.join(t, 'server', 'server-cert.pem')));
  expect(frontend.subjectAltName).toContain('DNS:temporal.internal');
  expect(frontend.subjectAltName).toContain('DNS:temporal-frontend');
  const temporalCa = new X509Certificate(fs.readFileSync(path.join(t, 'ca', 'ca-cert.pem')));
  const fleetCa = new X509Certificate(fs.readFileSync(path.join(out, 'ca', 'ca-cert.pem')));
  expect(temporalCa.fingerprint256).not.toBe(fleetCa.fingerprint256); // not the fleet CA: agents are no Temporal clients
  for (const dir of ['client', 'ui']) {
    const c = new X509Certificate(fs.readFileSync(path.join(t, dir, 'client-cert.pem')));
    expect(c.checkIssued(temporalCa) && c.verify(temporalCa.publicKey)).toBe(true);
    expect(fs.statSync(path.join(t, dir, 'client-key.pem')).mode & 0o777).toBe(0o600);
  }
  expect(fs.statSync(path.join(t, 'server', 'server-key.pem')).mode & 0o777).toBe(0o600);
  expect(fs.statSync(t).mode & 0o777).toBe(0o700);
});

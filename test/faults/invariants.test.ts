import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { checkInvariants } from '../../client/invariants';
import { startTestSystem, eventually, type TestSystem } from '../support/system';
import { testAgentPki } from '../support/agent-pki';

/**
 * The invariant checker (client/invariants.ts) sees each invariant break: every case breaks one thing on purpose
 * (raw SQL or an agent call), expects the violation named, and puts it back so the next case starts from a clean fleet.
 */
describe('checkInvariants', () => {
  let sys: TestSystem;
  let hostId: string;
  let vmIds: string[];
  let oldIncarnationId: string;
  let oldServerId: string;
  let currentIncarnationId: string;
  let currentServerId: string;
  let freeServerId: string;

  const check = () => checkInvariants({ inventory: sys.inventory, agents: sys.agentUrls, agentTls: sys.agentTls, temporal: sys.temporal.client });
  const sql = (text: string, values: unknown[] = []) => sys.db.pool.query(text, values);
  /** The database enforces some invariants itself: to break one on purpose, its triggers are skipped for one statement. */
  async function sqlPastTriggers(text: string, values: unknown[] = []) {
    const c = await sys.db.pool.connect();
    try {
      await c.query('BEGIN');
      await c.query("SET LOCAL session_replication_role = 'replica'");
      await c.query(text, values);
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK');
      throw err;
    } finally {
      c.release();
    }
  }
  async function expectViolation(pattern: RegExp) {
    const r = await check();
    expect(r.ok).toBe(false);
    expect(r.violations.some((l) => pattern.test(l))).toBe(true);
  }
  async function expectClean() {
    const r = await check();
    expect(r.violations).toEqual([]);
  }

  /** `dhm check` as an operator runs it: its exit code and output. */
  async function dhmCheck(...args: string[]): Promise<{ code: number; stdout: string }> {
    // The control plane's agent-plane certificate of this test process (the test system's agents trust its CA).
    const pki = await testAgentPki();
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DATABASE_URL: sys.db.url,
      TEMPORAL_ADDRESS: sys.temporal.address,
      DHM_AGENT_CLIENT_TLS_DIR: pki.controlPlaneDir,
      LOG_LEVEL: 'warn',
    };
    delete env.DHM_AGENT_SECRET; // retired: a process given it refuses to start
    try {
      const { stdout } = await promisify(execFile)(process.execPath, [path.resolve(__dirname, '..', '..', 'bin', 'dhm.js'), 'check', ...args], {
        env,
        timeout: 60_000,
      });
      return { code: 0, stdout };
    } catch (err) {
      const e = err as { code?: number; stdout?: string };
      return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '' };
    }
  }

  beforeAll(async () => {
    sys = await startTestSystem();
    const h = await sys.createHostWithVms({ vms: 3 });
    hostId = h.hostId;
    vmIds = h.vmIds;
    const before = await sys.inventory.getHost(hostId);
    oldIncarnationId = before.currentIncarnationId;
    oldServerId = before.serverId;
    const result = await (await sys.startMigration(hostId)).result();
    expect(result.phase).toBe('completed');
    await eventually('old server de-provisioned', async () => (await sys.inventory.getServer(oldServerId)).state === 'available', 30_000);
    const after = await sys.inventory.getHost(hostId);
    currentIncarnationId = after.currentIncarnationId;
    currentServerId = after.serverId;
    freeServerId = (await sys.inventory.listServers({ zone: 'zone-a', resourceClass: 'std', state: 'available' }))[0]!.id;
  }, 120_000);
  afterAll(async () => {
    await sys?.stop();
  });

  it('a fleet after a completed migration satisfies them all', async () => {
    const r = await check();
    expect(r).toMatchObject({ ok: true, violations: [] });
    expect(r.checked.vms).toBe(3);
    expect(r.checked.agents).toBe(sys.fleet.servers.length);
    const cli = await dhmCheck();
    expect(cli.code).toBe(0);
    expect(cli.stdout).toContain('all invariants hold');
  }, 60_000);

  it('a VM its agent lost is reported, and a VM run twice, and a stray VM', async () => {
    const agent = sys.agent(currentServerId);
    const vm = await agent.getVm(vmIds[0]!);
    await agent.deleteVm(vmIds[0]!);
    await expectViolation(new RegExp(`vm ${vmIds[0]}: .*no agent has it \\(lost\\)`));
    await agent.createVm({ vmId: vmIds[0]!, incarnationId: currentIncarnationId, spec: vm!.spec });
    await expectClean();

    const other = sys.agent(freeServerId);
    await other.prepareIncarnation({ incarnationId: 'stray-inc', capacity: { vcpus: 4, memoryMiB: 8192, diskGiB: 50 } });
    await other.createVm({ vmId: vmIds[1]!, incarnationId: 'stray-inc', spec: { vcpus: 1, memoryMiB: 1024, diskGiB: 10 } });
    await expectViolation(new RegExp(`vm ${vmIds[1]}: runs 2 times`));
    await expectViolation(/incarnation stray-inc: .*unknown to the inventory \(leak\)/);
    await other.teardownIncarnation('stray-inc');

    await agent.createVm({ vmId: 'vm-stray', incarnationId: currentIncarnationId, spec: { vcpus: 1, memoryMiB: 512, diskGiB: 1 } });
    await expectViolation(/vm vm-stray: .*no running VM of that id \(leak\)/);
    await agent.deleteVm('vm-stray');
    await expectClean();
  });

  it('an allocation that differs from the sum of placed VMs is reported', async () => {
    await sqlPastTriggers('UPDATE host_incarnations SET allocated_vcpus = allocated_vcpus + 1 WHERE id = $1', [currentIncarnationId]);
    await expectViolation(new RegExp(`incarnation ${currentIncarnationId}: allocated .* running VMs sum to`));
    await sqlPastTriggers('UPDATE host_incarnations SET allocated_vcpus = allocated_vcpus - 1 WHERE id = $1', [currentIncarnationId]);
    await expectClean();
  });

  it('a server reserved or allocated without a live migration or incarnation is reported', async () => {
    const { rows } = await sql('SELECT id FROM host_migrations WHERE dedicated_host_id = $1', [hostId]);
    await sql("UPDATE physical_servers SET state = 'reserved', reserved_by_migration = $2 WHERE id = $1", [freeServerId, rows[0].id]);
    await expectViolation(new RegExp(`server ${freeServerId}: reserved for migration .*finalized \\(leaked reservation\\)`));
    await sql("UPDATE physical_servers SET state = 'allocated', reserved_by_migration = NULL WHERE id = $1", [freeServerId]);
    await expectViolation(new RegExp(`server ${freeServerId}: allocated with no live incarnation on it \\(leak\\)`));
    await sql("UPDATE physical_servers SET state = 'available' WHERE id = $1", [freeServerId]);
    await expectClean();
  });

  it('a live incarnation on a server that is not allocated to it is reported', async () => {
    await sqlPastTriggers("UPDATE physical_servers SET state = 'available' WHERE id = $1", [currentServerId]);
    await expectViolation(new RegExp(`incarnation ${currentIncarnationId}: live on server ${currentServerId} which is available`));
    await sqlPastTriggers("UPDATE physical_servers SET state = 'allocated' WHERE id = $1", [currentServerId]);
    await expectClean();
  });

  it('a de-provisioned incarnation still on its agent is reported', async () => {
    const agent = sys.agent(oldServerId);
    await agent.prepareIncarnation({ incarnationId: oldIncarnationId, capacity: (await sys.inventory.getIncarnation(oldIncarnationId)).capacity });
    await expectViolation(new RegExp(`incarnation ${oldIncarnationId}: deleted and de-provisioned but still present`));
    await agent.teardownIncarnation(oldIncarnationId);
    await expectClean();
  });

  it('a host marked migrating whose workflow ended is reported', async () => {
    const migrationId = `migration-${hostId}.manual0000001`;
    await sys.inventory.beginMigration({ dedicatedHostId: hostId, migrationId, actor: 'test' });
    await expectViolation(new RegExp(`host ${hostId}: still migrating but its workflow .* is COMPLETED`));
    await sys.inventory.rollbackMigration({ dedicatedHostId: hostId, migrationId, actor: 'test' });
    await expectClean();
  });

  it('an unreachable agent is reported', async () => {
    await sys.agent(freeServerId).setFaults({ unreachable: true });
    await expectViolation(new RegExp(`server ${freeServerId}: agent unreachable`));
    await sys.agent(freeServerId).setFaults({ unreachable: false });
    await expectClean();
  });

  it('a deleted incarnation without its outbox row is reported (last: the row is not put back)', async () => {
    await sql('DELETE FROM deprovision_outbox WHERE incarnation_id = $1', [oldIncarnationId]);
    await expectViolation(new RegExp(`incarnation ${oldIncarnationId}: deleted without a de-provisioning outbox row`));
    const cli = await dhmCheck('--json');
    expect(cli.code).toBe(1);
    const report = JSON.parse(cli.stdout) as { ok: boolean; violations: string[] };
    expect(report.ok).toBe(false);
    expect(report.violations.some((l) => l.includes(oldIncarnationId))).toBe(true);
  }, 60_000);
});

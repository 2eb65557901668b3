import { loadControlPlaneTls } from '../compute/agent-tls';
import { Client, Connection } from '@temporalio/client';
import type { Command } from 'commander';
import { Pool } from 'pg';
import { loadEnv } from '../common/config';
import { connectTemporalClient } from '../common/temporal-connection';
import { UserFacingError } from '../common/errors';
import { createInventory } from '../inventory';
import { checkInvariants } from '../client/invariants';

/**
 * `dhm check`: the fleet's invariants (client/invariants.ts) over the inventory (DATABASE_URL), every server's agent
 * (the URLs the inventory records, DHM_AGENT_SECRET) and, when TEMPORAL_ADDRESS is set, the migration workflows.
 * Exit 0 when all hold, 1 with one line per violation.
 */
export function registerCheckCommand(program: Command): void {
  program
    .command('check')
    .description('check the fleet invariants (inventory, agents, Temporal); exit 1 on any violation')
    .option('--json', 'print the report as JSON')
    .option('--no-temporal', 'do not ask Temporal about migrating hosts')
    .action(async (opts: { json?: boolean; temporal: boolean }) => {
      const env = loadEnv();
      if (!env.DATABASE_URL) throw new UserFacingError('DATABASE_URL: required for dhm check', 'DATABASE_URL');
      const requiredDir = (v: string | undefined) =>
        v ??
        (() => {
          throw new UserFacingError(
            "DHM_AGENT_CLIENT_TLS_DIR: required for dhm check (the control plane's agent-plane certificate)",
            'DHM_AGENT_CLIENT_TLS_DIR',
          );
        })();
      const pool = new Pool({ connectionString: env.DATABASE_URL, max: 2 });
      let connection: Connection | undefined;
      try {
        // The same TLS / mTLS settings as every other role (a frontend with mutual TLS refuses a plain client).
        if (opts.temporal && env.TEMPORAL_ADDRESS) connection = await connectTemporalClient(env);
        const temporal = connection ? new Client({ connection, namespace: env.TEMPORAL_NAMESPACE }) : undefined;
        const report = await checkInvariants({
          inventory: createInventory(pool),
          agentTls: loadControlPlaneTls(requiredDir(env.DHM_AGENT_CLIENT_TLS_DIR), 'DHM_AGENT_CLIENT_TLS_DIR'),
          temporal,
        });
        if (opts.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
        else {
          const c = report.checked;
          process.stdout.write(`checked ${c.hosts} hosts, ${c.vms} VMs, ${c.incarnations} incarnations, ${c.servers} servers, ${c.agents} agents\n`);
          for (const line of report.violations) process.stdout.write(`violation: ${line}\n`);
          for (const l of report.lostVms) process.stdout.write(`lost VM: ${l.vmId} of host ${l.dedicatedHostId}${l.reason ? ` (${l.reason})` : ''}\n`);
          process.stdout.write(report.ok ? 'all invariants hold\n' : `${report.violations.length} violation(s)\n`);
        }
        process.exitCode = report.ok ? 0 : 1;
      } finally {
        await connection?.close();
        await pool.end();
      }
    });
}

import * as path from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { loadEnv } from '../common/config';
import { createLogger } from '../common/logger';
import { runTestbedAgent } from '../compute/testbed/agent-main';
import { runTenantClient } from '../compute/testbed/tenant-client';
import { downTestbed, readTestbedState, testbedDir, upTestbed } from '../compute/testbed/testbed';

function wholeNumber(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a whole number ≥ 1`);
    return n;
  };
}

/** `dhm testbed up|down|status`: namespaced servers on this machine (compute/testbed); needs root and iproute2. */
export function registerTestbedCommand(program: Command): void {
  const tb = program
    .command('testbed')
    .description('real (namespaced) servers on this machine: each its own network namespace, NIC shaped, a qemu agent inside');
  const root = () => path.join(loadEnv().DHM_HOME, 'testbed');

  tb.command('up')
    .description('make the testbed (a leftover of the same name is removed first) and print it as JSON')
    .option('--name <name>', 'testbed name (lowercase letters and digits)', 'default')
    .option('--servers <n>', 'servers', wholeNumber('--servers'), 2)
    .option('--nic-mbps <n>', "each server's NIC, Mbit/s (tc htb on its egress)", wholeNumber('--nic-mbps'), 300)
    .option('--insecure', 'migrate in plaintext (migration.transport: insecure)')
    .action(async (o: { name: string; servers: number; nicMbps: number; insecure?: boolean }) => {
      const env = loadEnv();
      const logger = createLogger('testbed', env.LOG_LEVEL);
      const st = await upTestbed(
        {
          name: o.name,
          root: root(),
          servers: o.servers,
          nicBandwidthBps: o.nicMbps * 1e6,
          transport: o.insecure ? 'insecure' : 'tls',
          attached: false,
          logLevel: env.LOG_LEVEL,
        },
        logger,
      );
      process.stdout.write(`${JSON.stringify(summary(st), null, 2)}\n`);
    });

  tb.command('down')
    .description('remove the testbed: processes, namespaces, veths, bridges, qdiscs, files')
    .option('--name <name>', 'testbed name', 'default')
    .action(async (o: { name: string }) => {
      const env = loadEnv();
      const logger = createLogger('testbed', env.LOG_LEVEL);
      const { removed } = await downTestbed(testbedDir(root(), o.name), logger, o.name);
      process.stdout.write(`${JSON.stringify({ name: o.name, removed }, null, 2)}\n`);
    });

  tb.command('status')
    .description('print the testbed as JSON')
    .option('--name <name>', 'testbed name', 'default')
    .action((o: { name: string }) => {
      const st = readTestbedState(testbedDir(root(), o.name));
      process.stdout.write(`${JSON.stringify(st ? summary(st) : { name: o.name, up: false }, null, 2)}\n`);
    });

  // The processes the testbed runs inside its namespaces (not for people).
  tb.command('agent', { hidden: true })
    .requiredOption('--config <file>')
    .action((o: { config: string }) => runTestbedAgent(o.config));
  tb.command('tenant-client', { hidden: true })
    .requiredOption('--testbed <dir>')
    .action(() => runTenantClient());
}

function summary(st: NonNullable<ReturnType<typeof readTestbedState>>) {
  return {
    name: st.name,
    dir: st.dir,
    fabric: `198.18.${st.slot}.0/24`,
    controlPlaneIp: st.rootIp,
    nicBandwidthBps: st.nicBandwidthBps,
    transport: st.transport,
    tenantNamespace: st.tenantNamespace,
    servers: st.servers.map((s) => ({ id: s.id, namespace: s.namespace, fabricIp: s.fabricIp, agentUrl: s.agentUrl, agentPid: s.agentPid })),
  };
}

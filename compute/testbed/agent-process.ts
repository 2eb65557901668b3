import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { z } from 'zod';
import type { Logger } from '../../common/logger';
import type { TestbedAgentConfig } from './agent-main';
import { TENANT_BRIDGE, type testbedOptionsSchema, type TestbedServer, type TestbedState } from './state';

/** A testbed server's host agent: its config file, the process in the server's namespace, and waiting until it is ready. */

const AGENT_READY_MS = 90_000;
const PROJECT_ROOT = path.resolve(__dirname, '..', '..');
const DHM_BIN = path.join(PROJECT_ROOT, 'bin', 'dhm.js');

/** One line of the testbed: an agent started inside its server's namespace, bound to its fabric address. */
export async function startAgentIn(
  st: TestbedState,
  s: TestbedServer,
  peers: string[],
  o: z.infer<typeof testbedOptionsSchema>,
  logger: Logger,
): Promise<{ pid: number; url: string }> {
  const fleetServer = st.fleet.servers.find((f) => f.id === s.id)!;
  const readyFile = path.join(s.dir, 'agent.ready');
  fs.rmSync(readyFile, { force: true });
  const config: TestbedAgentConfig = {
    readyFile,
    logLevel: o.logLevel,
    tlsDir: s.credsDir,
    faultRoutes: o.faultRoutes,
    agent: {
      serverId: s.id,
      capacity: fleetServer.capacity,
      nicBandwidthBps: fleetServer.nicBandwidthBps,
      host: s.fabricIp,
      port: 0,
      backend: 'qemu',
      qemu: {
        ...(o.toolsDir ? { toolsDir: o.toolsDir } : {}),
        stateDir: path.join(s.dir, 'agent'),
        migrationDir: path.join(s.dir, 'migrate'),
        maxVmMemoryMiB: Math.min(fleetServer.capacity.memoryMiB, 512),
        migrationHost: s.fabricIp,
        transport: o.transport,
        ...(o.transport === 'tls' ? { tlsDir: s.credsDir, fleetCaCert: st.caCert } : {}),
        tenantBridge: TENANT_BRIDGE,
        peers,
        stallTimeoutMs: o.stallTimeoutMs,
        storageDir: s.storageDir,
        diskFillMiB: o.diskFillMiB,
        networkStorage: { host: st.storage.ip, port: st.storage.port, serverName: st.storage.serverName },
      },
    },
  };
  const configFile = path.join(s.dir, 'agent.json');
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2), { mode: 0o600 });
  const log = fs.openSync(path.join(s.dir, 'agent.log'), 'a');
  const argv = ['netns', 'exec', s.namespace, process.execPath, DHM_BIN, 'testbed', 'agent', '--config', configFile];
  // Attached (tests): setpriv makes the kernel kill the agent if this process dies; the agent's QEMUs follow it.
  const [cmd, args] = o.attached ? ['setpriv', ['--pdeathsig', 'KILL', '--', 'ip', ...argv]] : ['ip', argv];
  const child = spawn(cmd as string, args as string[], { stdio: ['ignore', log, log], detached: !o.attached, env: agentEnv() });
  fs.closeSync(log);
  const pid = child.pid!;
  st.pids.push({ pid, role: `agent ${s.id}`, match: configFile });
  if (!o.attached) child.unref();
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + AGENT_READY_MS;
  for (;;) {
    if (fs.existsSync(readyFile)) {
      const ready = JSON.parse(fs.readFileSync(readyFile, 'utf8')) as { url: string };
      return { pid, url: ready.url };
    }
    const code = child.exitCode ?? (await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 100))])); // poll interval within the deadline
    if (code !== undefined && code !== null) {
      const tail = fs.readFileSync(path.join(s.dir, 'agent.log'), 'utf8').trim().split('\n').slice(-3).join(' | ');
      throw new Error(`the agent of ${s.id} exited (code ${code}) before it was ready: ${tail}`);
    }
    if (Date.now() > deadline) throw new Error(`the agent of ${s.id} was not ready within ${AGENT_READY_MS} ms`);
  }
  void logger;
}

/** The agent sees none of the caller's DHM_* settings (they would be refused or misapplied inside a server). */
function agentEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('DHM_') || k === 'DHM_TOOLS_DIR') env[k] = v;
  return env;
}

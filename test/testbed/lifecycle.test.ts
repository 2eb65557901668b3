import { loadControlPlaneTls } from '../../compute/agent-tls';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createAgentClient } from '../../compute/agent-client';
import { runQemuSetup } from '../../compute/qemu/tools';
import { listNamespaces } from '../../compute/testbed/net';
import { readTestbedState, testbedDir, testbedLeftovers } from '../../compute/testbed/testbed';
import { isolatedDhmEnv, spawnDhm } from '../support/dhm-process';
import { qemuOn } from './support';

/**
 * `dhm testbed up|down` as an operator runs them: `up` leaves the agents running after it exits; an `up` of the same
 * name without a `down` (the operator's shell crashed, the machine's dhm was killed) first removes everything the
 * earlier one made, QEMU processes included; `down` leaves nothing behind.
 */

beforeAll(async () => {
  await runQemuSetup();
}, 600_000);

async function dhm(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const run = spawnDhm(args, env);
  const code = await run.exited;
  if (code !== 0) throw new Error(`dhm ${args.join(' ')} exited ${code}: ${run.output()}`);
  return run.output();
}

test('up, a VM running, up again without down (after a crash), then down: nothing of either is left', async () => {
  const { env, stateDir } = await isolatedDhmEnv('dhm-tb-life-', { LOG_LEVEL: 'warn' });
  const name = `l${process.pid.toString(36)}`;
  const dir = testbedDir(path.join(stateDir, 'testbed'), name);
  try {
    await dhm(['testbed', 'up', '--name', name, '--servers', '2'], env);
    const first = readTestbedState(dir)!;
    expect(first.servers).toHaveLength(2);
    // The agents outlive the `dhm testbed up` that made them, and answer from their namespaces.
    const agent = createAgentClient({ baseUrl: first.servers[0]!.agentUrl, tls: loadControlPlaneTls(first.controlPlaneDir, 'controlPlaneDir') });
    expect((await agent.info()).serverId).toBe('tb-1');
    await agent.prepareIncarnation({ incarnationId: 'inc-1', capacity: { vcpus: 1, memoryMiB: 256, diskGiB: 1 } });
    await agent.createVm({ vmId: 'vm-1', incarnationId: 'inc-1', spec: { vcpus: 1, memoryMiB: 128, diskGiB: 1 } });
    expect(qemuOn(first.servers[0]!)).toHaveLength(1);
    const qemuPid = qemuOn(first.servers[0]!)[0]!;

    await dhm(['testbed', 'up', '--name', name, '--servers', '1'], env);
    const second = readTestbedState(dir)!;
    expect(second.servers).toHaveLength(1);
    for (const p of first.pids) expect(fs.existsSync(`/proc/${p.pid}`) && fs.readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').includes(p.match)).toBe(false);
    expect(fs.existsSync(`/proc/${qemuPid}/cmdline`) && fs.readFileSync(`/proc/${qemuPid}/cmdline`, 'utf8').includes(first.dir)).toBe(false);
    expect((await listNamespaces()).filter((n) => n.startsWith(`dhmtb-${name}-`)).sort()).toEqual([
      `dhmtb-${name}-fabric`,
      `dhmtb-${name}-s1`,
      `dhmtb-${name}-storage`,
      `dhmtb-${name}-tenant`,
    ]);

    const out = await dhm(['testbed', 'down', '--name', name], env);
    expect(out).toMatch(/namespace dhmtb-.*-s1/);
    expect(await testbedLeftovers(second)).toEqual([]);
    expect(await testbedLeftovers(first)).toEqual([]);
  } finally {
    await dhm(['testbed', 'down', '--name', name], env).catch(() => undefined);
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}, 180_000);

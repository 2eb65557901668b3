import { fleetSchema } from '../../common/fleet';
import { AgentError, createAgentClient } from '../../compute/agent-client';
import { startFleetAgents } from '../../compute/fleet-agents';
import { Agents, finished, HOST_CAPACITY, logger, SERVER_CAPACITY, spec } from './helpers';

async function rejected(p: Promise<unknown>): Promise<AgentError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected the agent to refuse');
}

describe('host agent lifecycle, auth and reachability', () => {
  const agents = new Agents();
  afterEach(() => agents.stopAll());

  test('info and healthz', async () => {
    const a = await agents.start('srv-1', { nicBandwidthBps: 25e9 });
    expect(await a.client.info()).toEqual({
      serverId: 'srv-1',
      bootId: a.agent.bootId,
      backend: 'sim',
      capacity: SERVER_CAPACITY,
      nicBandwidthBps: 25e9, // bits/s, as configured
      incarnations: [],
      diskKinds: ['local', 'network'],
      localStorage: { diskBytes: 0, wipedBytes: 0 },
    });
    expect((await fetch(`${a.url}/healthz`)).status).toBe(200);
  });

  test('with a secret, a request without the bearer secret gets 401 and changes nothing', async () => {
    const a = await agents.start('srv-1', { secret: 's3cret' });
    expect((await fetch(`${a.url}/v1/info`)).status).toBe(401);
    const put = await fetch(`${a.url}/v1/incarnations/i`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', authorization: 'Bearer wrong' },
      body: JSON.stringify({ capacity: HOST_CAPACITY }),
    });
    expect(put.status).toBe(401);
    expect(await put.json()).toEqual({ error: { code: 'UNAUTHORIZED', message: expect.any(String) } });
    const err = await rejected(createAgentClient({ baseUrl: a.url }).prepareIncarnation({ incarnationId: 'i', capacity: HOST_CAPACITY }));
    expect(err).toMatchObject({ status: 401, code: 'UNAUTHORIZED', retryable: false });
    expect((await a.client.info()).incarnations).toEqual([]); // the right secret works, and nothing was created
    expect((await fetch(`${a.url}/healthz`)).status).toBe(200); // liveness probes carry no secret
  });

  test('migrations between agents that share a secret work (agents authenticate to each other)', async () => {
    const a = await agents.start('srv-a', { secret: 'k', timeScale: 1000 });
    const b = await agents.start('srv-b', { secret: 'k', timeScale: 1000 });
    await a.client.prepareIncarnation({ incarnationId: 'i-a', capacity: HOST_CAPACITY });
    await b.client.prepareIncarnation({ incarnationId: 'i-b', capacity: HOST_CAPACITY });
    await a.client.createVm({ vmId: 'v', incarnationId: 'i-a', spec: spec(2048) });
    await a.client.startMigration({ jobId: 'j', vmId: 'v', target: { agentUrl: b.url, incarnationId: 'i-b' }, maxDowntimeMs: 300, autoConverge: false });
    expect((await finished(a.client, 'j')).state).toBe('completed');
    expect(await a.client.guestOp('v', { kind: 'read' })).toMatchObject({ servedBy: 'srv-b' });
  });

  test('a restarted agent has a new boot id and none of its VMs', async () => {
    const first = await agents.start('srv-1');
    await first.client.prepareIncarnation({ incarnationId: 'i', capacity: HOST_CAPACITY });
    await first.client.createVm({ vmId: 'v', incarnationId: 'i', spec: spec(1024) });
    const before = await first.client.info();
    await first.agent.stop();
    await expect(first.client.info()).rejects.toMatchObject({ code: 'NETWORK_ERROR', retryable: true });

    const second = await agents.start('srv-1', { port: Number(new URL(first.url).port) });
    expect(second.url).toBe(first.url);
    const after = await first.client.info(); // the caller's old client, same URL
    expect(after.serverId).toBe('srv-1');
    expect(after.bootId).not.toBe(before.bootId);
    expect(after.incarnations).toEqual([]);
    expect(await first.client.getVm('v')).toBeNull();
  });

  test('unreachable: every route but the faults route answers 503, retryable; clearing it restores service', async () => {
    const a = await agents.start('srv-1');
    await a.client.prepareIncarnation({ incarnationId: 'i', capacity: HOST_CAPACITY });
    await a.client.setFaults({ unreachable: true });
    for (const call of [a.client.info(), a.client.getVm('v'), a.client.createVm({ vmId: 'v', incarnationId: 'i', spec: spec(1) })])
      expect(await rejected(call)).toMatchObject({ status: 503, code: 'AGENT_UNAVAILABLE', retryable: true });
    expect((await fetch(`${a.url}/healthz`)).status).toBe(503);
    await a.client.setFaults({ unreachable: false });
    expect(await a.client.getVm('v')).toBeNull(); // the refused create did not happen
    expect((await a.client.info()).incarnations).toEqual(['i']);
  });

  test('startFleetAgents starts one sim agent per server of a fleet file', async () => {
    const fleet = fleetSchema.parse({
      zones: ['z1'],
      resourceClasses: { std: { vcpus: 32, memoryMiB: 131072, diskGiB: 2000 } },
      servers: [
        { id: 'f-1', zone: 'z1', resourceClass: 'std', capacity: SERVER_CAPACITY, nicBandwidthBps: 10e9 },
        { id: 'f-2', zone: 'z1', resourceClass: 'std', capacity: SERVER_CAPACITY, nicBandwidthBps: 25e9 },
        { id: 'f-3', zone: 'z1', resourceClass: 'std', capacity: SERVER_CAPACITY, nicBandwidthBps: 25e9, backend: 'qemu' },
      ],
    });
    const started = await startFleetAgents(fleet, { timeScale: 100, logger, secret: 'fleet' });
    try {
      expect([...started.agents.keys()]).toEqual(['f-1', 'f-2']); // the qemu server is not this function's to run
      for (const [serverId, agent] of started.agents) {
        const info = await createAgentClient({ baseUrl: agent.url, secret: 'fleet' }).info();
        expect(info).toMatchObject({ serverId, backend: 'sim', nicBandwidthBps: fleet.servers.find((s) => s.id === serverId)!.nicBandwidthBps });
      }
    } finally {
      await started.stop();
    }
    await expect(createAgentClient({ baseUrl: started.agents.get('f-1')!.url, timeoutMs: 2000 }).info()).rejects.toMatchObject({ retryable: true });
  });
});

import { AgentError, type AgentClient, type StartMigrationInput } from '../../compute/agent-client';
import { Agents, HOST_CAPACITY, SERVER_CAPACITY, spec, startPair, type TestAgent } from './helpers';
import { agentFetch } from '../support/agent-pki';

async function rejected(p: Promise<unknown>): Promise<AgentError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected the agent to refuse');
}

/** Everything observable about an agent's state, to show a refusal changed nothing. */
async function stateOf(a: TestAgent, vmIds: string[], jobIds: string[] = []) {
  const info = await a.client.info();
  return {
    incarnations: await Promise.all(info.incarnations.map((id) => a.client.getIncarnation(id))),
    vms: await Promise.all(vmIds.map((id) => a.client.getVm(id))),
    jobs: await Promise.all(jobIds.map((id) => a.client.getMigration(id))),
  };
}

/** Raw HTTP, for bodies the typed client would never send. */
async function raw(url: string, method: string, path: string, body?: string) {
  const res = await agentFetch(url + path, { method, body, headers: body === undefined ? {} : { 'content-type': 'application/json' } });
  return { status: res.status, body: (await res.json()) as { error: { code: string; field?: string; message: string } } };
}

describe('bad input is refused with a 4xx naming the field, and changes nothing', () => {
  const agents = new Agents();
  let source: TestAgent;
  let target: TestAgent;
  let client: AgentClient;

  beforeAll(async () => {
    ({ source, target } = await startPair(agents, { timeScale: 1000 }));
    client = source.client;
    await client.createVm({ vmId: 'ok', incarnationId: 'src', spec: spec(1024) });
  });
  afterAll(() => agents.stopAll());

  test.each([
    ['negative memory', 'spec.memoryMiB', { ...spec(1024), memoryMiB: -1 }],
    ['zero vCPUs', 'spec.vcpus', { ...spec(1024), vcpus: 0 }],
    ['fractional disk', 'spec.diskGiB', { ...spec(1024), diskGiB: 1.5 }],
    ['working set above memory', 'spec.workload.workingSetMiB', spec(1024, { dirtyRateMiBps: 1, workingSetMiB: 2048 })],
    ['negative dirty rate', 'spec.workload.dirtyRateMiBps', spec(1024, { dirtyRateMiBps: -1, workingSetMiB: 10 })],
    ['unknown key', 'spec.gpus', { ...spec(1024), gpus: 1 }],
  ])('createVm with %s → 400 naming %s', async (_name, field, badSpec) => {
    const before = await stateOf(source, ['ok', 'new']);
    const err = await rejected(client.createVm({ vmId: 'new', incarnationId: 'src', spec: badSpec as never }));
    expect(err).toMatchObject({ status: 400, code: 'INVALID_INPUT', field, retryable: false });
    expect(err.message).toContain(field);
    expect(await stateOf(source, ['ok', 'new'])).toEqual(before);
  });

  test('createVm: unknown incarnation → 404 incarnationId; too big for the incarnation → 409 spec.memoryMiB; bad id → 400 vmId', async () => {
    const before = await stateOf(source, ['ok', 'new']);
    expect(await rejected(client.createVm({ vmId: 'new', incarnationId: 'nope', spec: spec(1024) }))).toMatchObject({
      status: 404,
      code: 'NOT_FOUND',
      field: 'incarnationId',
    });
    expect(await rejected(client.createVm({ vmId: 'new', incarnationId: 'src', spec: spec(HOST_CAPACITY.memoryMiB) }))).toMatchObject({
      status: 409,
      code: 'INSUFFICIENT_CAPACITY',
      field: 'spec.memoryMiB',
    });
    expect(await rejected(client.createVm({ vmId: 'ok', incarnationId: 'src', spec: spec(2048) }))).toMatchObject({
      status: 409,
      code: 'VM_EXISTS',
      field: 'vmId',
    });
    expect(await rejected(client.createVm({ vmId: 'bad id!', incarnationId: 'src', spec: spec(1) }))).toMatchObject({
      status: 400,
      field: 'vmId',
    });
    expect(await stateOf(source, ['ok', 'new'])).toEqual(before);
    // Idempotent: the same request again is fine and changes nothing.
    expect(await client.createVm({ vmId: 'ok', incarnationId: 'src', spec: spec(1024) })).toMatchObject({ vmId: 'ok', counter: 0 });
    expect(await stateOf(source, ['ok', 'new'])).toEqual(before);
  });

  test('prepareIncarnation: larger than the server → 409 capacity.memoryMiB; same id, other capacity → 409; zero vCPUs → 400', async () => {
    const before = await stateOf(source, []);
    const huge = { vcpus: 1, memoryMiB: SERVER_CAPACITY.memoryMiB, diskGiB: 1 }; // only memory is short
    expect(await rejected(client.prepareIncarnation({ incarnationId: 'second', capacity: huge }))).toMatchObject({
      status: 409,
      code: 'INSUFFICIENT_CAPACITY',
      field: 'capacity.memoryMiB',
    });
    expect(await rejected(client.prepareIncarnation({ incarnationId: 'src', capacity: { ...HOST_CAPACITY, vcpus: 8 } }))).toMatchObject({
      status: 409,
      code: 'INCARNATION_CONFLICT',
      field: 'capacity',
    });
    expect(await rejected(client.prepareIncarnation({ incarnationId: 'x', capacity: { ...HOST_CAPACITY, vcpus: 0 } }))).toMatchObject({
      status: 400,
      field: 'capacity.vcpus',
    });
    expect(await stateOf(source, [])).toEqual(before);
    expect(await client.prepareIncarnation({ incarnationId: 'src', capacity: HOST_CAPACITY })).toEqual(before.incarnations[0]);
  });

  test('unknown ids: getters say null, mutations say 404 naming the id, deletes are no-ops', async () => {
    expect(await client.getVm('ghost')).toBeNull();
    expect(await client.getMigration('ghost')).toBeNull();
    expect(await client.getIncarnation('ghost')).toBeNull();
    expect(await rejected(client.guestOp('ghost', { kind: 'read' }))).toMatchObject({ status: 404, code: 'NOT_FOUND', field: 'vmId' });
    expect(await rejected(client.cancelMigration('ghost'))).toMatchObject({ status: 404, code: 'NOT_FOUND', field: 'jobId' });
    await client.deleteVm('ghost');
    await client.teardownIncarnation('ghost');
  });

  describe('startMigration', () => {
    const base = (over: Partial<StartMigrationInput> = {}): StartMigrationInput => ({
      jobId: 'm-1',
      vmId: 'ok',
      target: { agentUrl: target.url, incarnationId: 'dst' },
      maxDowntimeMs: 300,
      autoConverge: false,
      ...over,
    });

    test.each<[string, number, string, string, () => Partial<StartMigrationInput>]>([
      ['unknown VM', 404, 'NOT_FOUND', 'vmId', () => ({ vmId: 'ghost' })],
      ['unknown target incarnation', 404, 'NOT_FOUND', 'target.incarnationId', () => ({ target: { agentUrl: target.url, incarnationId: 'nope' } })],
      ['the same server (its own URL)', 409, 'SAME_SERVER', 'target.agentUrl', () => ({ target: { agentUrl: source.url, incarnationId: 'src' } })],
      // Another name for the same agent: only the target, comparing server ids, can tell.
      [
        'the same server (another URL for it)',
        409,
        'SAME_SERVER',
        'target.agentUrl',
        () => ({ target: { agentUrl: source.url.replace('127.0.0.1', 'localhost'), incarnationId: 'src' } }),
      ],
      ['a negative downtime limit', 400, 'INVALID_INPUT', 'maxDowntimeMs', () => ({ maxDowntimeMs: -5 })],
      ['zero rounds', 400, 'INVALID_INPUT', 'maxRounds', () => ({ maxRounds: 0 })],
      ['a target URL that is not one', 400, 'INVALID_INPUT', 'target.agentUrl', () => ({ target: { agentUrl: 'not a url', incarnationId: 'dst' } })],
    ])('%s → %i %s naming %s', async (_name, status, code, field, over) => {
      const before = [await stateOf(source, ['ok'], ['m-1']), await stateOf(target, ['ok'])];
      expect(await rejected(client.startMigration(base(over())))).toMatchObject({ status, code, field });
      expect([await stateOf(source, ['ok'], ['m-1']), await stateOf(target, ['ok'])]).toEqual(before);
      expect((await client.getVm('ok'))!.state).toBe('running');
    });

    test('a VM larger than the target incarnation has free → 409 naming spec.memoryMiB', async () => {
      await target.client.prepareIncarnation({ incarnationId: 'tiny', capacity: { vcpus: 4, memoryMiB: 512, diskGiB: 100 } });
      const before = [await stateOf(source, ['ok'], ['m-1']), await stateOf(target, ['ok'])];
      const err = await rejected(client.startMigration(base({ target: { agentUrl: target.url, incarnationId: 'tiny' } })));
      expect(err).toMatchObject({ status: 409, code: 'INSUFFICIENT_CAPACITY', field: 'spec.memoryMiB' });
      expect(err.message).toMatch(/512 memoryMiB free/);
      expect([await stateOf(source, ['ok'], ['m-1']), await stateOf(target, ['ok'])]).toEqual(before);
    });
  });

  test('malformed bodies: bad JSON, an unknown guest operation, bad faults → 400', async () => {
    expect(await raw(source.url, 'PUT', '/v1/vms/x', '{"incarnationId":')).toMatchObject({ status: 400, body: { error: { code: 'INVALID_INPUT' } } });
    expect(await raw(source.url, 'PUT', '/v1/vms/x')).toMatchObject({ status: 400, body: { error: { code: 'INVALID_INPUT', field: 'body' } } });
    expect(await raw(source.url, 'POST', '/v1/vms/ok/guest-ops', '{"kind":"explode"}')).toMatchObject({
      status: 400,
      body: { error: { code: 'INVALID_INPUT', field: 'kind' } },
    });
    expect(await rejected(client.setFaults({ linkSlowdown: 0 }))).toMatchObject({ status: 400, field: 'linkSlowdown' });
    expect(await raw(source.url, 'GET', '/v1/nowhere')).toMatchObject({ status: 404, body: { error: { code: 'NO_SUCH_ROUTE' } } });
    expect(await client.getVm('x')).toBeNull();
    expect(await client.guestOp('ok', { kind: 'read' })).toMatchObject({ counter: 0 });
  });
});

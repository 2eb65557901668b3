import * as net from 'node:net';
import * as os from 'node:os';
import { createLogger } from '../../common/logger';
import { createAgentClient } from '../../compute/agent-client';
import { startAgent } from '../../compute/agent-service';

/**
 * Agents are not reachable from the network unless told so: they bind to loopback by default (the fleet secret is
 * covered by test/compute/agent-lifecycle.test.ts; here only what it does not check).
 */
describe('host agent exposure', () => {
  it('listens on loopback by default: the machine\'s other addresses refuse the connection', async () => {
    const agent = await startAgent({ serverId: 'exposure-1', capacity: { vcpus: 4, memoryMiB: 8192, diskGiB: 50 }, nicBandwidthBps: 1e9, secret: 'exposure-secret-0123456789', logger: createLogger('test', 'warn') });
    try {
      const url = new URL(agent.url);
      expect(url.hostname).toBe('127.0.0.1');
      // The machine's own addresses, and always 127.0.0.2: another loopback address, which a listener on 0.0.0.0 (or on
      // all of 127/8) would answer, so the loop below checks at least one address on any machine.
      const own = Object.values(os.networkInterfaces()).flat().filter((i) => i && i.family === 'IPv4' && !i.internal).map((i) => i!.address);
      const others = [...own, '127.0.0.2'];
      for (const address of others) {
        const outcome = await new Promise<string>((resolve) => {
          const s = net.connect({ host: address, port: Number(url.port) });
          s.once('connect', () => (s.destroy(), resolve('connected')));
          s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
        });
        expect([address, outcome]).toEqual([address, 'ECONNREFUSED']);
      }
      // Without the secret: refused, and nothing changed.
      const anonymous = createAgentClient({ baseUrl: agent.url });
      await expect(anonymous.prepareIncarnation({ incarnationId: 'x', capacity: { vcpus: 1, memoryMiB: 512, diskGiB: 1 } })).rejects.toMatchObject({ status: 401 });
      expect((await createAgentClient({ baseUrl: agent.url, secret: 'exposure-secret-0123456789' }).info()).incarnations).toEqual([]);
    } finally {
      await agent.stop();
    }
  });
});

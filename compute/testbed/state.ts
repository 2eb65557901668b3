import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import type { Fleet } from '../../common/fleet';
import type { StorageService } from './storage';
import { writeFileAtomic } from '../../common/atomic-file';

/** What a testbed is: its options, and the state file that records everything it made (what `down` removes). */

export const NS_PREFIX = 'dhmtb-';
export const TENANT_BRIDGE = 'brt';
/** The tenant client's address on the tenant network; servers' bridges get 198.19.255.<i>. */
export const TENANT_CLIENT_IP = '198.19.255.254';

export const testbedOptionsSchema = z
  .object({
    /** Unique per testbed on this machine: names and folders derive from it. */
    name: z.string().regex(/^[a-z0-9]{1,10}$/, 'lowercase letters and digits, at most 10'),
    /** Where its folder goes (`<root>/<name>`): DHM_HOME/testbed for `dhm testbed`, a temporary folder in tests. */
    root: z.string().min(1),
    servers: z.number().int().min(1),
    /** Bits/s each server's egress is shaped to; the fleet's nicBandwidthBps is set to it (the model's B is the testbed's). */
    nicBandwidthBps: z.number().min(1e6).max(4e9).default(300e6),
    capacity: z
      .object({ vcpus: z.number().int().positive(), memoryMiB: z.number().int().positive(), diskGiB: z.number().int().positive() })
      .default({ vcpus: 4, memoryMiB: 1024, diskGiB: 20 }),
    transport: z.enum(['tls', 'insecure']).default('tls'),
    toolsDir: z.string().min(1).optional(),
    /** Agents die with this process (tests); `dhm testbed up` leaves them running until `down`. */
    attached: z.boolean().default(true),
    logLevel: z.string().default('warn'),
    /** The agents give a migration up after this long without a byte sent (a partition). */
    stallTimeoutMs: z.number().int().min(1_000).default(8_000),
    /** MiB of random data at the end of every new local disk (what a mirror has to send besides the guest's blocks). */
    diskFillMiB: z.number().int().min(0).max(4096).default(0),
    /** The agents' fault-injection routes (tests that inject faults); off by default, as in production. */
    faultRoutes: z.boolean().default(false),
  })
  .strict();
export type TestbedOptions = z.input<typeof testbedOptionsSchema>;

export interface TestbedServer {
  id: string;
  index: number;
  namespace: string;
  fabricIp: string;
  /** The server's own address on the tenant network (its bridge): where the agent's probe comes from. */
  tenantIp: string;
  dir: string;
  agentUrl: string;
  agentPid: number;
  credsDir: string;
  /** Its local storage (one raw file per local disk): `<dir>/disks`, 0700. */
  storageDir: string;
}

export interface TestbedState {
  name: string;
  dir: string;
  slot: number;
  fabricNamespace: string;
  tenantNamespace: string;
  rootVeth: string;
  rootIp: string;
  tenantFabricIp: string;
  namespaces: string[];
  nicBandwidthBps: number;
  transport: 'tls' | 'insecure';
  caCert: string;
  /** The control plane's agent-plane client certificate (issued by the testbed's CA): what the root namespace calls agents with. */
  controlPlaneDir: string;
  servers: TestbedServer[];
  /** The storage service (network disks): qemu-storage-daemon in its own namespace on the fabric. */
  storage: StorageService;
  fleet: Fleet;
  /** Every process the testbed started (agents, tenant clients, captures), with a string their command line holds. */
  pids: Array<{ pid: number; role: string; match: string }>;
}

export const testbedDir = (root: string, name: string) => path.join(root, name);
export const stateFile = (dir: string) => path.join(dir, 'state.json');
export const nsName = (name: string, part: string) => `${NS_PREFIX}${name}-${part}`;
export const serverId = (i: number) => `tb-${i}`;

export function readTestbedState(dir: string): TestbedState | null {
  try {
    return JSON.parse(fs.readFileSync(stateFile(dir), 'utf8')) as TestbedState;
  } catch {
    return null;
  }
}

/** Written after every step that made something, so a crash leaves a state `down` can undo. */
export function saveTestbedState(st: TestbedState): void {
  writeFileAtomic(stateFile(st.dir), JSON.stringify(st, null, 2), { mode: 0o600 }); // half a state would read as none
}

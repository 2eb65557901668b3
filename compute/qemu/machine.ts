import { createHash } from 'node:crypto';
import * as path from 'node:path';
import type { Logger } from 'pino';
import type { VmSpec } from '../agent-api';
import { invalidInput } from '../errors';
import { vmDisks } from '../../common/vm-spec';
import { BLOCK_BYTES, createDiskFile, diskNode, fillDiskTail, gibToBytes, wipeDiskFile, type MachineDisk, type NetworkStorage } from './disks';
import { guestMarker, guestNic } from './guest-nic';
import type { QemuMigrationSettings } from './migration';
import { STORAGE_TLS_ID, type MachineSpec } from './qemu-process';

/**
 * What QEMU runs for a VM spec on this server: the machine (memory, vCPUs, the guest's writer, its NIC) and its disks
 * (local files in the server's storage folder, network volumes of the storage service), and how those files go.
 */

/** What a server offers its VMs' machines: limits, its tenant bridge and its storage. */
export interface MachineOptions {
  /** The most memory one VM may have here (QEMU would start a bigger one and let the host swap or OOM). */
  maxVmMemoryMiB: number;
  maxVmVcpus: number;
  /** This server's tenant bridge: VMs get a virtio-net NIC on a tap in it (none when unset). */
  tenantBridge?: string;
  /** This server's own storage (local disks: one raw file each, 0600, the folder 0700); nothing else reads it. */
  storageDir: string;
  /** The fleet's storage service (network disks); unset: VMs with a network disk are refused. */
  networkStorage?: Omit<NetworkStorage, 'tlsCredsId'>;
  /** MiB of random data written at the end of every new local disk (test data a mirror has to send). */
  diskFillMiB: number;
  settings: QemuMigrationSettings;
}

/** Below this the guest kernel and its initramfs do not fit. */
export const MIN_VM_MEMORY_MIB = 64;

/** What QEMU will run for this spec, or a 400 naming the field it cannot honour. */
export function machineFor(opts: MachineOptions, vmId: string, spec: VmSpec, prefix: string): MachineSpec {
  if (spec.vcpus < 1) throw invalidInput(`${prefix}.vcpus`, `${prefix}.vcpus: a VM needs at least 1 vCPU`);
  if (spec.vcpus > opts.maxVmVcpus)
    throw invalidInput(`${prefix}.vcpus`, `${prefix}.vcpus: ${spec.vcpus} is above this agent's limit of ${opts.maxVmVcpus} per VM`);
  if (spec.memoryMiB > opts.maxVmMemoryMiB)
    throw invalidInput(`${prefix}.memoryMiB`, `${prefix}.memoryMiB: ${spec.memoryMiB} is above this agent's limit of ${opts.maxVmMemoryMiB} MiB per VM`);
  if (spec.memoryMiB < MIN_VM_MEMORY_MIB)
    throw invalidInput(`${prefix}.memoryMiB`, `${prefix}.memoryMiB: ${spec.memoryMiB} is below the ${MIN_VM_MEMORY_MIB} MiB the guest needs`);
  const w = spec.workload;
  const dirtyMiB = w && w.dirtyRateMiBps > 0 ? Math.ceil(w.workingSetMiB) : 0;
  // The dirtier's buffer lives in guest tmpfs: past 1/8 of RAM a small guest runs out of memory.
  if (dirtyMiB > Math.floor(spec.memoryMiB / 8))
    throw invalidInput(
      `${prefix}.workload.workingSetMiB`,
      `${prefix}.workload.workingSetMiB: at most 1/8 of memoryMiB (${Math.floor(spec.memoryMiB / 8)}) for a qemu guest`,
    );
  const machine: MachineSpec = { memoryMiB: spec.memoryMiB, vcpus: spec.vcpus, dirtyMiB, dirtyRateMiBps: dirtyMiB > 0 ? Math.ceil(w!.dirtyRateMiBps) : 0 };
  if (opts.tenantBridge) Object.assign(machine, { nic: guestNic(vmId), marker: guestMarker(vmId) });
  return machine;
}

/**
 * The VM's disks on this server: a local disk is a file in the storage folder (`jobId` set: an empty one for an
 * incoming migration, named after the job so a reservation that gives way never shares a file with its successor;
 * unset: a new VM's, with the test fill at its end), a network disk the storage service's volume.
 */
export function attachDisks(opts: MachineOptions, machine: MachineSpec, vmId: string, spec: VmSpec, jobId: string | null): void {
  const ns = opts.networkStorage;
  const tag = createHash('sha256')
    .update(`${vmId}\0${jobId ?? ''}`)
    .digest('hex')
    .slice(0, 16);
  const fillBytes = (size: number) => Math.min(opts.diskFillMiB * 2 ** 20, Math.floor(size / 2 / BLOCK_BYTES) * BLOCK_BYTES);
  const disks: MachineDisk[] = vmDisks(spec).map((d, i): MachineDisk => {
    if (d.kind === 'network') {
      const nbd: NetworkStorage = {
        host: ns!.host,
        port: ns!.port,
        ...(opts.settings.transport === 'tls' && ns!.tlsHostname ? { tlsHostname: ns!.tlsHostname, tlsCredsId: STORAGE_TLS_ID } : {}),
      };
      return { node: diskNode(i), name: d.name, kind: 'network', volumeId: d.volumeId, nbd };
    }
    return { node: diskNode(i), name: d.name, kind: 'local', path: path.join(opts.storageDir, `${tag}-${i}.raw`), sizeBytes: gibToBytes(d.sizeGiB) };
  });
  if (!disks.length) return;
  machine.disks = disks;
  if (disks.some((d) => d.kind === 'network' && d.nbd.tlsCredsId)) machine.storageTlsDir = opts.settings.tlsDir!;
  const local = disks.filter((d) => d.kind === 'local');
  if (local.length) machine.diskBlocks = Math.min(...local.map((d) => (d.sizeBytes - fillBytes(d.sizeBytes)) / BLOCK_BYTES));
  for (const d of local) {
    createDiskFile(d.path, d.sizeBytes);
    if (jobId === null) fillDiskTail(d.path, d.sizeBytes, fillBytes(d.sizeBytes));
  }
}

/** Wipes (discards, then removes) the machine's local disk files; idempotent. */
export function wipeDisks(machine: MachineSpec, why: string, logger: Logger): number {
  let wiped = 0;
  for (const d of machine.disks ?? []) {
    if (d.kind !== 'local') continue;
    try {
      const bytes = wipeDiskFile(d.path);
      wiped += bytes;
      if (bytes) logger.info({ disk: d.name, file: d.path, bytes, why }, 'local disk wiped');
    } catch (err) {
      logger.error({ disk: d.name, file: d.path, err: err instanceof Error ? err.message : String(err) }, 'could not wipe a local disk');
    }
  }
  return wiped;
}

import type { Pool, PoolClient } from 'pg';
import type { z } from 'zod';
import { fleetSchema } from '../common/fleet';
import * as audit from './audit';
import type { Inventory } from './contract';
import { withClient, withTransaction } from './db';
import * as outbox from './deprovision-outbox';
import * as seed from './fleet-seed';
import * as migrations from './host-migrations';
import * as hosts from './hosts';
import * as input from './inputs';
import * as placements from './migration-placements';
import * as quotas from './quotas';
import * as servers from './servers';
import * as tenants from './tenants';
import * as vms from './vms';
import * as volumes from './volumes';

/**
 * The inventory: Postgres behind one interface (contract.ts). This file only wires it: each operation validates its
 * input (inputs.ts), opens a transaction (or a plain connection for reads) and calls the module that owns the
 * aggregate — tenants, servers (and fleet-seed), hosts and incarnations, vms, volumes, host-migrations and
 * migration-placements, deprovision-outbox, audit; capacity.ts holds the allocation arithmetic and its SQL.
 */

export * from './types';
export * from './contract';
export { InventoryError, isInventoryError, INVENTORY_ERROR_CODES, type InventoryErrorCode } from './errors';
export { migrateDatabase } from './migrate';
export { DEPROVISION_CHANNEL } from './deprovision-outbox';
export { tenantEventView, TENANT_LOST_REASON } from './tenant-visibility';
export { vmSpecOf } from './vms';
export { DEFAULT_QUOTAS } from './quotas';

const { parse } = input;

export function createInventory(pool: Pool): Inventory {
  const tx = <T>(fn: (c: PoolClient) => Promise<T>) => withTransaction(pool, fn);
  const read = <T>(fn: (c: PoolClient) => Promise<T>) => withClient(pool, fn);
  /** An operation: its input validated before anything runs, then `op` in one transaction. */
  const inTx =
    <S extends z.ZodType, R>(schema: S, op: (c: PoolClient, p: z.output<S>) => Promise<R>) =>
    async (i: unknown): Promise<R> => {
      const p = parse(schema, i);
      return tx((c) => op(c, p));
    };
  /** A read: validated input, then `op` on one connection outside a transaction. */
  const inRead =
    <S extends z.ZodType, R>(schema: S, op: (c: PoolClient, p: z.output<S>) => Promise<R>) =>
    async (i: unknown): Promise<R> => {
      const p = parse(schema, i);
      return read((c) => op(c, p));
    };

  return {
    async seedFleet(fleetInput, agentUrls = new Map(), opts = {}) {
      const fleet = parse(fleetSchema, fleetInput);
      const actor = parse(input.actorSchema, opts.actor ?? 'operator');
      const urls = seed.resolveAgentUrls(fleet, agentUrls);
      return tx((c) => seed.seedFleet(c, fleet, urls, actor));
    },

    createTenant: (name, opts = {}) => inTx(input.tenantInput, tenants.createTenant)({ name, actor: opts.actor ?? 'operator' }),
    async findTenantByToken(token) {
      if (typeof token !== 'string' || token.length === 0 || token.length > 512) return null;
      return read((c) => tenants.findTenantByToken(c, token));
    },
    getTenant: inRead(input.idSchema, tenants.getTenant),
    rotateTenantToken: inTx(input.tenantActionInput, tenants.rotateTenantToken),
    revokeTenantToken: inTx(input.tenantActionInput, tenants.revokeTenantToken),

    getTenantQuotas: inRead(input.idSchema, quotas.getQuotas),
    setTenantQuotas: inTx(input.setQuotasInput, quotas.setQuotas),
    tenantRequestRates: () => read(quotas.requestRates),

    createDedicatedHost: inTx(input.createHostInput, hosts.createDedicatedHost),
    deleteDedicatedHost: inTx(input.deleteHostInput, hosts.deleteDedicatedHost),
    placeVm: inTx(input.placeVmInput, async (c, p) => vms.toVm((await vms.placeOn(c, { ...p, onClone: false })).vm)),
    deleteVm: inTx(input.deleteVmInput, vms.deleteVm),
    markVmLost: inTx(input.markLostInput, vms.markVmLost),

    beginMigration: inTx(input.hostMigrationInput, migrations.beginMigration),
    reserveTargetServer: inTx(input.reserveInput, migrations.reserveTargetServer),
    createCloneIncarnation: inTx(input.cloneInput, migrations.createCloneIncarnation),
    capacityView: inRead(input.idSchema, hosts.capacityView),
    provisionVmOnClone: inTx(input.provisionInput, placements.provisionVmOnClone),
    async moveVmPlacement(i) {
      const p = parse(input.moveInput, i);
      // The common case in one statement; anything else (an error to explain, a retry of a move already recorded, a
      // lock conflict) takes the step-by-step transaction, which answers exactly as a single path would.
      return (await placements.movePlacementAtOnce(pool, p)) ?? tx((c) => placements.movePlacementStepByStep(c, p));
    },
    finalizeMigration: inTx(input.finalizeInput, migrations.finalizeMigration),
    rollbackMigration: inTx(input.hostMigrationInput, migrations.rollbackMigration),
    getMigration: inRead(input.migrationIdSchema, migrations.getMigration),

    claimDeprovisionJobs: inTx(input.claimInput, outbox.claimDeprovisionJobs),
    completeDeprovisionJob: inTx(input.jobInput, outbox.completeDeprovisionJob),
    releaseDeprovisionJob: inTx(input.releaseJobInput, outbox.releaseDeprovisionJob),
    listDeprovisionJobs: (i = {}) => inRead(input.jobStateInput.optional(), outbox.listDeprovisionJobs)(i.state),

    setServerState: inTx(input.serverStateInput, servers.setServerState),
    getServer: inRead(input.idSchema, servers.getServer),
    listServers: (opts = {}) => inRead(input.listServersInput, servers.listServers)(opts),

    async getHost(id, opts = {}) {
      const hostId = parse(input.idSchema, id);
      const tenantId = opts.tenantId === undefined ? undefined : parse(input.idSchema, opts.tenantId);
      return read((c) => hosts.getHost(c, hostId, tenantId));
    },
    listHosts: (opts = {}) => inRead(input.idSchema.optional(), hosts.listHosts)(opts.tenantId),
    getIncarnation: inRead(input.idSchema, hosts.getIncarnation),
    listIncarnations: inRead(input.listIncarnationsInput, hosts.listIncarnations),
    listVms: inRead(input.listVmsInput, vms.listVms),
    getVm: (id, opts = {}) => inRead(input.idSchema, (c, vmId) => vms.getVm(c, vmId, opts.tenantId))(id),
    listEvents: inRead(input.eventsInput, audit.listEvents),

    createVolume: inTx(input.createVolumeInput, volumes.createVolume),
    getVolume: (id, opts = {}) =>
      inRead(input.volumeLookupInput, (c, p) => volumes.getVolume(c, p.volumeId, p.tenantId))({ volumeId: id, tenantId: opts.tenantId }),
    listVolumes: (opts = {}) => inRead(input.idSchema.optional(), volumes.listVolumes)(opts.tenantId),
    deleteVolume: inTx(input.deleteVolumeInput, volumes.deleteVolume),
  };
}

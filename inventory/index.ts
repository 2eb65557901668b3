import type { Pool, PoolClient } from 'pg';
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
import * as servers from './servers';
import * as tenants from './tenants';
import * as vms from './vms';

/**
 * The inventory: Postgres behind one interface (contract.ts). This file only wires it: each operation validates its
 * input (inputs.ts), opens a transaction (or a plain connection for reads) and calls the module that owns the
 * aggregate — tenants, servers (and fleet-seed), hosts and incarnations, vms, host-migrations and
 * migration-placements, deprovision-outbox, audit; capacity.ts holds the allocation arithmetic and its SQL.
 */

export * from './types';
export * from './contract';
export { InventoryError, isInventoryError, INVENTORY_ERROR_CODES, type InventoryErrorCode } from './errors';
export { migrateDatabase } from './migrate';
export { DEPROVISION_CHANNEL } from './deprovision-outbox';
export { tenantEventView } from './tenant-visibility';

const { parse } = input;

export function createInventory(pool: Pool): Inventory {
  const tx = <T>(fn: (c: PoolClient) => Promise<T>) => withTransaction(pool, fn);
  const read = <T>(fn: (c: PoolClient) => Promise<T>) => withClient(pool, fn);

  return {
    async seedFleet(fleetInput, agentUrls = new Map(), opts = {}) {
      const fleet = parse(fleetSchema, fleetInput);
      const actor = parse(input.actorSchema, opts.actor ?? 'operator');
      const urls = seed.resolveAgentUrls(fleet, agentUrls);
      return tx((c) => seed.seedFleet(c, fleet, urls, actor));
    },

    async createTenant(name, opts = {}) {
      const p = parse(input.tenantInput, { name, actor: opts.actor ?? 'operator' });
      return tx((c) => tenants.createTenant(c, p));
    },
    async findTenantByToken(token) {
      if (typeof token !== 'string' || token.length === 0 || token.length > 512) return null;
      return read((c) => tenants.findTenantByToken(c, token));
    },
    getTenant: async (id) => read((c) => tenants.getTenant(c, parse(input.idSchema, id))),

    createDedicatedHost: async (i) => {
      const p = parse(input.createHostInput, i);
      return tx((c) => hosts.createDedicatedHost(c, p));
    },
    deleteDedicatedHost: async (i) => {
      const p = parse(input.deleteHostInput, i);
      return tx((c) => hosts.deleteDedicatedHost(c, p));
    },
    placeVm: async (i) => {
      const p = parse(input.placeVmInput, i);
      return tx(async (c) => vms.toVm((await vms.placeOn(c, { ...p, onClone: false })).vm));
    },
    deleteVm: async (i) => {
      const p = parse(input.deleteVmInput, i);
      return tx((c) => vms.deleteVm(c, p));
    },
    markVmLost: async (i) => {
      const p = parse(input.markLostInput, i);
      return tx((c) => vms.markVmLost(c, p));
    },

    beginMigration: async (i) => {
      const p = parse(input.hostMigrationInput, i);
      return tx((c) => migrations.beginMigration(c, p));
    },
    reserveTargetServer: async (i) => {
      const p = parse(input.reserveInput, i);
      return tx((c) => migrations.reserveTargetServer(c, p));
    },
    createCloneIncarnation: async (i) => {
      const p = parse(input.cloneInput, i);
      return tx((c) => migrations.createCloneIncarnation(c, p));
    },
    capacityView: async (id) => {
      const hostId = parse(input.idSchema, id);
      return read((c) => hosts.capacityView(c, hostId));
    },
    provisionVmOnClone: async (i) => {
      const p = parse(input.provisionInput, i);
      return tx((c) => placements.provisionVmOnClone(c, p));
    },
    moveVmPlacement: async (i) => {
      const p = parse(input.moveInput, i);
      // The common case in one statement; anything else (an error to explain, a retry of a move already recorded, a
      // lock conflict) takes the step-by-step transaction, which answers exactly as a single path would.
      return (await placements.movePlacementAtOnce(pool, p)) ?? tx((c) => placements.movePlacementStepByStep(c, p));
    },
    finalizeMigration: async (i) => {
      const p = parse(input.finalizeInput, i);
      return tx((c) => migrations.finalizeMigration(c, p));
    },
    rollbackMigration: async (i) => {
      const p = parse(input.hostMigrationInput, i);
      return tx((c) => migrations.rollbackMigration(c, p));
    },
    getMigration: async (id) => {
      const migrationId = parse(input.migrationIdSchema, id);
      return read((c) => migrations.getMigration(c, migrationId));
    },

    claimDeprovisionJobs: async (i) => {
      const p = parse(input.claimInput, i);
      return tx((c) => outbox.claimDeprovisionJobs(c, p));
    },
    completeDeprovisionJob: async (i) => {
      const p = parse(input.jobInput, i);
      return tx((c) => outbox.completeDeprovisionJob(c, p));
    },
    releaseDeprovisionJob: async (i) => {
      const p = parse(input.releaseJobInput, i);
      return tx((c) => outbox.releaseDeprovisionJob(c, p));
    },
    listDeprovisionJobs: async (i = {}) => {
      const state = i.state ? parse(input.jobStateInput, i.state) : null;
      return read((c) => outbox.listDeprovisionJobs(c, state));
    },

    setServerState: async (i) => {
      const p = parse(input.serverStateInput, i);
      return tx((c) => servers.setServerState(c, p));
    },
    getServer: async (id) => {
      const serverId = parse(input.idSchema, id);
      return read((c) => servers.getServer(c, serverId));
    },
    listServers: async (opts = {}) => {
      const p = parse(input.listServersInput, opts);
      return read((c) => servers.listServers(c, p));
    },

    getHost: async (id, opts = {}) => {
      const hostId = parse(input.idSchema, id);
      const tenantId = opts.tenantId === undefined ? undefined : parse(input.idSchema, opts.tenantId);
      return read((c) => hosts.getHost(c, hostId, tenantId));
    },
    listHosts: async (opts = {}) => {
      const tenantId = opts.tenantId === undefined ? null : parse(input.idSchema, opts.tenantId);
      return read((c) => hosts.listHosts(c, tenantId));
    },
    getIncarnation: async (id) => {
      const incarnationId = parse(input.idSchema, id);
      return read((c) => hosts.getIncarnation(c, incarnationId));
    },
    listIncarnations: async (i) => {
      const p = parse(input.listIncarnationsInput, i);
      return read((c) => hosts.listIncarnations(c, p));
    },
    listVms: async (i) => {
      const p = parse(input.listVmsInput, i);
      return read((c) => vms.listVms(c, p));
    },
    getVm: async (id, opts = {}) => {
      const vmId = parse(input.idSchema, id);
      return read((c) => vms.getVm(c, vmId, opts.tenantId));
    },
    listEvents: async (i) => {
      const p = parse(input.eventsInput, i);
      return read((c) => audit.listEvents(c, p));
    },
  };
}


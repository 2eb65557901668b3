-- Per-tenant quotas (inventory/quotas.ts), revocable tenant tokens, and a bound on the idempotency table.
--
-- Quotas: a tenant without a row, or with a NULL column, has the default (inventory/quotas.ts DEFAULT_QUOTAS: 2
-- dedicated hosts per zone and resource class, as clouds allow for dedicated hosts). The operator raises (or lowers)
-- them per tenant; the host and VM quotas are checked in the transaction that creates the host or VM, under the
-- tenant's (hosts) or the host's (VMs) row lock, so concurrent creates cannot both pass the last free slot.
CREATE TABLE tenant_quotas (
  tenant_id dhm_id PRIMARY KEY REFERENCES tenants (id),
  -- Dedicated hosts that are not deleted, counted per (zone, resource class).
  hosts_per_zone_class integer CHECK (hosts_per_zone_class BETWEEN 0 AND 100000),
  -- VMs that are not deleted (running or lost) on one dedicated host.
  vms_per_host integer CHECK (vms_per_host BETWEEN 0 AND 100000),
  -- API requests per second of the tenant's token (the API's rate limiter reads it; bursts of twice this).
  requests_per_second integer CHECK (requests_per_second BETWEEN 1 AND 100000),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Counting a tenant's hosts per zone and class without a scan of every host.
CREATE INDEX dedicated_hosts_tenant_zone_class ON dedicated_hosts (tenant_id, zone, resource_class) WHERE state <> 'deleted';

-- Tokens: a revoked tenant has no token (NULL hash) until the operator rotates a new one; a rotation replaces the hash,
-- so the old token stops working in the same transaction the new one is made.
ALTER TABLE tenants ALTER COLUMN token_hash DROP NOT NULL;
ALTER TABLE tenants ADD COLUMN token_rotated_at timestamptz;
ALTER TABLE tenants ADD COLUMN token_revoked_at timestamptz;
ALTER TABLE tenants ADD CONSTRAINT tenants_revoked_has_no_token CHECK ((token_revoked_at IS NULL) OR (token_hash IS NULL));

-- The idempotency table's bound per principal (client/api/idempotency.ts) counts and evicts a principal's oldest rows.
CREATE INDEX api_idempotency_keys_principal_age ON api_idempotency_keys (principal, created_at);

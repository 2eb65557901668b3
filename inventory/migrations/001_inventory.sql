-- The inventory: the fleet of physical servers, the logical dedicated hosts customers see, the physical
-- incarnations that back them, their VMs, the de-provisioning outbox and the audit log.
-- Invariants that must never break are enforced here, not only in inventory/index.ts: a server backs at most one
-- live incarnation, allocations never exceed capacity and always equal the sum of the live VMs placed there, an
-- incarnation has exactly its host's amounts (claim 4), and the audit log is append-only.

CREATE TYPE server_state AS ENUM ('available', 'reserved', 'allocated', 'deprovisioning', 'maintenance', 'failed');
CREATE TYPE server_backend AS ENUM ('sim', 'qemu');
CREATE TYPE host_state AS ENUM ('active', 'migrating');
CREATE TYPE incarnation_role AS ENUM ('primary', 'clone');
CREATE TYPE incarnation_state AS ENUM ('live', 'deleted');
CREATE TYPE vm_state AS ENUM ('running', 'deleted');
CREATE TYPE migration_state AS ENUM ('running', 'finalized', 'rolled_back');
CREATE TYPE deprovision_after_state AS ENUM ('available', 'maintenance');
CREATE TYPE deprovision_state AS ENUM ('pending', 'done');

-- Ids are chosen by callers (fleet file, workflow) or generated with a prefix; one shape everywhere. Entity ids are
-- at most 64 characters (checked at the inventory's door); migration ids, derived from workflow ids, up to 128.
CREATE DOMAIN dhm_id AS text CHECK (VALUE ~ '^[a-z0-9][a-z0-9._-]*$' AND length(VALUE) <= 128);

CREATE TABLE zones (
  id dhm_id PRIMARY KEY,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- The amounts a dedicated host of this class is given. Servers of a class have at least these.
CREATE TABLE resource_classes (
  id dhm_id PRIMARY KEY,
  vcpus integer NOT NULL CHECK (vcpus > 0),
  memory_mib integer NOT NULL CHECK (memory_mib > 0),
  disk_gib integer NOT NULL CHECK (disk_gib > 0),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
  id dhm_id PRIMARY KEY,
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  -- sha256 of a 256-bit random token: a slow KDF adds nothing for tokens this strong.
  token_hash text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
  created_at timestamptz NOT NULL DEFAULT now()
);

-- The inventory's record of one host migration: which placements it holds. The migration object itself is the
-- Temporal workflow (claim 1b); this row makes every activity idempotent and keeps migration ids from being reused.
CREATE TABLE host_migrations (
  id dhm_id PRIMARY KEY,
  dedicated_host_id dhm_id NOT NULL, -- FK added below (the tables reference each other)
  state migration_state NOT NULL DEFAULT 'running',
  source_incarnation_id dhm_id NOT NULL,
  source_server_id dhm_id NOT NULL,
  target_server_id dhm_id,
  clone_incarnation_id dhm_id,
  after_state deprovision_after_state,
  started_at timestamptz NOT NULL DEFAULT now(),
  ended_at timestamptz,
  CHECK ((state = 'running') = (ended_at IS NULL)),
  CHECK (target_server_id IS NULL OR target_server_id <> source_server_id)
);
-- One live migration per host, whatever the callers do.
CREATE UNIQUE INDEX host_migrations_one_running ON host_migrations (dedicated_host_id) WHERE state = 'running';

CREATE TABLE physical_servers (
  id dhm_id PRIMARY KEY,
  zone dhm_id NOT NULL REFERENCES zones (id),
  resource_class dhm_id NOT NULL REFERENCES resource_classes (id),
  vcpus integer NOT NULL CHECK (vcpus > 0),
  memory_mib integer NOT NULL CHECK (memory_mib > 0),
  disk_gib integer NOT NULL CHECK (disk_gib > 0),
  nic_bandwidth_bps double precision NOT NULL CHECK (nic_bandwidth_bps > 0),
  agent_url text NOT NULL CHECK (agent_url ~ '^https?://'),
  backend server_backend NOT NULL DEFAULT 'sim',
  state server_state NOT NULL DEFAULT 'available',
  -- The migration holding this server as its target, from reservation until finalize or rollback.
  reserved_by_migration dhm_id REFERENCES host_migrations (id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CHECK (state <> 'reserved' OR reserved_by_migration IS NOT NULL),
  CHECK (reserved_by_migration IS NULL OR state IN ('reserved', 'allocated'))
);
-- Target selection scans available servers of one zone and class.
CREATE INDEX physical_servers_pick ON physical_servers (zone, resource_class, id) WHERE state = 'available';

ALTER TABLE host_migrations
  ADD FOREIGN KEY (source_server_id) REFERENCES physical_servers (id),
  ADD FOREIGN KEY (target_server_id) REFERENCES physical_servers (id);

CREATE TABLE dedicated_hosts (
  id dhm_id PRIMARY KEY,
  tenant_id dhm_id NOT NULL REFERENCES tenants (id),
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  zone dhm_id NOT NULL REFERENCES zones (id),
  resource_class dhm_id NOT NULL REFERENCES resource_classes (id),
  vcpus integer NOT NULL CHECK (vcpus > 0),
  memory_mib integer NOT NULL CHECK (memory_mib > 0),
  disk_gib integer NOT NULL CHECK (disk_gib > 0),
  state host_state NOT NULL DEFAULT 'active',
  -- Deferred: a host and its first incarnation are created in one transaction and reference each other.
  current_incarnation_id dhm_id NOT NULL,
  migration_id dhm_id REFERENCES host_migrations (id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CHECK ((state = 'migrating') = (migration_id IS NOT NULL)),
  -- Targets of the composite foreign keys below.
  UNIQUE (id, tenant_id),
  UNIQUE (id, vcpus, memory_mib, disk_gib)
);
CREATE INDEX dedicated_hosts_tenant ON dedicated_hosts (tenant_id, created_at);

ALTER TABLE host_migrations ADD FOREIGN KEY (dedicated_host_id) REFERENCES dedicated_hosts (id);

-- One physical incarnation of a dedicated host on one server.
CREATE TABLE host_incarnations (
  id dhm_id PRIMARY KEY,
  dedicated_host_id dhm_id NOT NULL,
  server_id dhm_id NOT NULL REFERENCES physical_servers (id),
  role incarnation_role NOT NULL,
  state incarnation_state NOT NULL DEFAULT 'live',
  vcpus integer NOT NULL,
  memory_mib integer NOT NULL,
  disk_gib integer NOT NULL,
  allocated_vcpus integer NOT NULL DEFAULT 0,
  allocated_memory_mib integer NOT NULL DEFAULT 0,
  allocated_disk_gib integer NOT NULL DEFAULT 0,
  -- The migration that created it (null for a host's first incarnation).
  migration_id dhm_id REFERENCES host_migrations (id),
  created_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz,
  -- Claim 4: exactly the amounts of its logical host (the host's amounts never change).
  FOREIGN KEY (dedicated_host_id, vcpus, memory_mib, disk_gib)
    REFERENCES dedicated_hosts (id, vcpus, memory_mib, disk_gib),
  CONSTRAINT allocation_within_capacity CHECK (
    allocated_vcpus BETWEEN 0 AND vcpus
    AND allocated_memory_mib BETWEEN 0 AND memory_mib
    AND allocated_disk_gib BETWEEN 0 AND disk_gib),
  CHECK ((state = 'deleted') = (deleted_at IS NOT NULL)),
  -- A deleted incarnation holds nothing (with the allocation trigger: no running VM is left on it).
  CHECK (state = 'live' OR (allocated_vcpus = 0 AND allocated_memory_mib = 0 AND allocated_disk_gib = 0)),
  UNIQUE (id, dedicated_host_id)
);
-- Never double-book a server.
CREATE UNIQUE INDEX host_incarnations_one_per_server ON host_incarnations (server_id) WHERE state = 'live';
-- A host has at most one live primary and one live clone.
CREATE UNIQUE INDEX host_incarnations_one_per_role ON host_incarnations (dedicated_host_id, role) WHERE state = 'live';

ALTER TABLE dedicated_hosts
  ADD FOREIGN KEY (current_incarnation_id, id) REFERENCES host_incarnations (id, dedicated_host_id)
  DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE host_migrations
  ADD FOREIGN KEY (source_incarnation_id, dedicated_host_id) REFERENCES host_incarnations (id, dedicated_host_id),
  ADD FOREIGN KEY (clone_incarnation_id, dedicated_host_id) REFERENCES host_incarnations (id, dedicated_host_id);

CREATE TABLE vms (
  id dhm_id PRIMARY KEY,
  tenant_id dhm_id NOT NULL,
  -- The logical host the customer sees; never changes (claim 3).
  dedicated_host_id dhm_id NOT NULL,
  -- Where it physically runs now; changes as it moves.
  incarnation_id dhm_id NOT NULL,
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  vcpus integer NOT NULL CHECK (vcpus > 0),
  memory_mib integer NOT NULL CHECK (memory_mib > 0),
  disk_gib integer NOT NULL CHECK (disk_gib > 0),
  workload jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(workload) = 'object'),
  state vm_state NOT NULL DEFAULT 'running',
  created_by_migration dhm_id REFERENCES host_migrations (id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz,
  CHECK ((state = 'deleted') = (deleted_at IS NOT NULL)),
  FOREIGN KEY (dedicated_host_id, tenant_id) REFERENCES dedicated_hosts (id, tenant_id),
  -- A VM only ever runs on an incarnation of its own logical host.
  FOREIGN KEY (incarnation_id, dedicated_host_id) REFERENCES host_incarnations (id, dedicated_host_id)
);
CREATE INDEX vms_host ON vms (dedicated_host_id, created_at);
CREATE INDEX vms_running_on ON vms (incarnation_id) WHERE state = 'running';

-- Deleted incarnations waiting for the scheduler service to tear their server down (claim 5).
CREATE TABLE deprovision_outbox (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  incarnation_id dhm_id NOT NULL UNIQUE REFERENCES host_incarnations (id),
  server_id dhm_id NOT NULL REFERENCES physical_servers (id),
  migration_id dhm_id REFERENCES host_migrations (id),
  after_state deprovision_after_state NOT NULL,
  state deprovision_state NOT NULL DEFAULT 'pending',
  claimed_by text,
  claimed_at timestamptz,
  attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  done_at timestamptz,
  CHECK ((state = 'done') = (done_at IS NOT NULL)),
  CHECK ((claimed_by IS NULL) = (claimed_at IS NULL))
);
CREATE INDEX deprovision_outbox_pending ON deprovision_outbox (id) WHERE state = 'pending';

CREATE FUNCTION deprovision_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Delivered at commit, so the scheduler never sees a row that might still roll back.
  PERFORM pg_notify('dhm_deprovision', NEW.id::text);
  RETURN NULL;
END $$;
CREATE TRIGGER deprovision_outbox_notify AFTER INSERT ON deprovision_outbox
  FOR EACH ROW EXECUTE FUNCTION deprovision_outbox_notify();

CREATE TABLE audit_events (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  actor text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
  action text NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
  entity_type text NOT NULL CHECK (entity_type IN
    ('tenant', 'dedicated_host', 'host_incarnation', 'vm', 'physical_server', 'host_migration', 'deprovision_job')),
  entity_id text NOT NULL,
  dedicated_host_id dhm_id,
  migration_id dhm_id,
  -- What a tenant may read.
  details jsonb NOT NULL DEFAULT '{}',
  -- Physical placement (server ids, agent URLs): operators only.
  physical jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_host ON audit_events (dedicated_host_id, id) WHERE dedicated_host_id IS NOT NULL;
CREATE INDEX audit_events_migration ON audit_events (migration_id, id) WHERE migration_id IS NOT NULL;
CREATE INDEX audit_events_entity ON audit_events (entity_type, entity_id, id);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- Cross-row invariants, checked at commit (deferred) so a transaction may pass through intermediate states.

-- An incarnation's allocation is exactly the sum of the running VMs placed on it: capacity never leaks.
CREATE FUNCTION assert_incarnation_allocation(inc_id text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  inc host_incarnations%ROWTYPE;
  used record;
BEGIN
  SELECT * INTO inc FROM host_incarnations WHERE id = inc_id;
  IF NOT FOUND THEN RETURN; END IF;
  SELECT coalesce(sum(vcpus), 0) AS vcpus, coalesce(sum(memory_mib), 0) AS memory_mib,
         coalesce(sum(disk_gib), 0) AS disk_gib
    INTO used FROM vms WHERE incarnation_id = inc_id AND state = 'running';
  IF used.vcpus <> inc.allocated_vcpus OR used.memory_mib <> inc.allocated_memory_mib
     OR used.disk_gib <> inc.allocated_disk_gib THEN
    RAISE EXCEPTION 'incarnation % allocation (% vCPU, % MiB, % GiB) differs from its running VMs (% vCPU, % MiB, % GiB)',
      inc_id, inc.allocated_vcpus, inc.allocated_memory_mib, inc.allocated_disk_gib,
      used.vcpus, used.memory_mib, used.disk_gib
      USING ERRCODE = 'check_violation', CONSTRAINT = 'incarnation_allocation_matches_vms';
  END IF;
END $$;

CREATE FUNCTION vms_check_allocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' THEN PERFORM assert_incarnation_allocation(OLD.incarnation_id); END IF;
  IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.incarnation_id IS DISTINCT FROM OLD.incarnation_id) THEN
    PERFORM assert_incarnation_allocation(NEW.incarnation_id);
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER vms_allocation_invariant AFTER INSERT OR UPDATE OR DELETE ON vms
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION vms_check_allocation();

-- A live incarnation sits on an allocated server big enough for it; a host's current incarnation is live.
CREATE FUNCTION host_incarnations_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  srv physical_servers%ROWTYPE;
BEGIN
  PERFORM assert_incarnation_allocation(NEW.id);
  IF NEW.state = 'live' THEN
    SELECT * INTO srv FROM physical_servers WHERE id = NEW.server_id;
    IF srv.state <> 'allocated' THEN
      RAISE EXCEPTION 'live incarnation % is on server % in state %', NEW.id, NEW.server_id, srv.state
        USING ERRCODE = 'check_violation', CONSTRAINT = 'live_incarnation_on_allocated_server';
    END IF;
    IF srv.vcpus < NEW.vcpus OR srv.memory_mib < NEW.memory_mib OR srv.disk_gib < NEW.disk_gib THEN
      RAISE EXCEPTION 'incarnation % does not fit on server %', NEW.id, NEW.server_id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'incarnation_fits_server';
    END IF;
  ELSIF EXISTS (SELECT 1 FROM dedicated_hosts WHERE current_incarnation_id = NEW.id) THEN
    RAISE EXCEPTION 'incarnation % is deleted but still the current incarnation of its host', NEW.id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'current_incarnation_is_live';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER host_incarnations_invariants AFTER INSERT OR UPDATE ON host_incarnations
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION host_incarnations_check();

CREATE FUNCTION dedicated_hosts_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM host_incarnations WHERE id = NEW.current_incarnation_id AND state = 'live') THEN
    RAISE EXCEPTION 'host % has current incarnation % which is not live', NEW.id, NEW.current_incarnation_id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'current_incarnation_is_live';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER dedicated_hosts_invariants AFTER INSERT OR UPDATE OF current_incarnation_id ON dedicated_hosts
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dedicated_hosts_check();

-- A server leaves 'allocated' only once nothing live runs on it.
CREATE FUNCTION physical_servers_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.state <> 'allocated'
     AND EXISTS (SELECT 1 FROM host_incarnations WHERE server_id = NEW.id AND state = 'live') THEN
    RAISE EXCEPTION 'server % is % but still backs a live incarnation', NEW.id, NEW.state
      USING ERRCODE = 'check_violation', CONSTRAINT = 'live_incarnation_on_allocated_server';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER physical_servers_invariants AFTER UPDATE OF state ON physical_servers
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION physical_servers_check();

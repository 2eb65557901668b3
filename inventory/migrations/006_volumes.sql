-- VM disks (issue 17). A VM's disks are its spec's `disks` as given (NULL: the default, one local disk "root" of
-- disk_gib; common/vm-spec.ts vmDisks). Local disks live on the server and are counted in disk_gib, which capacity
-- already enforces; network disks are volumes of the zone's storage service, an aggregate of their own.

ALTER TABLE vms ADD COLUMN disks jsonb CHECK (disks IS NULL OR jsonb_typeof(disks) = 'array');

CREATE TYPE volume_state AS ENUM ('available', 'deleted');

-- A tenant's network volume in one zone. It is attached to at most one VM at a time (the VM that names it), and a
-- deleted volume is never attached; the row stays after deletion for the audit trail.
CREATE TABLE volumes (
  id dhm_id PRIMARY KEY,
  tenant_id dhm_id NOT NULL REFERENCES tenants (id),
  zone dhm_id NOT NULL REFERENCES zones (id),
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  size_gib integer NOT NULL CHECK (size_gib > 0),
  state volume_state NOT NULL DEFAULT 'available',
  attached_vm_id dhm_id REFERENCES vms (id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz,
  CHECK ((state = 'deleted') = (deleted_at IS NOT NULL)),
  CHECK (state = 'available' OR attached_vm_id IS NULL)
);
CREATE INDEX volumes_tenant ON volumes (tenant_id, created_at);
CREATE INDEX volumes_attached_vm ON volumes (attached_vm_id) WHERE attached_vm_id IS NOT NULL;

-- A volume is attached only to a running VM of its own tenant (a deleted or lost VM gives its volumes back).
CREATE OR REPLACE FUNCTION volumes_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.attached_vm_id IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM vms WHERE id = NEW.attached_vm_id AND tenant_id = NEW.tenant_id AND state = 'running'
  ) THEN
    RAISE EXCEPTION 'volume % is attached to %, which is not a running VM of its tenant', NEW.id, NEW.attached_vm_id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'volume_attached_to_running_vm';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER volumes_invariants AFTER INSERT OR UPDATE ON volumes
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION volumes_check();

-- The same from the VM's side: a VM that stops running has no volume attached any more.
CREATE OR REPLACE FUNCTION vms_volumes_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.state <> 'running' AND EXISTS (SELECT 1 FROM volumes WHERE attached_vm_id = NEW.id) THEN
    RAISE EXCEPTION 'VM % is %, but a volume is still attached to it', NEW.id, NEW.state
      USING ERRCODE = 'check_violation', CONSTRAINT = 'volume_attached_to_running_vm';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER vms_volumes_invariants AFTER UPDATE OF state ON vms
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION vms_volumes_check();

-- Volumes are audited like every other aggregate (the list is restated from 001 with 'volume' added).
ALTER TABLE audit_events DROP CONSTRAINT audit_events_entity_type_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_entity_type_check CHECK (entity_type IN
  ('tenant', 'dedicated_host', 'host_incarnation', 'vm', 'physical_server', 'host_migration', 'deprovision_job', 'volume'));

-- Deleted dedicated hosts. The row stays (VMs, incarnations, migrations and audit events refer to it); the host answers
-- NOT_FOUND from then on. A deleted host keeps its last incarnation as current_incarnation_id, deleted with it, and
-- holds nothing: no live incarnation, no VM that is not deleted.
-- host_incarnations_check is restated from 001 (an applied migration is never edited) with one change: a deleted
-- incarnation may be the current one of a deleted host.

ALTER TABLE dedicated_hosts ADD COLUMN deleted_at timestamptz;
ALTER TABLE dedicated_hosts ADD CONSTRAINT dedicated_hosts_deleted_at CHECK ((state = 'deleted') = (deleted_at IS NOT NULL));

CREATE OR REPLACE FUNCTION host_incarnations_check() RETURNS trigger LANGUAGE plpgsql AS $$
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
  ELSIF EXISTS (SELECT 1 FROM dedicated_hosts WHERE current_incarnation_id = NEW.id AND state <> 'deleted') THEN
    RAISE EXCEPTION 'incarnation % is deleted but still the current incarnation of its host', NEW.id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'current_incarnation_is_live';
  END IF;
  RETURN NULL;
END $$;

-- A host that is not deleted has a live current incarnation; a deleted one holds nothing.
CREATE OR REPLACE FUNCTION dedicated_hosts_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.state = 'deleted' THEN
    IF EXISTS (SELECT 1 FROM host_incarnations WHERE dedicated_host_id = NEW.id AND state = 'live')
       OR EXISTS (SELECT 1 FROM vms WHERE dedicated_host_id = NEW.id AND state <> 'deleted') THEN
      RAISE EXCEPTION 'host % is deleted but still has a live incarnation or VMs', NEW.id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'deleted_host_holds_nothing';
    END IF;
  ELSIF NOT EXISTS (SELECT 1 FROM host_incarnations WHERE id = NEW.current_incarnation_id AND state = 'live') THEN
    RAISE EXCEPTION 'host % has current incarnation % which is not live', NEW.id, NEW.current_incarnation_id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'current_incarnation_is_live';
  END IF;
  RETURN NULL;
END $$;
DROP TRIGGER dedicated_hosts_invariants ON dedicated_hosts;
CREATE CONSTRAINT TRIGGER dedicated_hosts_invariants AFTER INSERT OR UPDATE OF current_incarnation_id, state ON dedicated_hosts
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dedicated_hosts_check();

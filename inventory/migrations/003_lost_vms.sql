-- A VM that no agent runs any more: its server rebooted (or its agent restarted and took the VM with it) while the
-- host migrated. The migration that found it records it here instead of pretending it moved or stayed; it no longer
-- counts towards its incarnation's allocation (only 'running' VMs do), and the tenant may delete it.
-- ADD VALUE may run inside the migration's transaction as long as nothing in it uses the value.
ALTER TYPE vm_state ADD VALUE IF NOT EXISTS 'lost';
ALTER TABLE vms ADD COLUMN lost_at timestamptz;
ALTER TABLE vms ADD COLUMN lost_reason text CHECK (lost_reason IS NULL OR length(lost_reason) <= 2000);

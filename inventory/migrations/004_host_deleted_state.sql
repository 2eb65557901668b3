-- A dedicated host its tenant deleted (inventory/hosts.ts, deleteDedicatedHost). Its own migration because a new enum
-- value may be used only once the transaction that added it committed (005 uses it).
ALTER TYPE host_state ADD VALUE IF NOT EXISTS 'deleted';

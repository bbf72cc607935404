-- Liveness is a fact in the store (see ../postgres/0013_node_leases.sql).
ALTER TABLE nodes ADD COLUMN heard_us INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN restart_requested INTEGER NOT NULL DEFAULT 0;
UPDATE nodes SET heard_us = CAST((julianday(last_heartbeat_at) - 2440587.5) * 86400000000 AS INTEGER);
CREATE INDEX nodes_heard ON nodes (heard_us) WHERE status <> 'down';

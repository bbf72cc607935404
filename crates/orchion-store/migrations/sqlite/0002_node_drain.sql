-- A node's drain flag is independent of its liveness: a drained node that goes silent and comes
-- back is still drained. `status` keeps the status derived from both, for queries.
ALTER TABLE nodes ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
CREATE INDEX nodes_status_id ON nodes (status, id);

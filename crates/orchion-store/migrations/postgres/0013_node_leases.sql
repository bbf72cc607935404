-- Liveness is a fact in the store, shared by every replica: `heard_us` is when a replica last
-- heard the node (microseconds since the epoch), written in one batch per check interval by the
-- replica that hears it; silence is judged against it. A restart request waits in the row for
-- the node's next heartbeat, through whichever replica it reaches.
ALTER TABLE nodes ADD COLUMN heard_us bigint NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN restart_requested boolean NOT NULL DEFAULT false;
UPDATE nodes SET heard_us = (extract(epoch FROM last_heartbeat_at) * 1000000)::bigint;
CREATE INDEX nodes_heard ON nodes (heard_us) WHERE status <> 'down';

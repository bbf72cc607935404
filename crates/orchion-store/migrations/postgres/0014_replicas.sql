-- The server replicas sharing this database, and what they must agree on. Each replica writes
-- its row when it starts and every check interval after; a row not written for a while belongs
-- to a replica that is gone.
CREATE TABLE replicas (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    version    text NOT NULL,
    started_at timestamptz NOT NULL,
    seen_us    bigint NOT NULL
);
CREATE TABLE cluster_settings (
    key   text PRIMARY KEY,
    value bytea NOT NULL
);

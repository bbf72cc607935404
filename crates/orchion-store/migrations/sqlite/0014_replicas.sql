-- The server replicas sharing this database (see ../postgres/0014_replicas.sql).
CREATE TABLE replicas (
    id         BLOB PRIMARY KEY,
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    started_at TEXT NOT NULL,
    seen_us    INTEGER NOT NULL
);
CREATE TABLE cluster_settings (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

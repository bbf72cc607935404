-- Orchion's schema on SQLite. Ids are 16-byte UUIDs (BLOB), times are RFC 3339 text in UTC,
-- documents are JSON text. Kept in step with ../postgres/0001_init.sql.

CREATE TABLE projects (
    id          BLOB PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    type        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'archived')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;
CREATE INDEX projects_status_id ON projects (status, id);

CREATE TABLE nodes (
    id                BLOB PRIMARY KEY NOT NULL,
    name              TEXT NOT NULL,
    address           TEXT NOT NULL,
    labels            TEXT NOT NULL DEFAULT '{}',
    cpu_millis        INTEGER NOT NULL DEFAULT 0,
    memory_bytes      INTEGER NOT NULL DEFAULT 0,
    gpus              INTEGER NOT NULL DEFAULT 0,
    executors         TEXT NOT NULL DEFAULT '[]',
    version           TEXT NOT NULL DEFAULT '',
    status            TEXT NOT NULL,
    credential_hash   BLOB,
    registered_at     TEXT NOT NULL,
    last_heartbeat_at TEXT NOT NULL
) STRICT;

CREATE TABLE workflow_types (
    project_id  BLOB REFERENCES projects (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    definition  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (name, version)
) STRICT;

CREATE TABLE runs (
    id               BLOB PRIMARY KEY NOT NULL,
    project_id       BLOB REFERENCES projects (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    workflow_name    TEXT,
    workflow_version INTEGER,
    status           TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    input            TEXT NOT NULL DEFAULT 'null',
    output           TEXT,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT
) STRICT;
CREATE INDEX runs_project_status ON runs (project_id, status, id);

CREATE TABLE tasks (
    id              BLOB PRIMARY KEY NOT NULL,
    run_id          BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step            TEXT NOT NULL,
    status          TEXT NOT NULL,
    executor        TEXT NOT NULL,
    spec            TEXT NOT NULL,
    needs           TEXT NOT NULL DEFAULT '[]',
    priority        INTEGER NOT NULL DEFAULT 0,
    concurrency_key TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    run_after       TEXT NOT NULL,
    output          TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (run_id, step)
) STRICT;
CREATE INDEX tasks_ready ON tasks (status, priority DESC, run_after, id);

CREATE TABLE attempts (
    task_id          BLOB NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    number           INTEGER NOT NULL,
    node_id          BLOB REFERENCES nodes (id) ON DELETE SET NULL,
    status           TEXT NOT NULL,
    lease_expires_at TEXT,
    started_at       TEXT NOT NULL,
    finished_at      TEXT,
    exit_code        INTEGER,
    error            TEXT,
    PRIMARY KEY (task_id, number)
) STRICT;

-- The append-only event log. AUTOINCREMENT: a sequence number is never reused, even after the
-- newest event is gone, so a client resuming from a number never sees a different event there.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    project_id BLOB,
    data       TEXT NOT NULL DEFAULT '{}'
) STRICT;

CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    resource_id  BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT;

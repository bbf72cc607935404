-- Jobs: a run with one task, tried in attempts under leases. The earlier placeholder tables
-- held no data (nothing wrote them), so they are replaced.
-- Times that queries compare (run_after, lease expiry, enqueue) are integer microseconds since
-- the Unix epoch, so comparisons are numeric on both backends.
DROP TABLE attempts;
DROP TABLE tasks;
DROP TABLE runs;

CREATE TABLE runs (
    id         BLOB PRIMARY KEY NOT NULL,
    project_id BLOB REFERENCES projects (id) ON DELETE SET NULL,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
CREATE INDEX runs_project ON runs (project_id, id);

CREATE TABLE tasks (
    id                   BLOB PRIMARY KEY NOT NULL,
    run_id               BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step                 TEXT NOT NULL,
    status               TEXT NOT NULL,
    executor             TEXT NOT NULL,
    spec                 TEXT NOT NULL,
    priority             INTEGER NOT NULL,
    labels               TEXT NOT NULL,
    cpu_millis           INTEGER NOT NULL,
    memory_bytes         INTEGER NOT NULL,
    gpus                 INTEGER NOT NULL,
    concurrency_key      TEXT,
    concurrency_limit    INTEGER,
    retry                TEXT NOT NULL,
    schedule_to_start_ms INTEGER,
    start_to_close_ms    INTEGER,
    heartbeat_ms         INTEGER NOT NULL,
    attempts             INTEGER NOT NULL,
    attempt_budget       INTEGER NOT NULL,
    cancel_requested     INTEGER NOT NULL,
    run_after_us         INTEGER NOT NULL,
    enqueued_us          INTEGER NOT NULL,
    node_id              BLOB,
    lease_expires_us     INTEGER,
    output               TEXT,
    error                TEXT,
    exit_code            INTEGER,
    log_bytes            INTEGER NOT NULL DEFAULT 0,
    log_seq              INTEGER NOT NULL DEFAULT 0,
    created_at           TEXT NOT NULL,
    started_at           TEXT,
    finished_at          TEXT,
    UNIQUE (run_id, step)
) STRICT;
CREATE INDEX tasks_queue ON tasks (priority DESC, enqueued_us, id) WHERE status = 'queued';
CREATE INDEX tasks_running ON tasks (node_id) WHERE status = 'running';
CREATE INDEX tasks_leases ON tasks (lease_expires_us) WHERE status = 'running';
CREATE INDEX tasks_status ON tasks (status, run_id);

CREATE TABLE attempts (
    task_id     BLOB NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    number      INTEGER NOT NULL,
    node_id     BLOB,
    status      TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    exit_code   INTEGER,
    error       TEXT,
    PRIMARY KEY (task_id, number)
) STRICT;

CREATE TABLE task_logs (
    task_id BLOB NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    stream  TEXT NOT NULL,
    line    TEXT NOT NULL,
    at      TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
) STRICT;

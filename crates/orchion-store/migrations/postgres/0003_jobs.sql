-- Jobs: a run with one task, tried in attempts under leases. The earlier placeholder tables
-- held no data (nothing wrote them), so they are replaced.
-- Times that queries compare (run_after, lease expiry, enqueue) are integer microseconds since
-- the Unix epoch, so comparisons are numeric on both backends.
DROP TABLE attempts;
DROP TABLE tasks;
DROP TABLE runs;

CREATE TABLE runs (
    id         uuid PRIMARY KEY,
    project_id uuid REFERENCES projects (id) ON DELETE SET NULL,
    kind       text NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX runs_project ON runs (project_id, id);

CREATE TABLE tasks (
    id                   uuid PRIMARY KEY,
    run_id               uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step                 text NOT NULL,
    status               text NOT NULL,
    executor             text NOT NULL,
    spec                 text NOT NULL,
    priority             integer NOT NULL,
    labels               jsonb NOT NULL,
    cpu_millis           bigint NOT NULL,
    memory_bytes         bigint NOT NULL,
    gpus                 integer NOT NULL,
    concurrency_key      text,
    concurrency_limit    integer,
    retry                jsonb NOT NULL,
    schedule_to_start_ms bigint,
    start_to_close_ms    bigint,
    heartbeat_ms         bigint NOT NULL,
    attempts             integer NOT NULL,
    attempt_budget       integer NOT NULL,
    cancel_requested     boolean NOT NULL,
    run_after_us         bigint NOT NULL,
    enqueued_us          bigint NOT NULL,
    node_id              uuid,
    lease_expires_us     bigint,
    output               text,
    error                text,
    exit_code            integer,
    log_bytes            bigint NOT NULL DEFAULT 0,
    log_seq              bigint NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL,
    started_at           timestamptz,
    finished_at          timestamptz,
    UNIQUE (run_id, step)
);
CREATE INDEX tasks_queue ON tasks (priority DESC, enqueued_us, id) WHERE status = 'queued';
CREATE INDEX tasks_running ON tasks (node_id) WHERE status = 'running';
CREATE INDEX tasks_leases ON tasks (lease_expires_us) WHERE status = 'running';
CREATE INDEX tasks_status ON tasks (status, run_id);
-- A queue table is updated constantly: vacuum and analyze it far more often than the defaults,
-- so dead tuples from claims and completions do not pile up and slow the claim scan.
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    fillfactor = 80
);

CREATE TABLE attempts (
    task_id     uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    number      integer NOT NULL,
    node_id     uuid,
    status      text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    exit_code   integer,
    error       text,
    PRIMARY KEY (task_id, number)
);

CREATE TABLE task_logs (
    task_id uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq     bigint NOT NULL,
    attempt integer NOT NULL,
    stream  text NOT NULL,
    line    text NOT NULL,
    at      timestamptz NOT NULL,
    PRIMARY KEY (task_id, seq)
);

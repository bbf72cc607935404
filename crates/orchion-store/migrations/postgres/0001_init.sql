-- Orchion's schema on PostgreSQL. Kept in step with ../sqlite/0001_init.sql.

CREATE TABLE projects (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    description text NOT NULL,
    type        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('active', 'archived')),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX projects_status_id ON projects (status, id);

CREATE TABLE nodes (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    address           text NOT NULL,
    labels            jsonb NOT NULL DEFAULT '{}',
    cpu_millis        bigint NOT NULL DEFAULT 0,
    memory_bytes      bigint NOT NULL DEFAULT 0,
    gpus              integer NOT NULL DEFAULT 0,
    executors         jsonb NOT NULL DEFAULT '[]',
    version           text NOT NULL DEFAULT '',
    status            text NOT NULL,
    credential_hash   bytea,
    registered_at     timestamptz NOT NULL,
    last_heartbeat_at timestamptz NOT NULL
);

CREATE TABLE workflow_types (
    project_id  uuid REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    version     integer NOT NULL,
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE runs (
    id               uuid PRIMARY KEY,
    project_id       uuid REFERENCES projects (id) ON DELETE CASCADE,
    kind             text NOT NULL,
    workflow_name    text,
    workflow_version integer,
    status           text NOT NULL,
    priority         integer NOT NULL DEFAULT 0,
    input            jsonb NOT NULL DEFAULT 'null',
    output           jsonb,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX runs_project_status ON runs (project_id, status, id);

CREATE TABLE tasks (
    id              uuid PRIMARY KEY,
    run_id          uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step            text NOT NULL,
    status          text NOT NULL,
    executor        text NOT NULL,
    spec            jsonb NOT NULL,
    needs           jsonb NOT NULL DEFAULT '[]',
    priority        integer NOT NULL DEFAULT 0,
    concurrency_key text,
    attempts        integer NOT NULL DEFAULT 0,
    run_after       timestamptz NOT NULL,
    output          jsonb,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    UNIQUE (run_id, step)
);
CREATE INDEX tasks_ready ON tasks (status, priority DESC, run_after, id);

CREATE TABLE attempts (
    task_id          uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    number           integer NOT NULL,
    node_id          uuid REFERENCES nodes (id) ON DELETE SET NULL,
    status           text NOT NULL,
    lease_expires_at timestamptz,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    exit_code        integer,
    error            text,
    PRIMARY KEY (task_id, number)
);

-- The append-only event log. Sequence numbers come from the one row of event_sequence, taken
-- with a row lock held to commit: transactions that append events therefore commit in sequence
-- order, and a reader that has seen event N never later finds an event below N appear.
CREATE TABLE event_sequence (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last      bigint NOT NULL
);
INSERT INTO event_sequence (last) VALUES (0);

CREATE TABLE events (
    seq        bigint PRIMARY KEY,
    at         timestamptz NOT NULL,
    kind       text NOT NULL,
    subject    text NOT NULL,
    project_id uuid,
    data       jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE idempotency_keys (
    scope        text NOT NULL,
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    resource_id  uuid NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Workflow runs: a run of a stored workflow type, pinned to the version it started on. Its steps
-- are tasks of the run (`step` is the step's name, `name[i]` for the i-th element of a fan-out),
-- created as they become ready; each task keeps the outputs its step produced.
ALTER TABLE tasks ADD COLUMN outputs TEXT;

CREATE TABLE workflow_runs (
    run_id           BLOB PRIMARY KEY NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    workflow         TEXT NOT NULL,
    version          INTEGER NOT NULL,
    input            TEXT NOT NULL,
    status           TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    finished_at      TEXT
) STRICT;
CREATE INDEX workflow_runs_status ON workflow_runs (status, run_id);

-- Workflow runs: a run of a stored workflow type, pinned to the version it started on. Its steps
-- are tasks of the run (`step` is the step's name, `name[i]` for the i-th element of a fan-out),
-- created as they become ready; each task keeps the outputs its step produced.
ALTER TABLE tasks ADD COLUMN outputs text;

CREATE TABLE workflow_runs (
    run_id           uuid PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    workflow         text NOT NULL,
    version          integer NOT NULL,
    input            text NOT NULL,
    status           text NOT NULL,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz
);
CREATE INDEX workflow_runs_status ON workflow_runs (status, run_id);

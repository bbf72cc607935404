-- Deployments: a run of a workflow made from the deployment's resources, kept inline with the
-- run (`workflow_runs.definition`) rather than as a stored workflow type. One deployment per
-- composer and environment is active (running) at a time; the partial unique index holds that
-- across replicas.
ALTER TABLE workflow_runs ADD COLUMN definition TEXT;

CREATE TABLE deployments (
    id          TEXT PRIMARY KEY NOT NULL,
    run_id      uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    composer    TEXT NOT NULL,
    environment TEXT NOT NULL,
    request     TEXT NOT NULL,
    active      boolean NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE UNIQUE INDEX deployments_one_active ON deployments (composer, environment) WHERE active;
CREATE INDEX deployments_run ON deployments (run_id);

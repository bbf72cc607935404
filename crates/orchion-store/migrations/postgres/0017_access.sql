-- Who may do what. Kept in step with ../sqlite/0017_access.sql.

CREATE TABLE tokens (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('api', 'session')),
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    project_id   uuid REFERENCES projects (id) ON DELETE CASCADE,
    digest       bytea NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_us   bigint,
    last_used_us bigint,
    revoked_us   bigint
);
CREATE UNIQUE INDEX tokens_digest ON tokens (digest);
CREATE INDEX tokens_kind ON tokens (kind, id);

CREATE TABLE audit (
    seq        bigserial PRIMARY KEY,
    at_us      bigint NOT NULL,
    actor      text NOT NULL,
    role       text,
    project_id uuid,
    client     text NOT NULL,
    method     text NOT NULL,
    route      text NOT NULL,
    resource   text NOT NULL,
    status     integer NOT NULL,
    request_id text NOT NULL
);
CREATE INDEX audit_actor ON audit (actor, seq);

INSERT INTO projects (id, name, description, type, status, created_at, updated_at)
VALUES ('00000000-0000-7000-8000-000000000001', 'default',
        'Where work goes when no project is named.', 'standard', 'active', now(), now())
ON CONFLICT (id) DO NOTHING;

UPDATE runs SET project_id = '00000000-0000-7000-8000-000000000001' WHERE project_id IS NULL;
UPDATE workflow_types SET project_id = '00000000-0000-7000-8000-000000000001' WHERE project_id IS NULL;
ALTER TABLE schedules ADD COLUMN project_id uuid;
UPDATE schedules SET project_id = '00000000-0000-7000-8000-000000000001';
CREATE INDEX schedules_project ON schedules (project_id, id);

-- Who may do what. Tokens are stored only as the SHA-256 digest of their text; the audit log is
-- append-only. Every job, run, schedule and workflow type belongs to a project: the `default`
-- project (a fixed id) takes what none was named for. Kept in step with ../postgres/0017_access.sql.

CREATE TABLE tokens (
    id           BLOB PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('api', 'session')),
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    project_id   BLOB REFERENCES projects (id) ON DELETE CASCADE,
    digest       BLOB NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_us   INTEGER,
    last_used_us INTEGER,
    revoked_us   INTEGER
) STRICT;
CREATE UNIQUE INDEX tokens_digest ON tokens (digest);
CREATE INDEX tokens_kind ON tokens (kind, id);

CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us      INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    role       TEXT,
    project_id BLOB,
    client     TEXT NOT NULL,
    method     TEXT NOT NULL,
    route      TEXT NOT NULL,
    resource   TEXT NOT NULL,
    status     INTEGER NOT NULL,
    request_id TEXT NOT NULL
) STRICT;
CREATE INDEX audit_actor ON audit (actor, seq);

INSERT INTO projects (id, name, description, type, status, created_at, updated_at)
VALUES (X'00000000000070008000000000000001', 'default',
        'Where work goes when no project is named.', 'standard', 'active',
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
ON CONFLICT (id) DO NOTHING;

UPDATE runs SET project_id = X'00000000000070008000000000000001' WHERE project_id IS NULL;
UPDATE workflow_types SET project_id = X'00000000000070008000000000000001' WHERE project_id IS NULL;
ALTER TABLE schedules ADD COLUMN project_id BLOB;
UPDATE schedules SET project_id = X'00000000000070008000000000000001';
CREATE INDEX schedules_project ON schedules (project_id, id);

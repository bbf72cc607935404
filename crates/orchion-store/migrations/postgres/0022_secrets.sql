-- A project's secrets, sealed. Kept in step with ../sqlite/0022_secrets.sql.

CREATE TABLE secrets (
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    version     integer NOT NULL,
    key_id      bytea NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (project_id, name)
);

-- A project's secrets, sealed: the ciphertext of each value under an AEAD key the store never
-- holds (`secrets.key` / `secrets.key_file`, or `<data_dir>/secrets.key`), with the id of
-- that key and the nonce it was sealed with. A value is never stored in the clear.
-- Kept in step with ../postgres/0022_secrets.sql.

CREATE TABLE secrets (
    project_id  BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    key_id      BLOB NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_by  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (project_id, name)
) STRICT;

-- Join tokens: many, named, expiring and revocable, each optionally limiting the labels and
-- capacity of the nodes it admits. Stored only as the SHA-256 digest of their text. A node
-- remembers the token it joined with, whose limits hold every time it registers again.
-- Kept in step with ../postgres/0018_join_tokens.sql.

CREATE TABLE join_tokens (
    id               BLOB PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    digest           BLOB NOT NULL,
    labels           TEXT,
    max_cpu_millis   INTEGER,
    max_memory_bytes INTEGER,
    max_gpus         INTEGER,
    created_by       TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    expires_us       INTEGER,
    last_used_us     INTEGER,
    revoked_us       INTEGER
) STRICT;
CREATE UNIQUE INDEX join_tokens_digest ON join_tokens (digest);
CREATE UNIQUE INDEX join_tokens_name ON join_tokens (name) WHERE revoked_us IS NULL;

ALTER TABLE nodes ADD COLUMN join_token_id BLOB;

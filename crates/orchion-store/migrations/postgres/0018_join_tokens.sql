-- Join tokens. Kept in step with ../sqlite/0018_join_tokens.sql.

CREATE TABLE join_tokens (
    id               uuid PRIMARY KEY,
    name             text NOT NULL,
    digest           bytea NOT NULL,
    labels           jsonb,
    max_cpu_millis   bigint,
    max_memory_bytes bigint,
    max_gpus         integer,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL,
    expires_us       bigint,
    last_used_us     bigint,
    revoked_us       bigint
);
CREATE UNIQUE INDEX join_tokens_digest ON join_tokens (digest);
CREATE UNIQUE INDEX join_tokens_name ON join_tokens (name) WHERE revoked_us IS NULL;

ALTER TABLE nodes ADD COLUMN join_token_id uuid;

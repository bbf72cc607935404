//! SQL both backends run as written: SQLite accepts PostgreSQL's `$N` placeholders, and these
//! statements use only what the two dialects share. Statements that differ live in the backend.

pub(crate) const INSERT_PROJECT: &str = "INSERT INTO projects (id, name, description, type, status, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

pub(crate) const SELECT_PROJECT: &str = "SELECT id, name, description, type, status, created_at, updated_at \
     FROM projects WHERE id = $1";

pub(crate) const LIST_PROJECTS: &str = "SELECT id, name, description, type, status, created_at, updated_at \
     FROM projects WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id > $2) \
     ORDER BY id LIMIT $3";

pub(crate) const UPDATE_PROJECT: &str = "UPDATE projects SET name = $2, description = $3, type = $4, status = $5, updated_at = $6 \
     WHERE id = $1";

pub(crate) const DELETE_PROJECT: &str = "DELETE FROM projects WHERE id = $1";

pub(crate) const FIND_IDEMPOTENCY_KEY: &str =
    "SELECT request_hash, resource_id FROM idempotency_keys WHERE scope = $1 AND key = $2";

pub(crate) const INSERT_IDEMPOTENCY_KEY: &str = "INSERT INTO idempotency_keys (scope, key, request_hash, resource_id, created_at) \
     VALUES ($1, $2, $3, $4, $5)";

pub(crate) const EVENTS_AFTER: &str = "SELECT seq, at, kind, subject, project_id, data FROM events \
     WHERE seq > $1 ORDER BY seq LIMIT $2";

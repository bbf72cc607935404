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

/// Statements with their arguments bound, for either backend: the column order lives here once.
pub(crate) mod bound {
    use orchion_domain::Project;
    use sqlx::{Database, Encode, Type, query::Query};
    use time::OffsetDateTime;
    use uuid::Uuid;

    use crate::{IdempotencyKey, StoreError};

    type Q<'q, DB> = Query<'q, DB, <DB as Database>::Arguments<'q>>;

    pub(crate) fn insert_project<'q, DB>(p: &'q Project) -> Q<'q, DB>
    where
        DB: Database,
        Uuid: Encode<'q, DB> + Type<DB>,
        &'q str: Encode<'q, DB> + Type<DB>,
        OffsetDateTime: Encode<'q, DB> + Type<DB>,
    {
        sqlx::query(super::INSERT_PROJECT)
            .bind(p.id.as_uuid())
            .bind(p.name.as_str())
            .bind(p.description.as_str())
            .bind(p.kind.as_str())
            .bind(p.status.as_str())
            .bind(p.created_at)
            .bind(p.updated_at)
    }

    pub(crate) fn update_project<'q, DB>(p: &'q Project) -> Q<'q, DB>
    where
        DB: Database,
        Uuid: Encode<'q, DB> + Type<DB>,
        &'q str: Encode<'q, DB> + Type<DB>,
        OffsetDateTime: Encode<'q, DB> + Type<DB>,
    {
        sqlx::query(super::UPDATE_PROJECT)
            .bind(p.id.as_uuid())
            .bind(p.name.as_str())
            .bind(p.description.as_str())
            .bind(p.kind.as_str())
            .bind(p.status.as_str())
            .bind(p.updated_at)
    }

    pub(crate) fn insert_idempotency_key<'q, DB>(
        scope: &'q str,
        key: &'q IdempotencyKey,
        resource: Uuid,
        at: OffsetDateTime,
    ) -> Q<'q, DB>
    where
        DB: Database,
        Uuid: Encode<'q, DB> + Type<DB>,
        &'q str: Encode<'q, DB> + Type<DB>,
        &'q [u8]: Encode<'q, DB> + Type<DB>,
        OffsetDateTime: Encode<'q, DB> + Type<DB>,
    {
        sqlx::query(super::INSERT_IDEMPOTENCY_KEY)
            .bind(scope)
            .bind(key.key.as_str())
            .bind(key.request_hash.as_slice())
            .bind(resource)
            .bind(at)
    }

    /// What a stored idempotency key row means for a new request with `key`: the resource it
    /// already names, a conflict when the request differs, or `None` when the key is new.
    pub(crate) fn resolve_idempotency(
        row: Option<(Vec<u8>, Uuid)>,
        key: &IdempotencyKey,
    ) -> Result<Option<Uuid>, StoreError> {
        match row {
            Some((hash, id)) if hash == key.request_hash => Ok(Some(id)),
            Some(_) => Err(StoreError::IdempotencyConflict {
                key: key.key.clone(),
            }),
            None => Ok(None),
        }
    }
}

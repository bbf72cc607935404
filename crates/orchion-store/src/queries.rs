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

pub(crate) const LAST_EVENT_SEQ: &str = "SELECT COALESCE(MAX(seq), 0) FROM events";

pub(crate) const NODE_COLUMNS_SELECT: &str = "SELECT id, name, address, labels, cpu_millis, memory_bytes, gpus, executors, version, status, draining, credential_hash, registered_at, last_heartbeat_at FROM nodes";

/// Registers a node, or re-registers it under its id: `registered_at` and the drain flag are
/// kept, and the status follows from being alive and (maybe) drained.
pub(crate) const UPSERT_NODE: &str = "INSERT INTO nodes (id, name, address, labels, cpu_millis, memory_bytes, gpus, executors, version, status, draining, credential_hash, registered_at, last_heartbeat_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'ready', false, $10, $11, $11) \
     ON CONFLICT (id) DO UPDATE SET name = excluded.name, address = excluded.address, labels = excluded.labels, \
     cpu_millis = excluded.cpu_millis, memory_bytes = excluded.memory_bytes, gpus = excluded.gpus, \
     executors = excluded.executors, version = excluded.version, credential_hash = excluded.credential_hash, \
     last_heartbeat_at = excluded.last_heartbeat_at, \
     status = CASE WHEN nodes.draining THEN 'draining' ELSE 'ready' END \
     RETURNING id, name, address, labels, cpu_millis, memory_bytes, gpus, executors, version, status, draining, credential_hash, registered_at, last_heartbeat_at";

pub(crate) const UPDATE_NODE_STATE: &str =
    "UPDATE nodes SET status = $2, draining = $3, last_heartbeat_at = $4 WHERE id = $1";

pub(crate) const UPDATE_NODE_HEARTBEAT: &str =
    "UPDATE nodes SET last_heartbeat_at = $2 WHERE id = $1";

pub(crate) const DELETE_NODE: &str = "DELETE FROM nodes WHERE id = $1";

/// Statements with their arguments bound, for either backend: the column order lives here once.
pub(crate) mod bound {
    use std::collections::BTreeMap;

    use orchion_domain::{Node, NodeStatus, Project};
    use sqlx::{Database, Encode, Type, query::Query, types::Json};
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

    pub(crate) fn upsert_node<'q, DB>(node: &'q Node, credential_hash: &'q [u8]) -> Q<'q, DB>
    where
        DB: Database,
        Uuid: Encode<'q, DB> + Type<DB>,
        &'q str: Encode<'q, DB> + Type<DB>,
        &'q [u8]: Encode<'q, DB> + Type<DB>,
        i64: Encode<'q, DB> + Type<DB>,
        i32: Encode<'q, DB> + Type<DB>,
        Json<&'q BTreeMap<String, String>>: Encode<'q, DB> + Type<DB>,
        Json<&'q Vec<String>>: Encode<'q, DB> + Type<DB>,
        OffsetDateTime: Encode<'q, DB> + Type<DB>,
    {
        // Capacity is validated to fit (64 TiB, 4096 cores, 256 GPUs), so these casts are exact.
        sqlx::query(super::UPSERT_NODE)
            .bind(node.id.as_uuid())
            .bind(node.name.as_str())
            .bind(node.address.as_str())
            .bind(Json(node.labels.as_map()))
            .bind(node.capacity.cpu_millis as i64)
            .bind(node.capacity.memory_bytes as i64)
            .bind(node.capacity.gpus as i32)
            .bind(Json(&node.executors))
            .bind(node.version.as_str())
            .bind(credential_hash)
            .bind(node.last_heartbeat_at)
    }

    pub(crate) fn update_node_state<'q, DB>(change: &'q crate::NodeStateChange) -> Q<'q, DB>
    where
        DB: Database,
        Uuid: Encode<'q, DB> + Type<DB>,
        &'q str: Encode<'q, DB> + Type<DB>,
        bool: Encode<'q, DB> + Type<DB>,
        OffsetDateTime: Encode<'q, DB> + Type<DB>,
    {
        sqlx::query(super::UPDATE_NODE_STATE)
            .bind(change.id.as_uuid())
            .bind(NodeStatus::of(change.liveness, change.draining).as_str())
            .bind(change.draining)
            .bind(change.last_heartbeat_at)
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

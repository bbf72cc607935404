//! Idempotency keys: each names one resource within a scope, with a digest of the request it
//! came with, so a repeat gets that resource back and a reuse with another body is refused.
//!
//! A create that loses a key race to another replica fails on the key's unique index; it tries
//! once more, and finds the winner ([`crate::error::is_unique_violation`]).

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    StoreError,
    backend::{Statement, Tx},
};

/// An idempotency key with a digest of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key the client chose.
    pub key: String,
    /// A digest of the request body, so a reuse with a different body is detected.
    pub request_hash: Vec<u8>,
}

/// The result of a create call: the resource, and whether this call created it (`false` when an
/// idempotency key returned an earlier one).
#[derive(Debug, Clone, PartialEq)]
pub struct Created<T> {
    pub value: T,
    pub created: bool,
}

/// The scope idempotency keys of project creation live in.
pub(crate) const PROJECT_CREATE_SCOPE: &str = "project.create";
/// The scope idempotency keys of job creation live in.
pub(crate) const JOB_CREATE_SCOPE: &str = "job.create";
/// The scope idempotency keys of workflow run creation live in.
pub(crate) const WORKFLOW_CREATE_SCOPE: &str = "workflow.create";

pub(crate) const FIND_IDEMPOTENCY_KEY: &str =
    "SELECT request_hash, resource_id FROM idempotency_keys WHERE scope = $1 AND key = $2";

pub(crate) const INSERT_IDEMPOTENCY_KEY: &str = "INSERT INTO idempotency_keys (scope, key, request_hash, resource_id, created_at) \
     VALUES ($1, $2, $3, $4, $5)";

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

/// The resource an idempotency key already names in `scope`, or `None` when the key is new.
pub(crate) async fn find_idempotent<T: Tx>(
    tx: &mut T,
    scope: &str,
    key: &IdempotencyKey,
) -> Result<Option<Uuid>, StoreError> {
    let row = tx
        .fetch_optional(
            Statement::new(FIND_IDEMPOTENCY_KEY)
                .bind(scope)
                .bind(key.key.as_str()),
        )
        .await?;
    resolve_idempotency(row, key)
}

/// Records that `key` names `resource` in `scope`.
pub(crate) fn insert_key<'a>(
    scope: &'a str,
    key: &'a IdempotencyKey,
    resource: Uuid,
    at: OffsetDateTime,
) -> Statement<'a> {
    Statement::new(INSERT_IDEMPOTENCY_KEY)
        .bind(scope)
        .bind(key.key.as_str())
        .bind(key.request_hash.as_slice())
        .bind(resource)
        .bind(at)
}

/// Runs `attempt` and, when it fails on a unique index while `keyed` (another replica committed
/// the same key meanwhile), runs it once more: the second run finds the winner.
pub(crate) async fn retry_lost_race<R, F, Fut>(keyed: bool, mut attempt: F) -> Result<R, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, StoreError>>,
{
    match attempt().await {
        Err(e) if keyed && crate::error::is_unique_violation(&e) => attempt().await,
        other => other,
    }
}

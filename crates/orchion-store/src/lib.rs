//! Orchion's durable store: one object-safe [`Store`] trait and its two backends, SQLite
//! (embedded, one replica) and PostgreSQL (any number of replicas).
//!
//! Invariants every backend keeps, checked by the conformance suite in `tests/conformance.rs`:
//! - A call that returns `Ok` has committed: what it wrote is on disk.
//! - A change and the event that records it commit in one transaction, so the event log is a
//!   complete history. Event sequence numbers increase in commit order and are never reused.
//! - An idempotency key maps to exactly one resource; a second request with the same key and the
//!   same body gets that resource back, one with a different body is refused.
//!
//! The map: each concern is a module with its trait and its one implementation for every
//! backend — `access` (tokens, the audit log), `catalog` (projects, nodes, events), `jobs`, `schedules`, `workflow_types`, `runs`,
//! `deliveries`, `secrets` — written over the [`backend`] seam, which `sqlite/` and `postgres/` implement.
//! Shared by the concerns: `tasks` (task rows and the steps that change them), `plan` (the pure
//! decisions of the hot writes), `events`, `idempotency` and `codec`.
//!
//! Timestamps are kept at microsecond precision (what PostgreSQL keeps); use [`now`].

mod access;
mod backend;
mod catalog;
mod codec;
mod deliveries;
mod error;
mod events;
mod idempotency;
mod jobs;
mod plan;
mod postgres;
mod replicas;
mod retention;
mod runs;
mod schedules;
mod secrets;
mod signals;
mod sqlite;
mod tasks;
mod workflow_types;

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

/// The database driver, for errors callers build (a store that is shutting down).
pub use sqlx;

pub use crate::{
    access::{AccessStore, MAX_AUDIT_PAGE},
    backend::Backend,
    catalog::{CatalogStore, Event, NodeStateChange, StoredNode},
    codec::{MAX_LOG_BYTES, MAX_OUTPUT_BYTES, TRUNCATED, truncate},
    deliveries::{Delivery, DeliveryStore},
    error::StoreError,
    events::EVENT_KINDS,
    idempotency::{Created, IdempotencyKey},
    jobs::{
        ActiveCounts, AttemptReport, ClaimRequest, ClaimedTask, Completed, JobIntake, JobStore,
        LeaseState, LogLine, NewLogLine, QueueDepth,
    },
    postgres::PostgresStore,
    replicas::{ReplicaStart, ReplicaStore},
    retention::{Projects, RetentionStore},
    runs::{Advanced, NewDeployment, NewStep, NewWorkflowRun, RunHead, RunStore, StepProgress},
    schedules::ScheduleStore,
    secrets::{Sealed, SealedSecret, SecretInfo, SecretStore},
    signals::{Heard, Listener, Signal},
    sqlite::SqliteStore,
    workflow_types::WorkflowTypeStore,
};

/// The store behind every Orchion server. Object-safe: the server holds an `Arc<dyn Store>`,
/// which has the methods of every part of the store too.
#[async_trait]
pub trait Store:
    AccessStore
    + CatalogStore
    + JobStore
    + ScheduleStore
    + WorkflowTypeStore
    + RunStore
    + DeliveryStore
    + ReplicaStore
    + SecretStore
    + RetentionStore
    + Send
    + Sync
    + 'static
{
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Succeeds when the store answers a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;

    /// How many write transactions this store has committed since it was opened.
    fn commits(&self) -> u64;

    /// Gives the space of deleted rows back to the file system, a little at a time (SQLite's
    /// incremental vacuum); PostgreSQL's autovacuum does it on its own.
    async fn reclaim_space(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Why writes fail, when the last one failed for a reason that passes (a full disk, an I/O
    /// error) and none has committed since.
    fn write_failure(&self) -> Option<String> {
        None
    }

    /// Closes the store's connections; later calls fail with [`StoreError::Unavailable`].
    async fn close(&self);

    /// Tells the other replicas sharing this store what changed, after it was committed
    /// (`signals.rs`). Without replicas (SQLite) there is nobody to tell.
    async fn signal(&self, signals: &[Signal]) -> Result<(), StoreError> {
        let _ = signals;
        Ok(())
    }

    /// Listens for what the other replicas change; `None` where there are none (SQLite).
    async fn listen(&self) -> Result<Option<Box<dyn Listener>>, StoreError> {
        Ok(None)
    }
}

/// Opens the store a URL names (`sqlite:PATH` or `postgres://…`), creating and migrating it.
pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url, max_connections).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            PostgresStore::connect(url, max_connections).await?,
        ))
    } else {
        Err(StoreError::InvalidUrl(
            "expected a URL starting with `sqlite:` or `postgres://`".into(),
        ))
    }
}

/// The current time at the precision every backend keeps (microseconds).
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let micros = now.microsecond();
    now.replace_microsecond(micros).unwrap_or(now)
}

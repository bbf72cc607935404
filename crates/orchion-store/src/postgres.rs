//! The PostgreSQL backend: a connection pool shared by any number of server replicas.
//!
//! Replicas race, so every read-modify-write locks what it reads (`FOR UPDATE`), and a create
//! that loses an idempotency-key race to another replica returns the winner's resource.

mod queue;

use std::{
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use orchion_domain::{
    Node, NodeId, NodeStatus, Page, PageRequest, Project, ProjectFilter, ProjectId, ProjectUpdate,
};
use sqlx::{
    PgConnection,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    types::Json,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Backend, Created, Event, IdempotencyKey, NodeStateChange, PROJECT_CREATE_SCOPE, Store,
    StoreError, StoredNode, kind,
    queries::*,
    rows::{
        EventRow, NodeRow, ProjectRow, node_registered_event_data, node_status_event_data, page_of,
        project_event_data,
    },
};

/// A store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    commits: std::sync::Arc<AtomicU64>,
}

impl PostgresStore {
    /// Connects to `url` with up to `max_connections` connections and migrates the schema.
    /// Migrations take an advisory lock, so replicas starting together migrate once.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            commits: Default::default(),
        })
    }

    fn read_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    async fn commit(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        tx.commit().await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn append_event(
    conn: &mut PgConnection,
    kind: &str,
    subject: String,
    project: Option<ProjectId>,
    data: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH s AS (UPDATE event_sequence SET last = last + 1 RETURNING last) \
         INSERT INTO events (seq, at, kind, subject, project_id, data) \
         SELECT last, $1, $2, $3, $4, $5 FROM s",
    )
    .bind(crate::now())
    .bind(kind)
    .bind(subject)
    .bind(project.map(|p| p.as_uuid()))
    .bind(Json(data))
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends a transaction's events at its end: one step of `event_sequence` for all of them, so
/// the row lock that orders events by commit is taken as late, and held as briefly, as it can be.
async fn append_events(
    conn: &mut PgConnection,
    events: &[crate::jobs::PendingEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    // One statement takes the sequence numbers and writes the events: the row lock on
    // `event_sequence`, which orders events by commit, is held from here to the commit, so the
    // less that follows it the better.
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    let projects: Vec<Option<uuid::Uuid>> = events
        .iter()
        .map(|e| e.project_id.map(|p| p.as_uuid()))
        .collect();
    let data: Vec<Json<&serde_json::Value>> = events.iter().map(|e| Json(&e.data)).collect();
    sqlx::query(
        "WITH s AS (UPDATE event_sequence SET last = last + $1 RETURNING last) \
         INSERT INTO events (seq, at, kind, subject, project_id, data) \
         SELECT s.last - $1 + e.n, $2, e.kind, e.subject, e.project_id, e.data FROM s, \
         UNNEST($3::text[], $4::text[], $5::uuid[], $6::jsonb[]) WITH ORDINALITY AS e (kind, subject, project_id, data, n)",
    )
    .bind(count)
    .bind(crate::now())
    .bind(kinds)
    .bind(subjects)
    .bind(projects)
    .bind(data)
    .execute(conn)
    .await?;
    Ok(())
}

/// The resource an idempotency key already names, or `None` when the key is new.
async fn find_idempotent(
    conn: &mut PgConnection,
    scope: &str,
    key: &IdempotencyKey,
) -> Result<Option<Uuid>, StoreError> {
    let row: Option<(Vec<u8>, Uuid)> = sqlx::query_as(FIND_IDEMPOTENCY_KEY)
        .bind(scope)
        .bind(&key.key)
        .fetch_optional(conn)
        .await?;
    bound::resolve_idempotency(row, key)
}

/// Row locks: replicas change tasks concurrently, so a task is locked before it changes, and
/// scans that take work skip rows another replica holds.
const TASK_LOCK: &str = " FOR UPDATE OF t";
const TASK_LOCK_SKIP: &str = " FOR UPDATE OF t SKIP LOCKED";

crate::jobs::impl_job_store!(PostgresStore);
crate::deliveries::impl_delivery_store!(PostgresStore);
crate::runs::impl_run_store!(PostgresStore, PgConnection);
crate::catalog::impl_catalog_store!(PostgresStore);

/// How a row read for a change is locked.
const ROW_LOCK: &str = " FOR UPDATE";

crate::jobs::job_helpers!(PgConnection);

fn project_not_found(id: ProjectId) -> StoreError {
    StoreError::NotFound {
        kind: "project",
        id: id.to_string(),
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

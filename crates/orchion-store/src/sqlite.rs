//! The SQLite backend: one file in WAL mode, one writer connection whose transactions start with
//! `BEGIN IMMEDIATE` (so a writer never fails midway on a lock), and a pool of read-only
//! connections that read concurrently with it.
//!
//! `synchronous=NORMAL`: a commit is in the WAL before the call returns, so a killed process
//! loses nothing; an OS crash or power cut may lose the last commits.

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
    SqliteConnection,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
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

/// A store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    commits: std::sync::Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `url` (`sqlite:PATH`), with up to
    /// `readers` concurrent read connections.
    pub async fn open(url: &str, readers: u32) -> Result<Self, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::InvalidUrl(
                "an in-memory SQLite database is not durable; name a file, e.g. sqlite:orchion.db"
                    .into(),
            ));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            writer,
            readers,
            commits: Default::default(),
        })
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    fn read_pool(&self) -> &SqlitePool {
        &self.readers
    }

    async fn commit(&self, tx: sqlx::Transaction<'static, sqlx::Sqlite>) -> Result<(), StoreError> {
        tx.commit().await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn append_event(
    conn: &mut SqliteConnection,
    kind: &str,
    subject: String,
    project: Option<ProjectId>,
    data: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (at, kind, subject, project_id, data) VALUES ($1, $2, $3, $4, $5)",
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

/// Appends a transaction's events at its end, in order.
async fn append_events(
    conn: &mut SqliteConnection,
    events: &[crate::jobs::PendingEvent],
) -> Result<(), StoreError> {
    let at = crate::now();
    for chunk in events.chunks(crate::jobs::INSERT_CHUNK) {
        let mut insert =
            sqlx::QueryBuilder::new("INSERT INTO events (at, kind, subject, project_id, data) ");
        insert.push_values(chunk, |mut row, event| {
            row.push_bind(at)
                .push_bind(event.kind)
                .push_bind(event.subject.as_str())
                .push_bind(event.project_id.map(|p| p.as_uuid()))
                .push_bind(Json(&event.data));
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The resource an idempotency key already names, or `None` when the key is new.
async fn find_idempotent(
    conn: &mut SqliteConnection,
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

/// Row locks: none on SQLite, whose one writer connection already serializes every change.
const TASK_LOCK: &str = "";
const TASK_LOCK_SKIP: &str = "";

/// Queued tasks due by `now_us` that one of `executors` runs, by priority then age.
async fn claim_candidates(
    conn: &mut SqliteConnection,
    now_us: i64,
    executors: &[String],
    limit: i64,
) -> Result<Vec<crate::jobs::TaskRow>, StoreError> {
    // Without statistics the planner would take `tasks_status` and sort the whole backlog on
    // every claim; the queue index reads it in order and stops at the limit.
    let sql = format!(
        "SELECT {} FROM tasks t INDEXED BY tasks_queue JOIN runs r ON r.id = t.run_id \
         WHERE t.status = 'queued' AND t.run_after_us <= $1 \
         AND t.executor IN (SELECT value FROM json_each($2)) \
         ORDER BY t.priority DESC, t.enqueued_us, t.id LIMIT $3",
        crate::jobs::TASK_COLUMNS
    );
    Ok(sqlx::query_as::<_, crate::jobs::TaskRow>(&sql)
        .bind(now_us)
        .bind(Json(executors))
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// Nothing to lock: the single writer serializes claims.
async fn lock_concurrency_key(_conn: &mut SqliteConnection, _key: &str) -> Result<(), StoreError> {
    Ok(())
}

crate::jobs::impl_job_store!(SqliteStore);
crate::deliveries::impl_delivery_store!(SqliteStore);
crate::runs::impl_run_store!(SqliteStore, SqliteConnection);
crate::catalog::impl_catalog_store!(SqliteStore);

/// How a row read for a change is locked.
const ROW_LOCK: &str = "";

crate::jobs::job_helpers!(SqliteConnection);

fn project_not_found(id: ProjectId) -> StoreError {
    StoreError::NotFound {
        kind: "project",
        id: id.to_string(),
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }
}

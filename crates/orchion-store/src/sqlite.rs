//! The SQLite backend: one file in WAL mode, written by two connections that take turns — sqlx's,
//! for most writes, and one on a thread of its own for the work queue's hot writes
//! (`sqlite/writer.rs`, `sqlite/queue.rs`) — whose transactions start with `BEGIN IMMEDIATE` (so
//! a writer never fails midway on a lock), and a pool of read-only connections that read
//! concurrently with them.
//!
//! `synchronous=NORMAL`: a commit is in the WAL before the call returns, so a killed process
//! loses nothing; an OS crash or power cut may lose the last commits.
//!
//! Checkpoints (copying the WAL back into the database file, with its `fsync`) are taken off the
//! writer's path: the writer never checkpoints, and a third connection does, every
//! [`CHECKPOINT_INTERVAL`]. Left to SQLite, every thousandth page written makes one commit wait
//! for a checkpoint; `orchion bench jobs` ran about 9 % faster without that.

mod queue;
mod writer;

use std::{
    ops::{Deref, DerefMut},
    str::FromStr,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
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

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// A WAL longer than this many pages is checkpointed with `RESTART`, which waits for readers to
/// move on so the next writer can start the WAL over, rather than let it grow.
const WAL_RESTART_PAGES: i64 = 32_768;

/// A store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    /// Writes through sqlx, one transaction at a time.
    writer: SqlitePool,
    /// The work queue's hot writes, on their own thread (`writer.rs`).
    queue: Arc<writer::Writer>,
    /// Whose turn it is to write: `writer`'s or `queue`'s.
    turn: writer::WriteTurn,
    readers: SqlitePool,
    checkpointer: SqlitePool,
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// A transaction on the sqlx writer connection; it holds the write turn until it ends. Dropped
/// without a commit (an error), it lets go of the turn at once while sqlx rolls back on the
/// connection's next use: a write that takes the turn meanwhile waits for that rollback in
/// SQLite's busy handler, which only errors cause.
pub(crate) struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx {
    async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
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
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .connect_with(options.clone().read_only(true))
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let commits = Arc::new(AtomicU64::new(0));
        let turn = writer::WriteTurn::default();
        let queue = Arc::new(writer::Writer::open(
            options.get_filename(),
            turn.clone(),
            commits.clone(),
        )?);
        tokio::spawn(checkpoint(checkpointer.clone(), Arc::downgrade(&queue)));
        Ok(Self {
            writer,
            queue,
            turn,
            readers,
            checkpointer,
            commits,
        })
    }

    async fn begin(&self) -> Result<WriteTx, StoreError> {
        let turn = self.turn.clone().lock_owned().await;
        Ok(WriteTx {
            tx: self.writer.begin_with("BEGIN IMMEDIATE").await?,
            _turn: turn,
        })
    }

    fn read_pool(&self) -> &SqlitePool {
        &self.readers
    }

    async fn commit(&self, tx: WriteTx) -> Result<(), StoreError> {
        tx.tx.commit().await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_INTERVAL`] until the store is closed, or dropped: the
/// store's writer, held weakly, goes with its last clone. `PASSIVE` copies what no reader still
/// needs and never blocks the writer.
async fn checkpoint(pool: SqlitePool, store: Weak<writer::Writer>) {
    let mut interval = tokio::time::interval(CHECKPOINT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mode = "PASSIVE";
    loop {
        interval.tick().await;
        if store.strong_count() == 0 || pool.is_closed() {
            return;
        }
        let done: Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as(&format!("PRAGMA wal_checkpoint({mode})"))
                .fetch_one(&pool)
                .await;
        match done {
            Ok((_, wal_pages, _)) => {
                mode = if wal_pages > WAL_RESTART_PAGES {
                    "RESTART"
                } else {
                    "PASSIVE"
                };
            }
            Err(_) if pool.is_closed() => return,
            Err(e) => tracing::warn!(error = %e, "checkpointing the SQLite WAL failed; retrying"),
        }
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
        // Wait for the turn, so no transaction is cut off midway.
        let _turn = self.turn.lock().await;
        self.queue.close();
        self.writer.close().await;
        self.readers.close().await;
        self.checkpointer.close().await;
    }
}

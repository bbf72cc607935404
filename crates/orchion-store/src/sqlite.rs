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
    str::FromStr,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use orchion_domain::Job;
use sqlx::{
    Arguments,
    sqlite::{
        SqliteArguments, SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool,
        SqlitePoolOptions, SqliteSynchronous,
    },
    types::Json,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    AttemptReport, Backend, ClaimRequest, ClaimedTask, Completed, Created, Store, StoreError,
    backend::{Row, Statement, StoreBackend, Tx, Value},
    error::encode,
    events::PendingEvent,
    tasks::INSERT_CHUNK,
};

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// A WAL longer than this many pages is checkpointed with `RESTART`, which waits for readers to
/// move on so the next writer can start the WAL over, rather than let it grow.
const WAL_RESTART_PAGES: i64 = 32_768;

/// The size the WAL file is cut back to after a checkpoint (`journal_size_limit`), in bytes.
const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// Free pages handed back to the file system per [`Store::reclaim_space`] call.
const RECLAIM_PAGES: u32 = 2_000;

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
    /// The checkpoint task, stopped and joined at close.
    background: TaskTracker,
    stop: CancellationToken,
    writes: Arc<Writes>,
    /// `<database>.lock`, locked while this store is open: one server per database file.
    lock: Arc<std::sync::Mutex<Option<std::fs::File>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// Makes the database file before SQLite does, readable and writable by this user alone, and
/// takes that access from everyone else on files an earlier version left open (`-wal`, `-shm`
/// too). SQLite gives the `-wal` and `-shm` files it creates the database file's mode.
fn private_files(db: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let refused = |path: &std::path::Path, e: std::io::Error| {
        StoreError::Files(format!(
            "cannot make the database file {} private to this user: {e}",
            path.display()
        ))
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        // SQLite says why better (a missing directory, a read-only file system).
        Err(_) => return Ok(()),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| refused(&path, e))?;
            }
            Ok(_) | Err(_) => {}
        }
    }
    Ok(())
}

/// What the store's writes did, for both writers: how many transactions committed, and — for
/// readiness — why the last write failed, when it failed for a reason that passes (a full disk,
/// an I/O error) and none has committed since.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    commits: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
    failure: std::sync::Mutex<Option<String>>,
}

impl Writes {
    /// A transaction committed: writes work.
    pub(crate) fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        if self.failing.swap(false, Ordering::Relaxed) {
            *self.failure() = None;
        }
    }

    /// Passes `outcome` on, remembering a failure that passes.
    pub(crate) fn watch<T>(&self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e @ StoreError::Unavailable(_)) = &outcome {
            *self.failure() = Some(e.to_string());
            self.failing.store(true, Ordering::Relaxed);
        }
        outcome
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn failure(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Takes `<db>.lock` for this process, writing its pid there, so that a second server on the
/// same database file is refused in words (naming the lock and the process holding it) rather
/// than sharing the file's one writer with it. The lock (`flock`) goes with the process, however
/// it ends.
fn lock_database(db: &std::path::Path) -> Result<std::fs::File, StoreError> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let failed =
        |e: std::io::Error| StoreError::Files(format!("cannot lock {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(failed)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_owned(),
                pid => format!("process {pid}"),
            };
            return Err(StoreError::Files(format!(
                "the database {} is in use: {holder} holds its lock {}. Stop that server, or give \
                 this one another data directory (--data-dir) or database (--database-url)",
                db.display(),
                path.display()
            )));
        }
        Err(e) => return Err(failed(e.into())),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(failed)?;
    Ok(file)
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
            // The WAL shrinks back to this size after a checkpoint, whatever a burst made it.
            .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        private_files(options.get_filename())?;
        let lock = lock_database(options.get_filename())?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            // Deleted rows' pages go back to the file system (`reclaim_space`): set as the
            // file is made, by the connection that makes it.
            .connect_with(
                options
                    .clone()
                    .auto_vacuum(SqliteAutoVacuum::Incremental)
                    .pragma("wal_autocheckpoint", "0"),
            )
            .await?;
        // A database made before incremental vacuum was asked for keeps its old mode until a
        // VACUUM rewrites it: once.
        let (mode,): (i64,) = sqlx::query_as("PRAGMA auto_vacuum")
            .fetch_one(&writer)
            .await?;
        if mode != 2 {
            tracing::info!(
                "rewriting the SQLite database once, so deleted rows' space can be reclaimed"
            );
            sqlx::query("VACUUM").execute(&writer).await?;
        }
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(crate::error::migrate_error)?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .connect_with(options.clone().read_only(true))
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let writes = Arc::new(Writes::default());
        let turn = writer::WriteTurn::default();
        let queue = Arc::new(writer::Writer::open(
            options.get_filename(),
            turn.clone(),
            writes.clone(),
        )?);
        let (background, stop) = (TaskTracker::new(), CancellationToken::new());
        background.spawn(checkpoint(
            checkpointer.clone(),
            Arc::downgrade(&queue),
            writes.clone(),
            stop.clone(),
        ));
        Ok(Self {
            writer,
            queue,
            turn,
            readers,
            checkpointer,
            background,
            stop,
            writes,
            lock: Arc::new(std::sync::Mutex::new(Some(lock))),
        })
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_INTERVAL`] until `stop` (the store closes), or the store
/// is dropped: its writer, held weakly, goes with its last clone. `PASSIVE` copies what no reader
/// still needs and never blocks the writer. Nothing committed since a checkpoint that copied
/// everything: nothing to do (an idle server rests).
async fn checkpoint(
    pool: SqlitePool,
    store: Weak<writer::Writer>,
    writes: Arc<Writes>,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(CHECKPOINT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mode = "PASSIVE";
    let mut copied_through = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = stop.cancelled() => return,
        }
        if store.strong_count() == 0 || pool.is_closed() {
            return;
        }
        let committed = writes.commits();
        if copied_through == Some(committed) {
            continue;
        }
        let done: Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as(&format!("PRAGMA wal_checkpoint({mode})"))
                .fetch_one(&pool)
                .await;
        match done {
            Ok((_, wal_pages, checkpointed)) => {
                if checkpointed == wal_pages {
                    copied_through = Some(committed);
                }
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

/// A statement's arguments as sqlx's SQLite driver takes them, borrowing from `values`.
fn arguments<'q>(values: &'q [Value<'_>]) -> Result<SqliteArguments<'q>, StoreError> {
    let mut args = SqliteArguments::default();
    args.reserve(values.len(), 0);
    for value in values {
        match value {
            Value::Bool(v) => args.add(*v),
            Value::I32(v) => args.add(*v),
            Value::I64(v) => args.add(*v),
            Value::Text(v) => args.add(v.as_deref()),
            Value::Bytes(v) => args.add(v.as_deref()),
            Value::Uuid(v) => args.add(*v),
            Value::Time(v) => args.add(*v),
            Value::Json(v) => args.add(Json(v.as_ref())),
        }
        .map_err(encode)?;
    }
    Ok(args)
}

/// A transaction on the sqlx writer connection; it holds the write turn until it ends. Dropped
/// without a commit (an error), it lets go of the turn at once while sqlx rolls back on the
/// connection's next use: a write that takes the turn meanwhile waits for that rollback in
/// SQLite's busy handler, which only errors cause.
pub(crate) struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    writes: Arc<Writes>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// Row locks: none on SQLite, whose one writer connection already serializes every change.
impl Tx for WriteTx {
    const ROW_LOCK: &'static str = "";
    const TASK_LOCK: &'static str = "";
    const LEASED_LOCK: &'static str = "";
    const LEASED_LOCK_SKIP: &'static str = "";
    const QUEUED_LOCK_SKIP: &'static str = "";
    const INSERT_IN_WITH: bool = false;
    const LEASE_INDEX: &'static str = " INDEXED BY task_leases_expiry";
    const START_DEADLINE_INDEX: &'static str = " INDEXED BY task_queue_start_deadline";

    async fn execute(&mut self, statement: Statement<'_>) -> Result<u64, StoreError> {
        let args = arguments(statement.values())?;
        self.writes.watch(
            sqlx::query_with(&statement.sql_for_sqlite(), args)
                .execute(&mut *self.tx)
                .await
                .map(|done| done.rows_affected())
                .map_err(StoreError::from),
        )
    }

    async fn fetch_all<R: Row>(&mut self, statement: Statement<'_>) -> Result<Vec<R>, StoreError> {
        let args = arguments(statement.values())?;
        self.writes.watch(
            sqlx::query_as_with(&statement.sql_for_sqlite(), args)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(StoreError::from),
        )
    }

    async fn fetch_optional<R: Row>(
        &mut self,
        statement: Statement<'_>,
    ) -> Result<Option<R>, StoreError> {
        let args = arguments(statement.values())?;
        self.writes.watch(
            sqlx::query_as_with(&statement.sql_for_sqlite(), args)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(StoreError::from),
        )
    }

    /// One multi-row insert per chunk; SQLite's single writer orders the events by commit.
    async fn append_events(&mut self, events: &[PendingEvent]) -> Result<(), StoreError> {
        let at = crate::now();
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut insert =
                Statement::new("INSERT INTO events (at, kind, subject, project_id, data) ");
            insert.push_values(chunk.iter().map(|event| {
                [
                    Value::from(at),
                    event.kind.into(),
                    event.subject.as_str().into(),
                    event.project_id.map(|p| p.as_uuid()).into(),
                    (&event.data).into(),
                ]
            }));
            self.execute(insert).await?;
        }
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.writes
            .watch(self.tx.commit().await.map_err(StoreError::from))?;
        self.writes.committed();
        Ok(())
    }

    async fn rollback(self) -> Result<(), StoreError> {
        Ok(self.tx.rollback().await?)
    }
}

impl StoreBackend for SqliteStore {
    type Tx = WriteTx;

    async fn begin(&self) -> Result<WriteTx, StoreError> {
        let turn = self.turn.clone().lock_owned().await;
        let tx = match self.writer.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => tx,
            // A transaction whose end failed (a full disk: SQLite rolls such a one back itself)
            // leaves sqlx counting it as open, and every later begin refused. The connection
            // is closed and the pool opens a fresh one.
            Err(sqlx::Error::InvalidSavePointStatement) => {
                tracing::warn!(
                    "the SQLite write connection was left inside a failed transaction; opening a fresh one"
                );
                self.writer.acquire().await?.close().await?;
                self.writer.begin_with("BEGIN IMMEDIATE").await?
            }
            Err(e) => return Err(e.into()),
        };
        Ok(WriteTx {
            tx,
            writes: self.writes.clone(),
            _turn: turn,
        })
    }

    async fn read_all<R: Row>(&self, statement: Statement<'_>) -> Result<Vec<R>, StoreError> {
        let args = arguments(statement.values())?;
        Ok(sqlx::query_as_with(&statement.sql_for_sqlite(), args)
            .fetch_all(&self.readers)
            .await?)
    }

    async fn read_optional<R: Row>(
        &self,
        statement: Statement<'_>,
    ) -> Result<Option<R>, StoreError> {
        let args = arguments(statement.values())?;
        Ok(sqlx::query_as_with(&statement.sql_for_sqlite(), args)
            .fetch_optional(&self.readers)
            .await?)
    }

    async fn enqueue(
        &self,
        jobs: Vec<crate::JobIntake>,
    ) -> Result<Vec<Result<Created<Job>, StoreError>>, StoreError> {
        queue::enqueue(self, jobs).await
    }

    async fn claim(&self, claim: &ClaimRequest) -> Result<Vec<ClaimedTask>, StoreError> {
        queue::claim(self, claim).await
    }

    async fn finish(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<Completed, StoreError>>, StoreError> {
        queue::finish(self, reports).await
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
        self.writes.commits()
    }

    fn write_failure(&self) -> Option<String> {
        self.writes.failure().clone()
    }

    async fn reclaim_space(&self) -> Result<(), StoreError> {
        let _turn = self.turn.lock().await;
        sqlx::query(&format!("PRAGMA incremental_vacuum({RECLAIM_PAGES})"))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn close(&self) {
        // Wait for the turn, so no transaction is cut off midway.
        let _turn = self.turn.lock().await;
        self.queue.close();
        self.writer.close().await;
        self.readers.close().await;
        self.stop.cancel();
        self.background.close();
        self.background.wait().await;
        self.checkpointer.close().await;
        // Closed: another server may have the file now.
        drop(
            self.lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
    }
}

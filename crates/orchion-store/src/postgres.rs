//! The PostgreSQL backend: a connection pool shared by any number of server replicas.
//!
//! Replicas race, so every read-modify-write locks what it reads (`FOR UPDATE`: the `*_LOCK`
//! items of [`Tx`]), a scan that takes work skips rows another replica holds (`SKIP LOCKED`),
//! and a create that loses an idempotency-key race to another replica returns the winner's
//! resource. Events take their sequence numbers from the row lock on `event_sequence`, held to
//! the commit, so they follow commit order. The work queue's hot writes are in `postgres/queue.rs`.

mod queue;

use std::{
    ops::{Deref, DerefMut},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use orchion_domain::Job;
use sqlx::{
    Arguments, PgConnection,
    postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions},
    types::Json,
};

use crate::{
    AttemptReport, Backend, ClaimRequest, ClaimedTask, Completed, Created, Heard, Listener, Signal,
    Store, StoreError,
    backend::{Row, Statement, StoreBackend, Tx, Value},
    codec::sql_int,
    error::encode,
    events::PendingEvent,
    signals::CHANNEL,
};

/// A store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    commits: Arc<AtomicU64>,
    /// Tells this store's signals apart from the other replicas'.
    sender: u64,
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
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(crate::error::migrate_error)?;
        Ok(Self {
            pool,
            commits: Default::default(),
            sender: rand::random(),
        })
    }
}

/// A statement's arguments as sqlx's PostgreSQL driver takes them (it encodes them at once).
fn arguments(values: &[Value<'_>]) -> Result<PgArguments, StoreError> {
    let mut args = PgArguments::default();
    // One allocation for a 500-row insert's 13,500 arguments, not a doubling per thousand.
    args.reserve(values.len(), values.len() * 16);
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

/// A transaction on a pooled connection. It derefs to the connection, for the statements only
/// PostgreSQL runs (`postgres/queue.rs`).
pub(crate) struct PgTx {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    commits: Arc<AtomicU64>,
}

impl Deref for PgTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for PgTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// Row locks: replicas change rows concurrently, so a row is locked before it changes, and
/// scans that take work skip rows another replica holds.
impl Tx for PgTx {
    const ROW_LOCK: &'static str = " FOR UPDATE";
    const TASK_LOCK: &'static str = " FOR UPDATE OF t";
    const LEASED_LOCK: &'static str = " FOR UPDATE OF t, l";
    const LEASED_LOCK_SKIP: &'static str = " FOR UPDATE OF t, l SKIP LOCKED";
    const QUEUED_LOCK_SKIP: &'static str = " FOR UPDATE OF t, q SKIP LOCKED";
    const INSERT_IN_WITH: bool = true;
    const LEASE_INDEX: &'static str = "";
    const START_DEADLINE_INDEX: &'static str = "";

    async fn execute(&mut self, statement: Statement<'_>) -> Result<u64, StoreError> {
        let args = arguments(statement.values())?;
        Ok(sqlx::query_with(statement.sql(), args)
            .execute(&mut *self.tx)
            .await?
            .rows_affected())
    }

    async fn fetch_all<R: Row>(&mut self, statement: Statement<'_>) -> Result<Vec<R>, StoreError> {
        let args = arguments(statement.values())?;
        Ok(sqlx::query_as_with(statement.sql(), args)
            .fetch_all(&mut *self.tx)
            .await?)
    }

    async fn fetch_optional<R: Row>(
        &mut self,
        statement: Statement<'_>,
    ) -> Result<Option<R>, StoreError> {
        let args = arguments(statement.values())?;
        Ok(sqlx::query_as_with(statement.sql(), args)
            .fetch_optional(&mut *self.tx)
            .await?)
    }

    /// One statement takes the sequence numbers and writes the events: the row lock on
    /// `event_sequence`, which orders events by commit, is held from here to the commit, so the
    /// less that follows it the better.
    async fn append_events(&mut self, events: &[PendingEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
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
        .bind(sql_int(events.len()))
        .bind(crate::now())
        .bind(kinds)
        .bind(subjects)
        .bind(projects)
        .bind(data)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn rollback(self) -> Result<(), StoreError> {
        Ok(self.tx.rollback().await?)
    }
}

impl StoreBackend for PostgresStore {
    type Tx = PgTx;

    async fn begin(&self) -> Result<PgTx, StoreError> {
        Ok(PgTx {
            tx: self.pool.begin().await?,
            commits: self.commits.clone(),
        })
    }

    async fn read_all<R: Row>(&self, statement: Statement<'_>) -> Result<Vec<R>, StoreError> {
        let args = arguments(statement.values())?;
        Ok(sqlx::query_as_with(statement.sql(), args)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn read_optional<R: Row>(
        &self,
        statement: Statement<'_>,
    ) -> Result<Option<R>, StoreError> {
        let args = arguments(statement.values())?;
        Ok(sqlx::query_as_with(statement.sql(), args)
            .fetch_optional(&self.pool)
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

    async fn signal(&self, signals: &[Signal]) -> Result<(), StoreError> {
        if signals.is_empty() {
            return Ok(());
        }
        let payloads: Vec<String> = signals.iter().map(|s| s.payload(self.sender)).collect();
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(CHANNEL)
            .bind(payloads)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn listen(&self) -> Result<Option<Box<dyn Listener>>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(Box::new(PgSignals {
            listener,
            sender: self.sender,
        })))
    }
}

/// A `LISTEN orchion` connection; it reconnects by itself after a lost connection.
struct PgSignals {
    listener: PgListener,
    /// This store's own signals are skipped.
    sender: u64,
}

#[async_trait]
impl Listener for PgSignals {
    async fn recv(&mut self) -> Result<Heard, StoreError> {
        loop {
            match self.listener.try_recv().await? {
                // The connection was lost (and is opened again on the next call).
                None => return Ok(Heard::Missed),
                Some(notification) => {
                    if let Some(signal) = Signal::parse(notification.payload(), self.sender) {
                        return Ok(Heard::Signal(signal));
                    }
                }
            }
        }
    }
}

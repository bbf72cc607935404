//! The seam between the store's flows and its two databases.
//!
//! Every flow (create a project, cancel a job, advance a run, …) is written once, as ordinary
//! generic code over [`StoreBackend`] and its transaction type [`Tx`]; `sqlite/` and `postgres/` each
//! implement these two traits, and that is where every difference between the dialects lives.
//! A flow speaks SQL both dialects run as written (SQLite accepts PostgreSQL's `$N`
//! placeholders) through a [`Statement`]: its text and its arguments as [`Value`]s, which each
//! backend binds with its own driver types. What the dialects do differently is a named item of
//! the traits — how a row read for a change is locked ([`Tx::ROW_LOCK`], [`Tx::TASK_LOCK`],
//! [`Tx::LEASED_LOCK`]), how a transaction's events take their sequence numbers
//! ([`Tx::append_events`]), and the work queue's three hot writes ([`StoreBackend::enqueue`],
//! [`StoreBackend::claim`], [`StoreBackend::finish`]), which SQLite runs on a thread of its own.
//!
//! The public store traits are implemented once for every `B: StoreBackend` (`catalog.rs`,
//! `jobs.rs`, `schedules.rs`, `workflow_types.rs`, `runs.rs`, `deliveries.rs`).

use std::{borrow::Cow, future::Future};

use orchion_domain::Job;
use sqlx::{FromRow, postgres::PgRow, sqlite::SqliteRow};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    AttemptReport, ClaimRequest, ClaimedTask, Completed, Created, StoreError, events::PendingEvent,
};

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A row type both backends decode (`#[derive(sqlx::FromRow)]` gives this, as do tuples of
/// column types both drivers know).
pub(crate) trait Row:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}

impl<T> Row for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}

/// One argument of a [`Statement`], in the column types the schema uses on both backends.
/// `None` binds a NULL of that type.
#[derive(Debug, Clone)]
pub(crate) enum Value<'a> {
    Bool(bool),
    I32(Option<i32>),
    I64(Option<i64>),
    Text(Option<Cow<'a, str>>),
    Bytes(Option<Cow<'a, [u8]>>),
    Uuid(Option<Uuid>),
    Time(Option<OffsetDateTime>),
    /// A JSON document: `jsonb` on PostgreSQL, text on SQLite.
    Json(Cow<'a, serde_json::Value>),
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<i32> for Value<'_> {
    fn from(v: i32) -> Self {
        Value::I32(Some(v))
    }
}

impl From<Option<i32>> for Value<'_> {
    fn from(v: Option<i32>) -> Self {
        Value::I32(v)
    }
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::I64(Some(v))
    }
}

impl From<Option<i64>> for Value<'_> {
    fn from(v: Option<i64>) -> Self {
        Value::I64(v)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(Some(Cow::Borrowed(v)))
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(Some(Cow::Borrowed(v)))
    }
}

impl From<String> for Value<'_> {
    fn from(v: String) -> Self {
        Value::Text(Some(Cow::Owned(v)))
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Value::Text(v.map(Cow::Borrowed))
    }
}

impl From<Option<String>> for Value<'_> {
    fn from(v: Option<String>) -> Self {
        Value::Text(v.map(Cow::Owned))
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Bytes(Some(Cow::Borrowed(v)))
    }
}

impl<'a> From<Option<&'a [u8]>> for Value<'a> {
    fn from(v: Option<&'a [u8]>) -> Self {
        Value::Bytes(v.map(Cow::Borrowed))
    }
}

impl From<Uuid> for Value<'_> {
    fn from(v: Uuid) -> Self {
        Value::Uuid(Some(v))
    }
}

impl From<Option<Uuid>> for Value<'_> {
    fn from(v: Option<Uuid>) -> Self {
        Value::Uuid(v)
    }
}

impl From<OffsetDateTime> for Value<'_> {
    fn from(v: OffsetDateTime) -> Self {
        Value::Time(Some(v))
    }
}

impl From<Option<OffsetDateTime>> for Value<'_> {
    fn from(v: Option<OffsetDateTime>) -> Self {
        Value::Time(v)
    }
}

impl<'a> From<&'a serde_json::Value> for Value<'a> {
    fn from(v: &'a serde_json::Value) -> Self {
        Value::Json(Cow::Borrowed(v))
    }
}

impl From<serde_json::Value> for Value<'_> {
    fn from(v: serde_json::Value) -> Self {
        Value::Json(Cow::Owned(v))
    }
}

/// SQL text with its arguments, for either backend. Built like sqlx's `query(…).bind(…)`, or
/// piece by piece like its `QueryBuilder` for multi-row statements; placeholders are `$N`.
///
/// The placeholders [`Statement::push_bind`] writes are remembered, so SQLite can be given
/// plain `?`s instead ([`Statement::sql_for_sqlite`]).
#[derive(Debug, Clone)]
pub(crate) struct Statement<'a> {
    sql: Cow<'a, str>,
    values: Vec<Value<'a>>,
    /// Where in `sql` the `$` of each pushed placeholder is.
    pushed: Vec<usize>,
}

impl<'a> Statement<'a> {
    /// A statement whose placeholders `$1…$N` the following [`bind`](Self::bind)s fill in order.
    pub fn new(sql: impl Into<Cow<'a, str>>) -> Self {
        Statement {
            sql: sql.into(),
            values: Vec::new(),
            pushed: Vec::new(),
        }
    }

    /// Adds the argument for the next placeholder.
    pub fn bind(mut self, value: impl Into<Value<'a>>) -> Self {
        self.values.push(value.into());
        self
    }

    /// Appends SQL text.
    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.to_mut().push_str(sql);
        self
    }

    /// Appends a placeholder for `value`.
    pub fn push_bind(&mut self, value: impl Into<Value<'a>>) -> &mut Self {
        self.values.push(value.into());
        self.pushed.push(self.sql.len());
        let sql = self.sql.to_mut();
        sql.push('$');
        // Without the formatting machinery: a 500-row insert writes 13,500 numbers.
        sql.push_str(itoa::Buffer::new().format(self.values.len()));
        self
    }

    /// Appends `$i, $j, …`, one placeholder per value.
    pub fn push_list<V: Into<Value<'a>>>(
        &mut self,
        values: impl IntoIterator<Item = V>,
    ) -> &mut Self {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_bind(value);
        }
        self
    }

    /// Appends `VALUES (…), (…)`, a tuple of placeholders per row.
    pub fn push_values<R: IntoIterator<Item = Value<'a>>>(
        &mut self,
        rows: impl IntoIterator<Item = R>,
    ) -> &mut Self {
        self.push("VALUES ");
        let rows = rows.into_iter();
        let (at_least, _) = rows.size_hint();
        self.sql.to_mut().reserve(at_least * 8);
        for (i, row) in rows.enumerate() {
            self.push(if i > 0 { ", (" } else { "(" });
            self.push_list(row);
            self.push(")");
        }
        self
    }

    /// The SQL text, placeholders `$N`.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The SQL text for SQLite: when every argument was pushed ([`Statement::push_bind`] and
    /// the builders on it), its placeholders are plain `?`s, bound in order. SQLite keeps a
    /// list of every *named* or numbered placeholder (`$N`, `?N`), and both looking a new name
    /// up in it and sqlx asking it each placeholder's name at bind time walk that list: a
    /// 500-row insert (13,500 arguments) spent hundreds of milliseconds there. Statements
    /// written with `$N` in their text keep them (they have a few).
    pub fn sql_for_sqlite(&self) -> Cow<'_, str> {
        if self.pushed.is_empty() || self.pushed.len() != self.values.len() {
            return Cow::Borrowed(&self.sql);
        }
        let mut sql = String::with_capacity(self.sql.len());
        let mut rest = 0;
        for &at in &self.pushed {
            sql.push_str(&self.sql[rest..at]);
            sql.push('?');
            let digits = self.sql[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            rest = at + 1 + digits;
        }
        sql.push_str(&self.sql[rest..]);
        Cow::Owned(sql)
    }

    /// The arguments, in placeholder order.
    pub fn values(&self) -> &[Value<'a>] {
        &self.values
    }
}

/// A write transaction on one backend. Dropped without [`commit`](Tx::commit), it rolls back.
pub(crate) trait Tx: Send {
    /// Appended to a `SELECT` that reads rows it will change: `FOR UPDATE` where replicas race
    /// (PostgreSQL), nothing where one writer already serializes every change (SQLite).
    const ROW_LOCK: &'static str;
    /// The same for a query of tasks joined with their runs (and leases): locks only the tasks.
    const TASK_LOCK: &'static str;
    /// The same for a query of leases joined with their tasks: locks both, so a lease another
    /// transaction changed or ended meanwhile is read as it is now (or not at all).
    const LEASED_LOCK: &'static str;
    /// The same, for scans that take work, skipping rows another transaction holds: of leases
    /// and their tasks, and of places in the queue and their tasks.
    const LEASED_LOCK_SKIP: &'static str;
    const QUEUED_LOCK_SKIP: &'static str;
    /// Whether a `WITH` may hold an `INSERT`, `UPDATE` or `DELETE` (PostgreSQL), so rows of
    /// several tables written together take one statement.
    const INSERT_IN_WITH: bool;
    /// After `FROM task_leases l` and `FROM task_queue q` in the reaper's scans: the indexes of
    /// their deadlines (`INDEXED BY` on SQLite, whose planner without statistics could read the
    /// whole table instead), by lease expiry and by start deadline; nothing on PostgreSQL.
    const LEASE_INDEX: &'static str;
    const START_DEADLINE_INDEX: &'static str;

    /// Runs a statement; returns how many rows it changed.
    fn execute(
        &mut self,
        statement: Statement<'_>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Runs a query; returns every row.
    fn fetch_all<R: Row>(
        &mut self,
        statement: Statement<'_>,
    ) -> impl Future<Output = Result<Vec<R>, StoreError>> + Send;

    /// Runs a query; returns its first row, if any.
    fn fetch_optional<R: Row>(
        &mut self,
        statement: Statement<'_>,
    ) -> impl Future<Output = Result<Option<R>, StoreError>> + Send;

    /// Appends events to the log, in order, with sequence numbers that follow commit order.
    /// A flow appends its events last, so the lock that orders them is held briefly.
    fn append_events(
        &mut self,
        events: &[PendingEvent],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Commits; counted in [`crate::Store::commits`].
    fn commit(self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Rolls back, ending the transaction at once.
    fn rollback(self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Runs a query that returns exactly one row.
    fn fetch_one<R: Row>(
        &mut self,
        statement: Statement<'_>,
    ) -> impl Future<Output = Result<R, StoreError>> + Send {
        async move {
            self.fetch_optional(statement)
                .await?
                .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
        }
    }

    /// Appends one event.
    fn append_event(
        &mut self,
        event: PendingEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move { self.append_events(std::slice::from_ref(&event)).await }
    }
}

/// One database: its transactions, its reads, and the work queue's hot writes.
pub(crate) trait StoreBackend: Send + Sync + 'static {
    type Tx: Tx;

    /// Starts a write transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;

    /// Runs a query outside any write transaction (SQLite: on a read-only connection, beside
    /// the writer); returns every row.
    fn read_all<R: Row>(
        &self,
        statement: Statement<'_>,
    ) -> impl Future<Output = Result<Vec<R>, StoreError>> + Send;

    /// The same, returning the first row if any.
    fn read_optional<R: Row>(
        &self,
        statement: Statement<'_>,
    ) -> impl Future<Output = Result<Option<R>, StoreError>> + Send;

    /// Enqueues jobs in one transaction (see [`crate::JobStore::create_jobs`]).
    fn enqueue(
        &self,
        jobs: Vec<crate::JobIntake>,
    ) -> impl Future<Output = Result<Vec<Result<Created<Job>, StoreError>>, StoreError>> + Send;

    /// Claims tasks for a node (see [`crate::JobStore::claim_tasks`]).
    fn claim(
        &self,
        claim: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<ClaimedTask>, StoreError>> + Send;

    /// Records how attempts ended (see [`crate::JobStore::complete_attempts`]).
    fn finish(
        &self,
        reports: Vec<AttemptReport>,
    ) -> impl Future<Output = Result<Vec<Result<Completed, StoreError>>, StoreError>> + Send;

    /// Runs a query that returns exactly one row, outside any write transaction.
    fn read_one<R: Row>(
        &self,
        statement: Statement<'_>,
    ) -> impl Future<Output = Result<R, StoreError>> + Send {
        async move {
            self.read_optional(statement)
                .await?
                .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_placeholders_are_plain_for_sqlite_and_numbered_for_postgres() {
        let mut insert = Statement::new("INSERT INTO t (a, b) ");
        insert.push_values([
            [Value::from(1i64), Value::from("x")],
            [2i64.into(), "y".into()],
        ]);
        assert_eq!(
            insert.sql(),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            insert.sql_for_sqlite(),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
        let mut list = Statement::new("SELECT 1 WHERE id IN (");
        list.push_list(0..12i64).push(")");
        assert!(
            list.sql_for_sqlite().ends_with("?, ?, ?)"),
            "{}",
            list.sql_for_sqlite()
        );
        assert!(!list.sql_for_sqlite().contains('$'));
        // Placeholders in the text stay as written: they are not all pushed.
        let mut mixed = Statement::new("UPDATE t SET a = $1 WHERE b IN (").bind(5i64);
        mixed.push_bind(6i64).push(")");
        assert_eq!(
            mixed.sql_for_sqlite(),
            "UPDATE t SET a = $1 WHERE b IN ($2)"
        );
    }
}

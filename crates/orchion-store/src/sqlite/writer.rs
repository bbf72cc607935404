//! The SQLite writer thread: one connection that runs whole transactions on a thread of its
//! own, for the work queue's hot writes (enqueue, claim, finish).
//!
//! sqlx runs each SQLite statement on its connection's thread and hands it, and every row it
//! returns, across threads; a claim or a batch of results cost a dozen hand-offs, and the
//! single writer was idle between them. Here a transaction is one closure, sent once, that runs
//! its prepared statements back to back.
//!
//! Invariant: the sqlx writer connection and this one never hold SQLite's write lock at the same
//! time. Both take their turn from one async mutex (`WriteTurn`) before `BEGIN IMMEDIATE`, so
//! neither ever waits in SQLite's busy handler, which sleeps in steps of milliseconds.

use std::{
    path::Path,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use crate::StoreError;

/// The turn to write, shared by the two writer connections.
pub(super) type WriteTurn = Arc<tokio::sync::Mutex<()>>;

type Work = Box<dyn FnOnce(&mut Connection) + Send>;

/// Runs transactions on the writer thread.
pub(super) struct Writer {
    /// Taken at close: the thread ends when its last sender is gone.
    work: Mutex<Option<mpsc::Sender<Work>>>,
    turn: WriteTurn,
    writes: Arc<super::Writes>,
}

impl Writer {
    /// Opens the database at `path` (created and migrated already) on a new thread.
    pub(super) fn open(
        path: &Path,
        turn: WriteTurn,
        writes: Arc<super::Writes>,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(database)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(database)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA wal_autocheckpoint = 0;",
        )
        .map_err(database)?;
        conn.set_prepared_statement_cache_capacity(64);
        let (work, queue) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("orchion-sqlite-writer".into())
            .spawn(move || {
                let mut conn = conn;
                while let Ok(work) = queue.recv() {
                    // A panic in one transaction (a bug) rolls it back as the stack unwinds and
                    // fails only its caller, whose reply is dropped; the writer goes on.
                    let _ =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut conn)));
                }
            })
            .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        Ok(Self {
            work: Mutex::new(Some(work)),
            turn,
            writes,
        })
    }

    /// Runs `body` in one `BEGIN IMMEDIATE` transaction on the writer thread. `body` returns its
    /// value and whether it wrote anything: a transaction that wrote is committed (and counted),
    /// one that did not is rolled back. An error rolls everything back.
    pub(super) async fn write<R, F>(&self, body: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<(R, bool), StoreError> + Send + 'static,
    {
        // The turn goes with the work and is let go on the writer thread when the transaction
        // has ended, so a caller that stops waiting cannot hand it on early.
        let turn = self.turn.clone().lock_owned().await;
        let (reply, result) = oneshot::channel();
        let writes = self.writes.clone();
        let work: Work = Box::new(move |conn| {
            let _turn = turn;
            let outcome = writes.watch((|| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let (value, wrote) = body(&tx)?;
                if wrote {
                    tx.commit().map_err(database)?;
                    writes.committed();
                } else {
                    tx.rollback().map_err(database)?;
                }
                Ok(value)
            })());
            let _ = reply.send(outcome);
        });
        let sender = self
            .work
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(closed)?;
        sender.send(work).map_err(|_| closed())?;
        // No reply: the transaction panicked (see the thread's loop).
        result
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::WorkerCrashed))?
    }

    /// Stops the thread once the work sent so far is done; later writes fail as a closed store.
    pub(super) fn close(&self) {
        self.work
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

/// A rusqlite error as the store reports database errors: a full disk, an I/O error, a busy or
/// read-only file is [`StoreError::Unavailable`] (it passes: try again), anything else
/// [`StoreError::Database`].
pub(super) fn database(error: rusqlite::Error) -> StoreError {
    let passes = matches!(
        &error,
        rusqlite::Error::SqliteFailure(e, _) if crate::error::sqlite_retryable(e.extended_code)
    );
    let error = sqlx::Error::AnyDriverError(Box::new(error));
    if passes {
        StoreError::Unavailable(error)
    } else {
        StoreError::Database(error)
    }
}

/// The error of a store that is shutting down.
fn closed() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &tempfile::TempDir) -> Writer {
        let path = dir.path().join("w.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER NOT NULL);")
            .unwrap();
        Writer::open(&path, WriteTurn::default(), Arc::default()).unwrap()
    }

    #[tokio::test]
    async fn a_transaction_that_panics_fails_alone_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let crashed = writer
            .write(|tx: &Transaction<'_>| -> Result<((), bool), StoreError> {
                tx.execute("INSERT INTO t (v) VALUES (1)", [])
                    .map_err(database)?;
                panic!("a bug in a transaction");
            })
            .await;
        assert!(
            matches!(
                crashed,
                Err(StoreError::Unavailable(sqlx::Error::WorkerCrashed))
            ),
            "{crashed:?}"
        );
        // The writer goes on, and the panicked transaction was rolled back.
        let rows = writer
            .write(|tx| {
                tx.execute("INSERT INTO t (v) VALUES (2)", [])
                    .map_err(database)?;
                let rows: Vec<i64> = tx
                    .prepare("SELECT v FROM t ORDER BY v")
                    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                    .map_err(database)?;
                Ok((rows, true))
            })
            .await
            .unwrap();
        assert_eq!(rows, vec![2]);
    }

    #[tokio::test]
    async fn a_closed_writer_refuses_new_work() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        writer.close();
        let refused = writer.write(|_| Ok(((), false))).await;
        assert!(
            matches!(
                refused,
                Err(StoreError::Unavailable(sqlx::Error::PoolClosed))
            ),
            "{refused:?}"
        );
    }
}

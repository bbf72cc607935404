//! What a store call can fail with, and how driver errors map onto it.

use orchion_domain::ProjectId;

/// What a store call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource does not exist.
    #[error("{kind} `{id}` does not exist")]
    NotFound { kind: &'static str, id: String },
    /// The idempotency key was used before with a different request.
    #[error("idempotency key `{key}` was already used with a different request body")]
    IdempotencyConflict { key: String },
    /// The database cannot be reached or refused the connection.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else the database reported.
    #[error("store error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored row does not hold a valid value (written by a newer version, or edited by hand).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The schema could not be brought up to date.
    #[error("migrating the store failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database was migrated by a newer version of Orchion than this one.
    #[error(
        "the database was migrated by a newer Orchion: its schema has migration {0}, which this \
         server does not know; upgrade this server to the version the other replicas run"
    )]
    NewerSchema(i64),
    /// The database URL cannot be used.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The database's files cannot be made or kept private to this user.
    #[error("{0}")]
    Files(String),
    /// A report for an attempt that is no longer current, or from a node that does not hold
    /// it (fencing).
    #[error("{0}")]
    Stale(String),
    /// The change does not apply in the resource's current state.
    #[error("{0}")]
    Conflict(String),
    /// The request names a resource that does not exist (a foreign key the database refused):
    /// a fault of the request's `field`, not of the resource asked for.
    #[error("{kind} `{id}` does not exist")]
    MissingReference {
        field: &'static str,
        kind: &'static str,
        id: String,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            sqlx::Error::Database(ref db) if db.code().is_some_and(|code| is_retryable(&code)) => {
                StoreError::Unavailable(error)
            }
            error => StoreError::Database(error),
        }
    }
}

/// Whether a database error code says "try again": PostgreSQL restarting, shutting down or
/// not taking connections yet (`57P01`–`57P03`), a lost connection (class `08`), too many
/// connections (`53300`), a full disk (`53100`), a serialization failure or deadlock
/// (`40001`, `40P01`); SQLite busy or locked, out of disk space, an I/O error, a file that
/// cannot be opened or written (their primary codes `5`, `6`, `13`, `10`, `14`, `8`, and
/// their extended codes).
fn is_retryable(code: &str) -> bool {
    // PostgreSQL's codes have five characters, SQLite's (even extended) at most four digits.
    if code.len() < 5 {
        return code.parse::<i32>().is_ok_and(sqlite_retryable);
    }
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "53100" | "40001" | "40P01"
        )
}

/// Whether a SQLite result code (primary or extended) names a condition that passes: busy,
/// locked, a full disk, an I/O error, a file that cannot be opened or is read-only.
pub(crate) fn sqlite_retryable(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6 | 8 | 10 | 13 | 14)
}

/// A conversion that cannot fail (a row that is already the value), for `codec::page_of`.
impl From<std::convert::Infallible> for StoreError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Whether an error is a unique-constraint violation (PostgreSQL `23505`; SQLite extended codes
/// 1555 and 2067).
pub(crate) fn is_unique_violation(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("23505" | "1555" | "2067")))
}

/// Whether an error is a foreign-key violation (PostgreSQL `23503`; SQLite extended code 787,
/// through sqlx or through the writer thread's rusqlite).
pub(crate) fn is_foreign_key_violation(error: &StoreError) -> bool {
    let StoreError::Database(error) = error else {
        return false;
    };
    match error {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("23503" | "787")),
        sqlx::Error::AnyDriverError(inner) => matches!(
            inner.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(e, _)) if e.extended_code == 787
        ),
        _ => false,
    }
}

/// `error` as a missing project when it is a foreign-key violation: the project a row
/// references (`project`, the only reference a request makes) is gone, or never was.
pub(crate) fn missing_project(error: StoreError, project: Option<ProjectId>) -> StoreError {
    match project {
        Some(project) if is_foreign_key_violation(&error) => StoreError::MissingReference {
            field: "project_id",
            kind: "project",
            id: project.to_string(),
        },
        _ => error,
    }
}

/// An argument a driver could not encode.
pub(crate) fn encode(error: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(error))
}

/// A migration's failure, naming a schema newer than this server as such.
pub(crate) fn migrate_error(error: sqlx::migrate::MigrateError) -> StoreError {
    match error {
        sqlx::migrate::MigrateError::VersionMissing(version) => StoreError::NewerSchema(version),
        error => StoreError::Migrate(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarting_or_busy_database_is_unavailable_not_an_error() {
        for code in [
            "57P01", "57P02", "57P03", "08006", "08001", "53300", "53100", "40001", "40P01", "5",
            "517", "13", "10", "266", "3338", "8",
        ] {
            assert!(is_retryable(code), "{code}");
        }
        for code in ["23505", "23503", "42P01", "22P02", "1555", "19"] {
            assert!(!is_retryable(code), "{code}");
        }
    }
}

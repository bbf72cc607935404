//! The server replicas sharing one database: who is up, and the join token they must share.
//! A [`crate::Store`] supertrait, written once for every backend.

use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    StoreError,
    backend::{Statement, StoreBackend, Tx},
    codec::micros,
};

/// The key under which the cluster's join token is kept, as a SHA-256 digest.
const JOIN_TOKEN_KEY: &str = "join_token_sha256";

/// A replica starting up.
#[derive(Debug, Clone)]
pub struct ReplicaStart<'a> {
    pub id: Uuid,
    /// For operators: host name and process id.
    pub name: &'a str,
    pub version: &'a str,
    /// The SHA-256 digest of the join token this replica was started with.
    pub join_token_digest: &'a [u8],
    pub now: OffsetDateTime,
    /// A replica whose row was written within this long is taken to be up.
    pub alive_within: Duration,
}

/// The replicas of one control plane. A supertrait of [`crate::Store`].
#[async_trait]
pub trait ReplicaStore: Send + Sync {
    /// Records a replica's start, in one transaction with the join-token check: the first
    /// replica's token becomes the cluster's; a replica with another token is refused
    /// ([`StoreError::Conflict`]) while any other replica is up, and replaces it when none is
    /// (the token was rotated with every replica stopped).
    async fn start_replica(&self, start: ReplicaStart<'_>) -> Result<(), StoreError>;

    /// Records that the replica is still up.
    async fn replica_seen(&self, id: Uuid, now: OffsetDateTime) -> Result<(), StoreError>;

    /// Removes a stopping replica.
    async fn replica_left(&self, id: Uuid) -> Result<(), StoreError>;

    /// Takes or renews the lease on duty `name` for `holder` until `now + ttl`; `true` when
    /// `holder` has it: it held it already, or nobody did, or the holder's lease expired.
    async fn hold_duty(
        &self,
        name: &str,
        holder: Uuid,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// How many replicas were seen within `alive_within` of `now`.
    async fn live_replicas(
        &self,
        now: OffsetDateTime,
        alive_within: Duration,
    ) -> Result<u64, StoreError>;
}

fn seen_since(now: OffsetDateTime, alive_within: Duration) -> i64 {
    micros(now) - i64::try_from(alive_within.as_micros()).unwrap_or(i64::MAX)
}

#[async_trait]
impl<B: StoreBackend> ReplicaStore for B {
    async fn start_replica(&self, start: ReplicaStart<'_>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // Replicas starting together take turns on the setting's row.
        tx.execute(
            Statement::new(
                "INSERT INTO cluster_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(JOIN_TOKEN_KEY)
            .bind(start.join_token_digest),
        )
        .await?;
        let (stored,): (Vec<u8>,) = tx
            .fetch_one(
                Statement::new(format!(
                    "SELECT value FROM cluster_settings WHERE key = $1{}",
                    B::Tx::ROW_LOCK
                ))
                .bind(JOIN_TOKEN_KEY),
            )
            .await?;
        if stored != start.join_token_digest {
            let (others,): (i64,) = tx
                .fetch_one(
                    Statement::new(
                        "SELECT count(*) FROM replicas WHERE id <> $1 AND seen_us >= $2",
                    )
                    .bind(start.id)
                    .bind(seen_since(start.now, start.alive_within)),
                )
                .await?;
            if others > 0 {
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "this database belongs to a cluster with another join token, and {others} \
                     of its replicas are up: start every replica with the same \
                     cluster.join_token (--join-token, ORCHION_JOIN_TOKEN); to rotate it, stop \
                     every replica first"
                )));
            }
            tx.execute(
                Statement::new("UPDATE cluster_settings SET value = $2 WHERE key = $1")
                    .bind(JOIN_TOKEN_KEY)
                    .bind(start.join_token_digest),
            )
            .await?;
        }
        tx.execute(
            Statement::new(
                "INSERT INTO replicas (id, name, version, started_at, seen_us) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET seen_us = excluded.seen_us",
            )
            .bind(start.id)
            .bind(start.name)
            .bind(start.version)
            .bind(start.now)
            .bind(micros(start.now)),
        )
        .await?;
        tx.commit().await
    }

    async fn replica_seen(&self, id: Uuid, now: OffsetDateTime) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.execute(
            Statement::new("UPDATE replicas SET seen_us = $2 WHERE id = $1")
                .bind(id)
                .bind(micros(now)),
        )
        .await?;
        tx.commit().await
    }

    async fn replica_left(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.execute(Statement::new("DELETE FROM replicas WHERE id = $1").bind(id))
            .await?;
        tx.commit().await
    }

    async fn hold_duty(
        &self,
        name: &str,
        holder: Uuid,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now_us = micros(now);
        let until = now_us + i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        let mut tx = self.begin().await?;
        // One statement: takes a free or expired duty, renews a held one, leaves another's.
        let held = tx
            .execute(
                Statement::new(
                    "INSERT INTO duties (name, holder, expires_us) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_us = excluded.expires_us \
                     WHERE duties.holder = excluded.holder OR duties.expires_us < $4",
                )
                .bind(name)
                .bind(holder)
                .bind(until)
                .bind(now_us),
            )
            .await?;
        tx.commit().await?;
        Ok(held > 0)
    }

    async fn live_replicas(
        &self,
        now: OffsetDateTime,
        alive_within: Duration,
    ) -> Result<u64, StoreError> {
        let rows: Vec<(i64,)> = self
            .read_all(
                Statement::new("SELECT count(*) FROM replicas WHERE seen_us >= $1")
                    .bind(seen_since(now, alive_within)),
            )
            .await?;
        Ok(rows
            .first()
            .map_or(0, |(n,)| u64::try_from(*n).unwrap_or(0)))
    }
}

//! This server as one replica of the control plane: it announces itself in the store when it
//! starts (refused when the database belongs to a cluster with another join token while any of
//! its replicas is up), writes that it is still up every period, and leaves at shutdown.

use std::{sync::Arc, time::Duration};

use orchion_store::{ReplicaStart, Store, StoreError};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::background::{Cause, Reconciler};

/// How many periods a replica may miss before the others take it to be gone.
const MISSED_PERIODS: u32 = 3;

/// This replica's row in the store.
pub struct Replica {
    store: Arc<dyn Store>,
    id: Uuid,
    period: Duration,
}

impl Replica {
    /// Announces this replica, started with `join_token`, as `name`; it writes that it is up
    /// every `period`.
    pub async fn start(
        store: Arc<dyn Store>,
        name: &str,
        join_token: &str,
        period: Duration,
    ) -> Result<Self, StoreError> {
        let id = Uuid::now_v7();
        let digest = Sha256::digest(join_token.as_bytes());
        store
            .start_replica(ReplicaStart {
                id,
                name,
                version: env!("CARGO_PKG_VERSION"),
                join_token_digest: &digest,
                now: orchion_store::now(),
                alive_within: period * MISSED_PERIODS,
            })
            .await?;
        Ok(Self { store, id, period })
    }

    /// How many replicas, this one included, are up.
    pub async fn live(&self) -> Result<u64, StoreError> {
        self.store
            .live_replicas(orchion_store::now(), self.period * MISSED_PERIODS)
            .await
    }
}

impl Reconciler for Replica {
    fn name(&self) -> &'static str {
        "replica"
    }

    fn period(&self) -> Duration {
        self.period
    }

    async fn reconcile(&self, _: Cause) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        self.store
            .replica_seen(self.id, orchion_store::now())
            .await?;
        Ok(0)
    }

    async fn stopped(&self) {
        if let Err(e) = self.store.replica_left(self.id).await {
            tracing::warn!(error = %e, "could not record this replica's leaving");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_with_another_join_token_is_refused_while_the_others_are_up() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("o.db").display());
        let store = orchion_store::connect(&url, 2).await.unwrap();
        let period = Duration::from_secs(5);
        let first = Replica::start(store.clone(), "a", "token-one", period)
            .await
            .unwrap();
        Replica::start(store.clone(), "b", "token-one", period)
            .await
            .unwrap();
        assert_eq!(first.live().await.unwrap(), 2);
        let refused = Replica::start(store.clone(), "c", "token-two", period).await;
        assert!(
            matches!(&refused, Err(StoreError::Conflict(m)) if m.contains("another join token")),
            "{:?}",
            refused.err()
        );
        // Every replica gone: the token may change (it was rotated).
        first.stopped().await;
        for (id,) in store_replicas(&url).await {
            store.replica_left(id).await.unwrap();
        }
        Replica::start(store.clone(), "c", "token-two", period)
            .await
            .unwrap();
    }

    async fn store_replicas(url: &str) -> Vec<(Uuid,)> {
        let pool = orchion_store::sqlx::SqlitePool::connect(url).await.unwrap();
        orchion_store::sqlx::query_as("SELECT id FROM replicas")
            .fetch_all(&pool)
            .await
            .unwrap()
    }
}

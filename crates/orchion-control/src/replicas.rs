//! This server as one replica of the control plane: it announces itself in the store when it
//! starts (refused when the database belongs to a cluster with another join token while any of
//! its replicas is up), writes that it is still up every period, and leaves at shutdown.

use std::{sync::Arc, time::Duration};

use orchion_store::{ReplicaStart, Store, StoreError};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::background::{Cause, Reconciler};

/// How many periods a replica may miss before the others take it to be gone.
pub const MISSED_PERIODS: u32 = 3;

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

    /// Duty `name`, carried out by this replica while it holds its lease (renewed every
    /// `period`, taken over by another replica a few periods after this one stops).
    pub fn duty(&self, name: &'static str, period: Duration) -> Duty {
        Duty {
            store: self.store.clone(),
            name,
            holder: self.id,
            ttl: period * MISSED_PERIODS,
        }
    }
}

/// A duty one replica at a time carries out, by a lease in the store.
pub struct Duty {
    store: Arc<dyn Store>,
    name: &'static str,
    holder: Uuid,
    ttl: Duration,
}

impl Duty {
    /// Whether this replica should carry the duty out now: it holds (or just took) its lease.
    /// A store error says no: the duty is skipped this time, not done twice.
    pub async fn held(&self) -> bool {
        match self
            .store
            .hold_duty(self.name, self.holder, orchion_store::now(), self.ttl)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(duty = self.name, error = %e, "cannot renew a duty's lease; skipping it this time");
                false
            }
        }
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
        let live = store.live_replicas(orchion_store::now(), period * MISSED_PERIODS);
        assert_eq!(live.await.unwrap(), 2);
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

    #[tokio::test]
    async fn one_replica_at_a_time_holds_a_duty_and_another_takes_it_over() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("o.db").display());
        let store = orchion_store::connect(&url, 2).await.unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let ttl = Duration::from_secs(3);
        let now = orchion_store::now();
        assert!(store.hold_duty("pass", a, now, ttl).await.unwrap());
        assert!(!store.hold_duty("pass", b, now, ttl).await.unwrap());
        assert!(
            store.hold_duty("pass", a, now, ttl).await.unwrap(),
            "renewed"
        );
        assert!(
            store.hold_duty("other", b, now, ttl).await.unwrap(),
            "duties are apart"
        );
        // `a` stopped renewing: once its lease is over, `b` takes the duty, and `a` is out.
        let later = now + Duration::from_secs(4);
        assert!(store.hold_duty("pass", b, later, ttl).await.unwrap());
        assert!(!store.hold_duty("pass", a, later, ttl).await.unwrap());
    }

    async fn store_replicas(url: &str) -> Vec<(Uuid,)> {
        let pool = orchion_store::sqlx::SqlitePool::connect(url).await.unwrap();
        orchion_store::sqlx::query_as("SELECT id FROM replicas")
            .fetch_all(&pool)
            .await
            .unwrap()
    }
}

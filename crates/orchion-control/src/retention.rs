//! Retention: what has outlived its keeping is deleted, in the background, a small batch per
//! transaction — finished runs with their tasks, attempts, logs and outputs (per project, or
//! the server's default), old events (moving the log's horizon), webhook deliveries,
//! idempotency keys, and nodes long down. With several replicas it is one replica's duty.

use std::time::Duration;

use orchion_domain::ProjectId;
use orchion_store::{Projects, Store, StoreError};
use std::sync::Arc;

use crate::background::{Cause, Reconciler};

/// How often retention looks for what expired.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Rows per transaction.
pub const BATCH: u32 = 500;

/// Batches of one kind per pass at most: a pass is bounded, and the next one goes on.
const BATCHES_PER_PASS: usize = 40;

/// The pause between two batches, so that the work queue's writes go between them.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// How long things are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Finished jobs and workflow runs, after they finish (deployments' runs are kept).
    pub finished: Duration,
    /// The finished runs of these projects, instead of `finished`.
    pub projects: Vec<(ProjectId, Duration)>,
    pub events: Duration,
    pub deliveries: Duration,
    pub idempotency_keys: Duration,
    /// Nodes down this long are forgotten.
    pub down_nodes: Duration,
}

/// Carries out a [`RetentionPolicy`].
pub struct Retention {
    store: Arc<dyn Store>,
    policy: RetentionPolicy,
    duty: Option<crate::replicas::Duty>,
}

impl Retention {
    pub fn new(store: Arc<dyn Store>, policy: RetentionPolicy) -> Self {
        Self {
            store,
            policy,
            duty: None,
        }
    }

    /// Retention becomes `duty`: carried out by one replica at a time.
    pub fn with_duty(self, duty: crate::replicas::Duty) -> Self {
        Self {
            duty: Some(duty),
            ..self
        }
    }

    /// One pass, at `now`: deletes what expired, batch by batch; returns how many rows.
    pub async fn pass(&self, now: time::OffsetDateTime) -> Result<usize, StoreError> {
        let before = |keep: Duration| now - keep;
        let policy = &self.policy;
        let mut deleted = 0;
        for (project, keep) in &policy.projects {
            let projects = Projects::Only(*project);
            deleted += batches(|| {
                self.store
                    .delete_finished_runs(&projects, before(*keep), BATCH)
            })
            .await?;
        }
        let others = Projects::Except(policy.projects.iter().map(|(p, _)| *p).collect());
        deleted += batches(|| {
            self.store
                .delete_finished_runs(&others, before(policy.finished), BATCH)
        })
        .await?;
        deleted += batches(|| self.store.delete_events(before(policy.events), BATCH)).await?;
        deleted += batches(|| {
            self.store
                .delete_deliveries(before(policy.deliveries), BATCH)
        })
        .await?;
        deleted += batches(|| {
            self.store
                .delete_idempotency_keys(before(policy.idempotency_keys), BATCH)
        })
        .await?;
        deleted += batches(|| {
            self.store
                .forget_down_nodes(before(policy.down_nodes), BATCH)
        })
        .await?;
        if deleted > 0 {
            self.store.reclaim_space().await?;
        }
        Ok(deleted)
    }
}

/// Runs `batch` while it comes back full, at most [`BATCHES_PER_PASS`] times, pausing between.
async fn batches<F, Fut>(mut batch: F) -> Result<usize, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, StoreError>>,
{
    let mut total = 0;
    for _ in 0..BATCHES_PER_PASS {
        let n = batch().await?;
        total += n;
        if n < BATCH as usize {
            break;
        }
        tokio::time::sleep(BETWEEN_BATCHES).await;
    }
    Ok(total)
}

impl Reconciler for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn period(&self) -> Duration {
        RETENTION_INTERVAL
    }

    async fn reconcile(&self, _: Cause) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        if let Some(duty) = &self.duty {
            if !duty.held().await {
                return Ok(0);
            }
        }
        let deleted = self.pass(orchion_store::now()).await?;
        if deleted > 0 {
            tracing::info!(rows = deleted, "retention deleted what expired");
        }
        Ok(deleted)
    }
}

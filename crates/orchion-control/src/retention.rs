//! Retention: what has outlived its keeping is deleted, in the background, a small batch per
//! transaction — finished runs with their tasks, attempts, logs and outputs (per project, or
//! the server's default), old events (moving the log's horizon), webhook deliveries,
//! idempotency keys, audit entries, and nodes long down. With several replicas it is one
//! replica's duty.
//! A pass is bounded; one that ends with more expired than it could delete wakes the next at
//! once, so retention keeps up with any rate the store can carry instead of once a minute.

use std::time::Duration;

use orchion_domain::ProjectId;
use orchion_store::{Projects, Store, StoreError};
use std::sync::Arc;

use tokio::sync::Notify;

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
    pub audit: Duration,
    /// Nodes down this long are forgotten.
    pub down_nodes: Duration,
}

/// Carries out a [`RetentionPolicy`].
pub struct Retention {
    store: Arc<dyn Store>,
    policy: RetentionPolicy,
    duty: Option<crate::replicas::Duty>,
    /// Notified when a pass stopped with more left to delete.
    behind: Notify,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    pub deleted: usize,
    /// Some kind still had full batches left when the pass stopped at its bound.
    pub behind: bool,
}

impl std::ops::AddAssign for Pass {
    fn add_assign(&mut self, other: Pass) {
        self.deleted += other.deleted;
        self.behind |= other.behind;
    }
}

impl Retention {
    pub fn new(store: Arc<dyn Store>, policy: RetentionPolicy) -> Self {
        Self {
            store,
            policy,
            duty: None,
            behind: Notify::new(),
        }
    }

    /// Retention becomes `duty`: carried out by one replica at a time.
    pub fn with_duty(self, duty: crate::replicas::Duty) -> Self {
        Self {
            duty: Some(duty),
            ..self
        }
    }

    /// One pass, at `now`: deletes what expired, batch by batch.
    pub async fn pass(&self, now: time::OffsetDateTime) -> Result<Pass, StoreError> {
        let before = |keep: Duration| now - keep;
        let policy = &self.policy;
        let mut deleted = Pass::default();
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
        deleted += batches(|| self.store.delete_audit(before(policy.audit), BATCH)).await?;
        deleted += batches(|| {
            self.store
                .forget_down_nodes(before(policy.down_nodes), BATCH)
        })
        .await?;
        if deleted.deleted > 0 {
            self.store.reclaim_space().await?;
        }
        Ok(deleted)
    }
}

/// Runs `batch` while it comes back full, at most [`BATCHES_PER_PASS`] times, pausing between;
/// `behind` when the last one still came back full.
async fn batches<F, Fut>(mut batch: F) -> Result<Pass, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, StoreError>>,
{
    let mut pass = Pass::default();
    for _ in 0..BATCHES_PER_PASS {
        let n = batch().await?;
        pass.deleted += n;
        if n < BATCH as usize {
            return Ok(pass);
        }
        tokio::time::sleep(BETWEEN_BATCHES).await;
    }
    pass.behind = true;
    Ok(pass)
}

impl Reconciler for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn period(&self) -> Duration {
        RETENTION_INTERVAL
    }

    fn wake(&self) -> Option<&Notify> {
        Some(&self.behind)
    }

    async fn reconcile(&self, _: Cause) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        if let Some(duty) = &self.duty {
            if !duty.held().await {
                return Ok(0);
            }
        }
        let pass = self.pass(orchion_store::now()).await?;
        if pass.deleted > 0 {
            tracing::info!(
                rows = pass.deleted,
                behind = pass.behind,
                "retention deleted what expired"
            );
        }
        if pass.behind {
            self.behind.notify_one();
        }
        Ok(pass.deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch source with `left` rows expired, deleting up to [`BATCH`] per call.
    fn source(left: usize) -> impl FnMut() -> std::future::Ready<Result<usize, StoreError>> {
        let mut left = left;
        move || {
            let n = left.min(BATCH as usize);
            left -= n;
            std::future::ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn a_pass_is_bounded_and_says_when_more_is_left() {
        let bound = BATCH as usize * BATCHES_PER_PASS;
        let short = batches(source(1_234)).await.unwrap();
        assert_eq!(
            short,
            Pass {
                deleted: 1_234,
                behind: false
            }
        );
        // Exactly the bound: the last batch was full, so the pass cannot know it is done.
        let exact = batches(source(bound)).await.unwrap();
        assert_eq!(
            exact,
            Pass {
                deleted: bound,
                behind: true
            }
        );
        let mut more = source(bound + 7);
        let first = batches(&mut more).await.unwrap();
        assert_eq!(
            first,
            Pass {
                deleted: bound,
                behind: true
            }
        );
        let next = batches(&mut more).await.unwrap();
        assert_eq!(
            next,
            Pass {
                deleted: 7,
                behind: false
            }
        );
    }
}

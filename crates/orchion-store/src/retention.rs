//! What is kept, and for how long: the [`RetentionStore`] half of the store. Each call deletes
//! one small batch of what has expired, in one transaction, so a retention pass never holds
//! the writer long; the caller repeats while a batch comes back full.
//!
//! Finished runs (jobs and workflow runs) go with everything that hangs off them — tasks,
//! attempts, log lines, outputs, workflow state — by the foreign keys' `ON DELETE CASCADE`. A
//! deployment's run is kept: it records what is deployed. The event log loses its oldest
//! events, and remembers up to which sequence number it did (its horizon), so a client asking
//! to resume from before it is told so instead of seeing a silent gap. The audit log loses its
//! oldest entries but never its newest.

use async_trait::async_trait;
use orchion_domain::ProjectId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    StoreError,
    backend::{Statement, StoreBackend, Tx, Value},
    events::PendingEvent,
};

/// Which projects' runs a deletion covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projects {
    /// This project's.
    Only(ProjectId),
    /// Every project's (and those of no project) but these, which have their own retention.
    Except(Vec<ProjectId>),
}

/// What is kept, and for how long. A supertrait of [`crate::Store`].
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Deletes up to `limit` runs of `projects` that were created and finished before
    /// `before`, with everything that hangs off them; returns how many. Deployments' runs are
    /// kept.
    async fn delete_finished_runs(
        &self,
        projects: &Projects,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, StoreError>;

    /// Deletes up to `limit` of the oldest events appended before `before`, and moves the
    /// log's horizon past them; returns how many.
    async fn delete_events(&self, before: OffsetDateTime, limit: u32) -> Result<usize, StoreError>;

    /// The highest sequence number retention has deleted (0 when none): the log holds no
    /// event at or below it.
    async fn events_horizon(&self) -> Result<i64, StoreError>;

    /// Deletes up to `limit` webhook deliveries received before `before`.
    async fn delete_deliveries(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, StoreError>;

    /// Deletes up to `limit` idempotency keys used before `before`: the same key again then
    /// makes a new resource.
    async fn delete_idempotency_keys(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, StoreError>;

    /// Deletes up to `limit` of the oldest audit entries recorded before `before`; the newest
    /// entry is always kept, so sequence numbers keep growing and are never given twice.
    async fn delete_audit(&self, before: OffsetDateTime, limit: u32) -> Result<usize, StoreError>;

    /// Forgets up to `limit` nodes that are down and were last heard before `before`.
    async fn forget_down_nodes(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, StoreError>;
}

/// The smallest UUIDv7 of the millisecond `at`: every id made before `at` is below it.
fn first_id_at(at: OffsetDateTime) -> Uuid {
    let millis = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// The `cluster_settings` key of the event log's horizon.
const EVENTS_HORIZON: &str = "events_horizon";

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[async_trait]
impl<B: StoreBackend> RetentionStore for B {
    async fn delete_finished_runs(
        &self,
        projects: &Projects,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, StoreError> {
        let mut select = Statement::new(
            "SELECT r.id FROM runs r WHERE r.id < $1 \
             AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.run_id = r.id AND (t.finished_at IS NULL OR t.finished_at >= $2)) \
             AND NOT EXISTS (SELECT 1 FROM workflow_runs w WHERE w.run_id = r.id AND (w.finished_at IS NULL OR w.finished_at >= $2)) \
             AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.run_id = r.id) ",
        )
        .bind(first_id_at(before))
        .bind(before);
        match projects {
            Projects::Only(project) => {
                select.push("AND r.project_id = ");
                select.push_bind(project.as_uuid());
            }
            Projects::Except(others) if !others.is_empty() => {
                select.push("AND (r.project_id IS NULL OR r.project_id NOT IN (");
                select.push_list(others.iter().map(|p| Value::from(p.as_uuid())));
                select.push("))");
            }
            Projects::Except(_) => {}
        }
        select.push(" ORDER BY r.id LIMIT ");
        select.push_bind(i64::from(limit));
        let mut tx = self.begin().await?;
        let ids: Vec<(Uuid,)> = tx.fetch_all(select).await?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut delete = Statement::new("DELETE FROM runs WHERE id IN (");
        delete.push_list(ids.iter().map(|(id,)| Value::from(*id)));
        delete.push(")");
        let deleted = tx.execute(delete).await?;
        tx.append_event(PendingEvent::retention_deleted("runs", deleted, before))
            .await?;
        tx.commit().await?;
        Ok(count(deleted))
    }

    async fn delete_events(&self, before: OffsetDateTime, limit: u32) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let through: Option<(Option<i64>,)> = tx
            .fetch_optional(
                Statement::new(
                    "SELECT max(seq) FROM (SELECT seq, at FROM events ORDER BY seq LIMIT $2) oldest WHERE at < $1",
                )
                .bind(before)
                .bind(i64::from(limit)),
            )
            .await?;
        let Some((Some(through),)) = through else {
            tx.rollback().await?;
            return Ok(0);
        };
        let deleted = tx
            .execute(Statement::new("DELETE FROM events WHERE seq <= $1").bind(through))
            .await?;
        tx.execute(
            Statement::new(
                "INSERT INTO cluster_settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(EVENTS_HORIZON)
            .bind(through.to_be_bytes().as_slice()),
        )
        .await?;
        tx.commit().await?;
        Ok(count(deleted))
    }

    async fn events_horizon(&self) -> Result<i64, StoreError> {
        let row: Option<(Vec<u8>,)> = self
            .read_optional(
                Statement::new("SELECT value FROM cluster_settings WHERE key = $1")
                    .bind(EVENTS_HORIZON),
            )
            .await?;
        row.map_or(Ok(0), |(value,)| {
            <[u8; 8]>::try_from(value.as_slice())
                .map(i64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt(format!("events horizon {value:?}")))
        })
    }

    async fn delete_deliveries(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let deleted = tx
            .execute(
                Statement::new(
                    "DELETE FROM webhook_deliveries WHERE seq IN \
                     (SELECT seq FROM webhook_deliveries WHERE seq < $1 ORDER BY seq LIMIT $2)",
                )
                .bind(first_id_at(before))
                .bind(i64::from(limit)),
            )
            .await?;
        if deleted > 0 {
            tx.append_event(PendingEvent::retention_deleted(
                "webhook_deliveries",
                deleted,
                before,
            ))
            .await?;
        }
        tx.commit().await?;
        Ok(count(deleted))
    }

    async fn delete_idempotency_keys(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let deleted = tx
            .execute(
                Statement::new(
                    "DELETE FROM idempotency_keys WHERE (scope, key) IN \
                     (SELECT scope, key FROM idempotency_keys WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
                )
                .bind(before)
                .bind(i64::from(limit)),
            )
            .await?;
        tx.commit().await?;
        Ok(count(deleted))
    }

    async fn delete_audit(&self, before: OffsetDateTime, limit: u32) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        // The scan runs from the oldest entry and stops at the first `limit` expired: entries
        // are appended in time order, so the expired ones are at the front.
        let deleted = tx
            .execute(
                Statement::new(
                    "DELETE FROM audit WHERE seq IN (SELECT seq FROM audit WHERE at_us < $1 \
                     AND seq < (SELECT max(seq) FROM audit) ORDER BY seq LIMIT $2)",
                )
                .bind(crate::codec::micros(before))
                .bind(i64::from(limit)),
            )
            .await?;
        tx.commit().await?;
        Ok(count(deleted))
    }

    async fn forget_down_nodes(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let deleted = tx
            .execute(
                Statement::new(
                    "DELETE FROM nodes WHERE id IN (SELECT id FROM nodes WHERE status = 'down' \
                     AND last_heartbeat_at < $1 ORDER BY id LIMIT $2)",
                )
                .bind(before)
                .bind(i64::from(limit)),
            )
            .await?;
        if deleted > 0 {
            tx.append_event(PendingEvent::retention_deleted("nodes", deleted, before))
                .await?;
        }
        tx.commit().await?;
        Ok(count(deleted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_a_moment_is_above_every_earlier_id_and_below_every_later_one() {
        let at = crate::now();
        let first = first_id_at(at);
        assert_eq!(first.get_version_num(), 7);
        let earlier = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(at.unix_timestamp()).unwrap() - 1,
            0,
        ));
        let later = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(at.unix_timestamp()).unwrap() + 1,
            0,
        ));
        assert!(earlier < first && first < later);
    }
}

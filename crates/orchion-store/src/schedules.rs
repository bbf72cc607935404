//! Cron schedules: the [`ScheduleStore`] half of the store, written once for every backend.
//!
//! A schedule moves on only by compare-and-set ([`ScheduleStore::advance_schedule`]), so two
//! replicas firing it at once move it once.

use async_trait::async_trait;
use orchion_domain::{CronSchedule, Page, PageRequest, ProjectId, RunId, Schedule, ScheduleId};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    StoreError,
    backend::{Statement, StoreBackend, Tx},
    codec::{from_micros, job_from_json, job_json, micros, page_limit, page_of},
    events::{PendingEvent, kind},
};

/// Cron schedules. A supertrait of [`crate::Store`].
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Stores a new schedule.
    async fn create_schedule(&self, schedule: &Schedule) -> Result<(), StoreError>;

    /// A schedule.
    async fn get_schedule(&self, id: ScheduleId) -> Result<Schedule, StoreError>;

    /// Schedules (of one project, when given) in id (creation) order.
    async fn list_schedules(
        &self,
        project: Option<ProjectId>,
        page: PageRequest,
    ) -> Result<Page<Schedule>, StoreError>;

    /// Removes a schedule; runs it started are kept.
    async fn delete_schedule(&self, id: ScheduleId) -> Result<(), StoreError>;

    /// Schedules due by `now`, earliest first.
    async fn due_schedules(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Schedule>, StoreError>;

    /// Moves a schedule on to `next`, if it is still due at `expected_next` (so two replicas
    /// cannot both move it), recording the run `fired` started. Returns whether it moved.
    async fn advance_schedule(
        &self,
        id: ScheduleId,
        expected_next: Option<OffsetDateTime>,
        next: Option<OffsetDateTime>,
        fired: Option<(OffsetDateTime, RunId)>,
    ) -> Result<bool, StoreError>;
}

const SCHEDULE_COLUMNS: &str = "id, name, cron, timezone, overlap, misfire, job, next_fire_us, last_fire_us, last_run_id, created_at";

fn schedule_not_found(id: ScheduleId) -> StoreError {
    StoreError::NotFound {
        kind: "schedule",
        id: id.to_string(),
    }
}

#[async_trait]
impl<B: StoreBackend> ScheduleStore for B {
    async fn create_schedule(&self, schedule: &Schedule) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.execute(
            Statement::new(
                "INSERT INTO schedules (id, name, cron, timezone, overlap, misfire, job, next_fire_us, created_at, project_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(schedule.id.as_uuid())
            .bind(schedule.name.as_str())
            .bind(schedule.cron.expression())
            .bind(schedule.cron.timezone())
            .bind(schedule.overlap.as_str())
            .bind(schedule.misfire.as_str())
            .bind(job_json(&schedule.job))
            .bind(schedule.next_fire_at.map(micros))
            .bind(schedule.created_at)
            .bind(schedule.job.project_id.map(|p| p.as_uuid())),
        )
        .await?;
        tx.append_event(PendingEvent {
            kind: kind::SCHEDULE_CREATED,
            subject: schedule.id.to_string(),
            project_id: schedule.job.project_id,
            data: serde_json::json!({ "name": schedule.name, "cron": schedule.cron.expression() }),
        })
        .await?;
        tx.commit().await
    }

    async fn get_schedule(&self, id: ScheduleId) -> Result<Schedule, StoreError> {
        self.read_optional::<ScheduleRow>(
            Statement::new(format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1"
            ))
            .bind(id.as_uuid()),
        )
        .await?
        .ok_or_else(|| schedule_not_found(id))?
        .try_into()
    }

    async fn list_schedules(
        &self,
        project: Option<ProjectId>,
        page: PageRequest,
    ) -> Result<Page<Schedule>, StoreError> {
        let rows: Vec<ScheduleRow> = self
            .read_all(
                Statement::new(format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE ($1 IS NULL OR id > $1) \
                     AND ($3 IS NULL OR project_id = $3) ORDER BY id LIMIT $2"
                ))
                .bind(page.after.map(|c| c.0))
                .bind(page_limit(page))
                .bind(project.map(|p| p.as_uuid())),
            )
            .await?;
        page_of(rows, page, |s: &Schedule| s.id.as_uuid())
    }

    async fn delete_schedule(&self, id: ScheduleId) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let deleted = tx
            .execute(Statement::new("DELETE FROM schedules WHERE id = $1").bind(id.as_uuid()))
            .await?;
        if deleted == 0 {
            return Err(schedule_not_found(id));
        }
        tx.append_event(PendingEvent {
            kind: kind::SCHEDULE_DELETED,
            subject: id.to_string(),
            project_id: None,
            data: serde_json::json!({}),
        })
        .await?;
        tx.commit().await
    }

    async fn due_schedules(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Schedule>, StoreError> {
        self.read_all::<ScheduleRow>(
            Statement::new(format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE next_fire_us IS NOT NULL AND next_fire_us <= $1 \
                 ORDER BY next_fire_us LIMIT $2"
            ))
            .bind(micros(now))
            .bind(i64::from(limit)),
        )
        .await?
        .into_iter()
        .map(Schedule::try_from)
        .collect()
    }

    async fn advance_schedule(
        &self,
        id: ScheduleId,
        expected_next: Option<OffsetDateTime>,
        next: Option<OffsetDateTime>,
        fired: Option<(OffsetDateTime, RunId)>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let moved = tx
            .execute(
                Statement::new(
                    "UPDATE schedules SET next_fire_us = $3, \
                     last_fire_us = COALESCE($4, last_fire_us), last_run_id = COALESCE($5, last_run_id) \
                     WHERE id = $1 AND next_fire_us = $2",
                )
                .bind(id.as_uuid())
                .bind(expected_next.map(micros))
                .bind(next.map(micros))
                .bind(fired.map(|(at, _)| micros(at)))
                .bind(fired.map(|(_, run)| run.as_uuid())),
            )
            .await?;
        tx.commit().await?;
        Ok(moved == 1)
    }
}

#[derive(Debug, sqlx::FromRow)]
struct ScheduleRow {
    id: Uuid,
    name: String,
    cron: String,
    timezone: String,
    overlap: String,
    misfire: String,
    job: String,
    next_fire_us: Option<i64>,
    last_fire_us: Option<i64>,
    last_run_id: Option<Uuid>,
    created_at: OffsetDateTime,
}

impl TryFrom<ScheduleRow> for Schedule {
    type Error = StoreError;

    fn try_from(row: ScheduleRow) -> Result<Self, StoreError> {
        Ok(Schedule {
            id: ScheduleId::from_uuid(row.id),
            cron: CronSchedule::parse(&row.cron, &row.timezone)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            overlap: row.overlap.parse().map_err(StoreError::Corrupt)?,
            misfire: row.misfire.parse().map_err(StoreError::Corrupt)?,
            job: job_from_json(&row.job)?,
            name: row.name,
            next_fire_at: row.next_fire_us.map(from_micros),
            last_fire_at: row.last_fire_us.map(from_micros),
            last_run_id: row.last_run_id.map(RunId::from_uuid),
            created_at: row.created_at,
        })
    }
}

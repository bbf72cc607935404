//! The scheduler: fires due cron schedules as jobs.
//!
//! Safe to run on every replica at once: each firing's job has the idempotency key
//! `schedule:<id>:<instant>`, so however many passes (or replicas, or restarts after a crash
//! between creating the job and moving the schedule on) see an instant, one job exists for it;
//! and the schedule moves on with a compare-and-set on its due instant.

use std::{sync::Arc, time::Duration};

use orchion_domain::{NewJob, OverlapPolicy, ProjectId, RunId, Schedule};
use orchion_store::{IdempotencyKey, Store, StoreError};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::WorkQueue;
use crate::background::{Cause, Reconciler};

/// How often due schedules are looked for (cron has second precision).
pub const TICK: Duration = Duration::from_secs(1);
/// Schedules handled per pass.
const BATCH: u32 = 500;

/// Fires cron schedules.
pub struct Scheduler {
    store: Arc<dyn Store>,
    work: Arc<WorkQueue>,
    wake: Notify,
}

impl Scheduler {
    pub fn new(store: Arc<dyn Store>, work: Arc<WorkQueue>) -> Self {
        Self {
            store,
            work,
            wake: Notify::new(),
        }
    }

    /// Stores a new schedule and wakes the scheduler, so a schedule due soon is not missed.
    pub async fn create(&self, schedule: &Schedule) -> Result<(), StoreError> {
        self.store.create_schedule(schedule).await?;
        self.schedules_changed();
        Ok(())
    }

    /// A schedule was created: look again now, here and on the other replicas.
    pub fn schedules_changed(&self) {
        self.wake.notify_one();
        self.work.tell_others(orchion_store::Signal::Schedules);
    }

    /// Another replica changed the schedules: look again now.
    pub fn heard(&self) {
        self.wake.notify_one();
    }

    /// The idempotency key of the run for `schedule` at `instant`.
    pub fn run_key(schedule: &Schedule, instant: OffsetDateTime) -> String {
        format!("schedule:{}:{}", schedule.id, instant.unix_timestamp())
    }

    /// One pass at `now`: fires every due schedule once. Returns the runs started.
    pub async fn tick(&self, now: OffsetDateTime) -> Result<Vec<RunId>, StoreError> {
        let mut started = Vec::new();
        for schedule in self.store.due_schedules(now, BATCH).await? {
            let Some(due) = schedule.next_fire_at else {
                continue;
            };
            let firing = schedule.cron.firing(due, now, schedule.misfire);
            let mut fired = None;
            if let Some(instant) = firing.fire {
                if self.may_start(&schedule).await? {
                    let key = IdempotencyKey {
                        key: Self::run_key(&schedule, instant),
                        request_hash: b"schedule".to_vec(),
                    };
                    // A schedule made before projects were enforced fires in the default one.
                    let job = NewJob {
                        project_id: schedule.job.project_id.or(Some(ProjectId::DEFAULT)),
                        ..schedule.job.clone()
                    };
                    let created = self.work.enqueue(job, Some(key)).await?;
                    if created.created {
                        started.push(created.value.id);
                        tracing::info!(schedule_id = %schedule.id, job_id = %created.value.id, %instant, "schedule fired");
                    }
                    fired = Some((instant, created.value.id));
                } else {
                    tracing::info!(schedule_id = %schedule.id, %instant, "schedule skipped: its previous run is still going");
                }
            }
            self.store
                .advance_schedule(schedule.id, Some(due), firing.next, fired)
                .await?;
        }
        Ok(started)
    }

    /// Whether the overlap policy lets a new run start.
    async fn may_start(&self, schedule: &Schedule) -> Result<bool, StoreError> {
        match (schedule.overlap, schedule.last_run_id) {
            (OverlapPolicy::Skip, Some(previous)) => match self.store.get_job(previous).await {
                Ok(job) => Ok(job.state.status.is_terminal()),
                Err(StoreError::NotFound { .. }) => Ok(true),
                Err(e) => Err(e),
            },
            _ => Ok(true),
        }
    }
}

/// Fires due schedules every [`TICK`], and at once when a schedule is created.
impl Reconciler for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn period(&self) -> Duration {
        TICK
    }

    fn wake(&self) -> Option<&Notify> {
        Some(&self.wake)
    }

    async fn reconcile(&self, _: Cause) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.tick(orchion_store::now()).await?.len())
    }
}

#[cfg(test)]
mod tests {
    use orchion_domain::{CronSchedule, MisfirePolicy, NewJob, ScheduleId};

    use super::*;
    use crate::{NodeRegistry, RegistrySettings};

    async fn scheduler(dir: &tempfile::TempDir) -> (Arc<dyn Store>, Scheduler) {
        let url = format!("sqlite:{}", dir.path().join("s.db").display());
        let store = orchion_store::connect(&url, 2).await.unwrap();
        let nodes = Arc::new(
            NodeRegistry::load(store.clone(), RegistrySettings::default())
                .await
                .unwrap(),
        );
        let work = Arc::new(WorkQueue::new(store.clone(), nodes));
        (store.clone(), Scheduler::new(store, work))
    }

    fn schedule(
        cron: &str,
        due: OffsetDateTime,
        overlap: OverlapPolicy,
        misfire: MisfirePolicy,
    ) -> Schedule {
        Schedule {
            id: ScheduleId::new(),
            name: "s".into(),
            cron: CronSchedule::parse(cron, "UTC").unwrap(),
            overlap,
            misfire,
            job: NewJob {
                name: "tick".into(),
                project_id: None,
                executor: "shell".into(),
                spec: r#"{"command":"true"}"#.into(),
                priority: 0,
                retry: Default::default(),
                timeouts: Default::default(),
                placement: Default::default(),
                concurrency: None,
                run_at: None,
                trace_parent: None,
            },
            next_fire_at: Some(due),
            last_fire_at: None,
            last_run_id: None,
            created_at: due,
        }
    }

    fn minute(now: OffsetDateTime) -> OffsetDateTime {
        now.replace_second(0)
            .unwrap()
            .replace_nanosecond(0)
            .unwrap()
    }

    #[tokio::test]
    async fn an_instant_fires_once_however_many_passes_see_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, scheduler) = scheduler(&dir).await;
        let due = minute(orchion_store::now());
        let s = schedule(
            "* * * * *",
            due,
            OverlapPolicy::Allow,
            MisfirePolicy::FireOnce,
        );
        store.create_schedule(&s).await.unwrap();
        let now = due + time::Duration::seconds(1);
        let first = scheduler.tick(now).await.unwrap();
        assert_eq!(first.len(), 1);
        assert!(
            scheduler.tick(now).await.unwrap().is_empty(),
            "not due again"
        );
        let moved = store.get_schedule(s.id).await.unwrap();
        assert_eq!(moved.next_fire_at, Some(due + time::Duration::minutes(1)));
        assert_eq!(moved.last_run_id, Some(first[0]));

        // A second scheduler (another replica) that read the schedule before it moved, and a
        // retry after a crash between creating the job and moving the schedule, both find the
        // instant's job already there.
        store
            .advance_schedule(s.id, moved.next_fire_at, Some(due), None)
            .await
            .unwrap();
        let other = Scheduler::new(store.clone(), scheduler.work.clone());
        assert!(other.tick(now).await.unwrap().is_empty());
        let jobs = store
            .list_jobs(&Default::default(), Default::default())
            .await
            .unwrap();
        assert_eq!(jobs.items.len(), 1);
    }

    #[tokio::test]
    async fn a_running_previous_job_skips_the_instant_when_overlap_is_skip() {
        let dir = tempfile::tempdir().unwrap();
        let (store, scheduler) = scheduler(&dir).await;
        let due = minute(orchion_store::now());
        let s = schedule(
            "* * * * *",
            due,
            OverlapPolicy::Skip,
            MisfirePolicy::FireOnce,
        );
        store.create_schedule(&s).await.unwrap();
        assert_eq!(scheduler.tick(due).await.unwrap().len(), 1);
        // The first job is still queued at the next instant: skipped, but the schedule moves on.
        let next = due + time::Duration::minutes(1);
        assert!(scheduler.tick(next).await.unwrap().is_empty());
        assert_eq!(
            store.get_schedule(s.id).await.unwrap().next_fire_at,
            Some(next + time::Duration::minutes(1))
        );
        // Once it ends, the following instant fires.
        let first = store.get_schedule(s.id).await.unwrap().last_run_id.unwrap();
        store.cancel_job(first).await.unwrap();
        assert_eq!(
            scheduler
                .tick(next + time::Duration::minutes(1))
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn missed_instants_fire_once_or_not_at_all() {
        use time::macros::datetime;
        let dir = tempfile::tempdir().unwrap();
        let (store, scheduler) = scheduler(&dir).await;
        // Hourly, and no server ran from 01:00 until 03:30.
        let due = datetime!(2026-01-10 01:00 UTC);
        let once = schedule(
            "0 * * * *",
            due,
            OverlapPolicy::Allow,
            MisfirePolicy::FireOnce,
        );
        let skip = schedule("0 * * * *", due, OverlapPolicy::Allow, MisfirePolicy::Skip);
        store.create_schedule(&once).await.unwrap();
        store.create_schedule(&skip).await.unwrap();
        let started = scheduler
            .tick(datetime!(2026-01-10 03:30 UTC))
            .await
            .unwrap();
        assert_eq!(
            started.len(),
            1,
            "one run for fire_once, none for skip (03:00 is 30 minutes late)"
        );
        assert_eq!(
            store.get_schedule(once.id).await.unwrap().last_fire_at,
            Some(datetime!(2026-01-10 03:00 UTC))
        );
        for s in [&once, &skip] {
            let moved = store.get_schedule(s.id).await.unwrap();
            assert_eq!(moved.next_fire_at, Some(datetime!(2026-01-10 04:00 UTC)));
        }
    }
}

//! Jobs in the store: enqueue, claim under a lease, extend, complete (fenced), expire, cancel,
//! retry, and logs.
//!
//! The logic is written once, in [`impl_job_store!`], and expanded inside each backend's
//! `impl Store`: the two backends run the same statements and differ only in what each module
//! defines for the macro to call — `begin`/`commit`, the read pool, `append_event`, and how a
//! task row is locked for a change (`TASK_LOCK`). The three hot writes (enqueue, claim, finish)
//! are each backend's own (`postgres/queue.rs`, `sqlite/queue.rs`); the decisions in them are
//! the pure functions here.
//!
//! Invariants: a task changes status only through `TaskState::next`; an attempt's result, lease
//! extension or log line is accepted only from the node holding that attempt's lease, and only
//! while the task is running that attempt (fencing), so a task completes once.

use std::collections::{BTreeMap, HashMap};

use orchion_domain::{
    Attempt, AttemptStatus, Capacity, Concurrency, Job, Labels, NodeId, Placement, RetryPolicy,
    RunId, TaskId, TaskState, TaskStatus, Timeouts,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

/// The longest output kept for a task; longer output is cut and marked.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// The most log text kept per task; past it one marker line is kept and the rest dropped.
pub const MAX_LOG_BYTES: i64 = 16 * 1024 * 1024;
/// The marker that ends truncated output.
pub const TRUNCATED: &str = "\n[… truncated by orchion]";

pub(crate) const TASK_COLUMNS: &str = "t.id, t.run_id, r.name, r.project_id, t.status, t.executor, t.spec, t.priority, t.labels, \
     t.cpu_millis, t.memory_bytes, t.gpus, t.concurrency_key, t.concurrency_limit, t.retry, \
     t.schedule_to_start_ms, t.start_to_close_ms, t.heartbeat_ms, t.attempts, t.attempt_budget, \
     t.cancel_requested, t.run_after_us, t.enqueued_us, t.node_id, t.lease_expires_us, t.output, t.error, \
     t.exit_code, t.log_bytes, t.log_seq, t.created_at, t.started_at, t.finished_at, t.outputs, r.kind, t.step, t.traceparent";

/// Microseconds since the Unix epoch.
pub(crate) fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

pub(crate) fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn ms_duration(ms: i64) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A retry policy as stored (JSON).
pub(crate) fn retry_json(policy: &RetryPolicy) -> serde_json::Value {
    serde_json::json!({
        "max_attempts": policy.max_attempts,
        "initial_interval_ms": duration_ms(policy.initial_interval),
        "max_interval_ms": duration_ms(policy.max_interval),
        "backoff_coefficient": policy.backoff_coefficient,
        "jitter": policy.jitter,
        "non_retryable_exit_codes": policy.non_retryable_exit_codes,
    })
}

fn retry_from_json(value: &serde_json::Value) -> Result<RetryPolicy, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("retry policy {value}"));
    let int = |key: &str| value[key].as_i64().ok_or_else(corrupt);
    Ok(RetryPolicy {
        max_attempts: u32::try_from(int("max_attempts")?).map_err(|_| corrupt())?,
        initial_interval: ms_duration(int("initial_interval_ms")?),
        max_interval: ms_duration(int("max_interval_ms")?),
        backoff_coefficient: value["backoff_coefficient"].as_f64().ok_or_else(corrupt)?,
        jitter: value["jitter"].as_f64().ok_or_else(corrupt)?,
        non_retryable_exit_codes: value["non_retryable_exit_codes"]
            .as_array()
            .ok_or_else(corrupt)?
            .iter()
            .filter_map(|c| c.as_i64().and_then(|c| i32::try_from(c).ok()))
            .collect(),
    })
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub(TRUNCATED.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(TRUNCATED);
    text
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct TaskRow {
    pub id: Uuid,
    pub run_id: Uuid,
    pub name: String,
    pub project_id: Option<Uuid>,
    pub status: String,
    pub executor: String,
    pub spec: String,
    pub priority: i32,
    pub labels: sqlx::types::Json<BTreeMap<String, String>>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub gpus: i32,
    pub concurrency_key: Option<String>,
    pub concurrency_limit: Option<i32>,
    pub retry: sqlx::types::Json<serde_json::Value>,
    pub schedule_to_start_ms: Option<i64>,
    pub start_to_close_ms: Option<i64>,
    pub heartbeat_ms: i64,
    pub attempts: i32,
    pub attempt_budget: i32,
    pub cancel_requested: bool,
    pub run_after_us: i64,
    pub enqueued_us: i64,
    pub node_id: Option<Uuid>,
    pub lease_expires_us: Option<i64>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub log_bytes: i64,
    pub log_seq: i64,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    /// What the step produced, a JSON object (workflow steps).
    pub outputs: Option<String>,
    /// The run's kind: `job` or `workflow`.
    pub kind: String,
    /// `job` for a job; the step's name for a workflow.
    pub step: String,
    /// The W3C trace context the task was created in.
    pub traceparent: Option<String>,
}

impl TaskRow {
    pub fn state(&self) -> Result<TaskState, StoreError> {
        Ok(TaskState {
            status: self.status.parse().map_err(StoreError::Corrupt)?,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            attempt_budget: u32::try_from(self.attempt_budget).unwrap_or(0),
            cancel_requested: self.cancel_requested,
        })
    }

    pub fn policy(&self) -> Result<RetryPolicy, StoreError> {
        retry_from_json(&self.retry.0)
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            schedule_to_start: self.schedule_to_start_ms.map(ms_duration),
            start_to_close: self.start_to_close_ms.map(ms_duration),
            heartbeat: ms_duration(self.heartbeat_ms),
        }
    }

    pub fn resources(&self) -> Capacity {
        Capacity {
            cpu_millis: u64::try_from(self.cpu_millis).unwrap_or(0),
            memory_bytes: u64::try_from(self.memory_bytes).unwrap_or(0),
            gpus: u32::try_from(self.gpus).unwrap_or(0),
        }
    }

    pub fn into_job(self, attempts: Vec<Attempt>) -> Result<Job, StoreError> {
        Ok(Job {
            state: self.state()?,
            retry: self.policy()?,
            timeouts: self.timeouts(),
            placement: Placement {
                labels: self.labels.0.clone(),
                resources: self.resources(),
            },
            concurrency: match (&self.concurrency_key, self.concurrency_limit) {
                (Some(key), Some(limit)) => Some(Concurrency {
                    key: key.clone(),
                    limit: u32::try_from(limit).unwrap_or(1),
                }),
                _ => None,
            },
            id: RunId::from_uuid(self.run_id),
            task_id: TaskId::from_uuid(self.id),
            name: self.name,
            project_id: self.project_id.map(orchion_domain::ProjectId::from_uuid),
            executor: self.executor,
            spec: self.spec,
            priority: self.priority,
            run_after: from_micros(self.run_after_us),
            node_id: self.node_id.map(NodeId::from_uuid),
            lease_expires_at: self.lease_expires_us.map(from_micros),
            output: self.output,
            outputs: self.outputs,
            error: self.error,
            exit_code: self.exit_code,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            attempts,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AttemptRow {
    pub number: i32,
    pub node_id: Option<Uuid>,
    pub status: String,
    pub started_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

impl TryFrom<AttemptRow> for Attempt {
    type Error = StoreError;

    fn try_from(row: AttemptRow) -> Result<Self, StoreError> {
        Ok(Attempt {
            number: u32::try_from(row.number).unwrap_or(0),
            node_id: row.node_id.map(NodeId::from_uuid),
            status: row
                .status
                .parse::<AttemptStatus>()
                .map_err(StoreError::Corrupt)?,
            started_at: row.started_at,
            finished_at: row.finished_at,
            exit_code: row.exit_code,
            error: row.error,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LogRow {
    pub seq: i64,
    pub attempt: i32,
    pub stream: String,
    pub line: String,
    pub at: OffsetDateTime,
}

/// A task to write: a job's, or a workflow step's.
pub(crate) struct TaskInsert<'a> {
    pub id: Uuid,
    pub run_id: Uuid,
    /// `job` for a job; the step's name (`name[i]` in a fan-out) for a workflow.
    pub step: &'a str,
    pub job: &'a orchion_domain::NewJob,
    /// `queued`, or a final status for a step that never runs (failed to render, or an empty
    /// fan-out that succeeds at once).
    pub status: TaskStatus,
    pub outputs: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// The columns a new task is written with, in the order both backends bind [`TaskValues`];
/// `attempts` starts at 0 and `cancel_requested` false.
pub(crate) const TASK_INSERT_COLUMNS: &str = "id, run_id, step, status, executor, spec, priority, labels, cpu_millis, \
     memory_bytes, gpus, concurrency_key, concurrency_limit, retry, schedule_to_start_ms, \
     start_to_close_ms, heartbeat_ms, attempts, attempt_budget, cancel_requested, run_after_us, \
     enqueued_us, created_at, outputs, error, finished_at, traceparent";

/// A new task's column values, as stored.
pub(crate) struct TaskValues<'a> {
    pub id: Uuid,
    pub run_id: Uuid,
    pub step: &'a str,
    pub status: &'static str,
    pub executor: &'a str,
    pub spec: &'a str,
    pub priority: i32,
    pub labels: serde_json::Value,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub gpus: i32,
    pub concurrency_key: Option<&'a str>,
    pub concurrency_limit: Option<i32>,
    pub retry: serde_json::Value,
    pub schedule_to_start_ms: Option<i64>,
    pub start_to_close_ms: Option<i64>,
    pub heartbeat_ms: i64,
    pub attempt_budget: i32,
    pub run_after_us: i64,
    pub enqueued_us: i64,
    pub outputs: Option<&'a str>,
    pub error: Option<&'a str>,
    pub finished_at: Option<OffsetDateTime>,
    pub traceparent: Option<&'a str>,
}

impl<'a> TaskInsert<'a> {
    /// The row to write for this task, created at `now`.
    pub fn values(&self, now: OffsetDateTime) -> TaskValues<'a> {
        let job = self.job;
        let resources = job.placement.resources;
        let millis = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        TaskValues {
            id: self.id,
            run_id: self.run_id,
            step: self.step,
            status: self.status.as_str(),
            executor: &job.executor,
            spec: &job.spec,
            priority: job.priority,
            labels: serde_json::json!(job.placement.labels),
            cpu_millis: i64::try_from(resources.cpu_millis).unwrap_or(i64::MAX),
            memory_bytes: i64::try_from(resources.memory_bytes).unwrap_or(i64::MAX),
            gpus: i32::try_from(resources.gpus).unwrap_or(i32::MAX),
            concurrency_key: job.concurrency.as_ref().map(|c| c.key.as_str()),
            concurrency_limit: job
                .concurrency
                .as_ref()
                .map(|c| i32::try_from(c.limit).unwrap_or(i32::MAX)),
            retry: retry_json(&job.retry),
            schedule_to_start_ms: job.timeouts.schedule_to_start.map(millis),
            start_to_close_ms: job.timeouts.start_to_close.map(millis),
            heartbeat_ms: millis(job.timeouts.heartbeat),
            attempt_budget: i32::try_from(TaskState::new(&job.retry).attempt_budget)
                .unwrap_or(i32::MAX),
            run_after_us: micros(job.run_at.unwrap_or(now).max(now)),
            enqueued_us: micros(now),
            outputs: self.outputs,
            error: self.error,
            finished_at: self.status.is_terminal().then_some(now),
            traceparent: job.trace_parent.as_deref(),
        }
    }
}

/// The most queued tasks one claim reads.
pub(crate) const MAX_CLAIM_SCAN: usize = 8192;

/// A scan size as a SQL limit.
pub(crate) fn scan_limit(scan: usize) -> i64 {
    i64::try_from(scan).unwrap_or(i64::MAX)
}

/// Whether any of `candidates` needs cpu, memory or GPUs: only then does a claim read what the
/// node's running tasks use.
pub(crate) fn need_resources(candidates: &[TaskRow]) -> bool {
    candidates
        .iter()
        .any(|c| c.resources() != Capacity::default())
}

/// What of a node's `capacity` is free while its running tasks use `used` (the sums of their
/// cpu, memory and GPUs; `None` when nothing runs).
pub(crate) fn free_capacity(
    capacity: Capacity,
    (cpu, memory, gpus): (Option<i64>, Option<i64>, Option<i64>),
) -> Capacity {
    let used = |v: Option<i64>| u64::try_from(v.unwrap_or(0)).unwrap_or(0);
    Capacity {
        cpu_millis: capacity.cpu_millis.saturating_sub(used(cpu)),
        memory_bytes: capacity.memory_bytes.saturating_sub(used(memory)),
        gpus: capacity
            .gpus
            .saturating_sub(u32::try_from(used(gpus)).unwrap_or(u32::MAX)),
    }
}

/// Which candidates a node takes: in the order given (priority, then age), those whose labels
/// and resources fit what is still free on the node, without passing any concurrency limit,
/// at most `max`. Pure, so both backends pick alike.
pub(crate) fn select_claims(
    candidates: &[TaskRow],
    labels: &Labels,
    mut free: Capacity,
    mut running_per_key: HashMap<String, u32>,
    max: usize,
) -> Vec<usize> {
    let mut chosen = Vec::new();
    for (i, task) in candidates.iter().enumerate() {
        if chosen.len() >= max {
            break;
        }
        let placement = Placement {
            labels: task.labels.0.clone(),
            resources: task.resources(),
        };
        if !placement.fits(labels, free) {
            continue;
        }
        if let (Some(key), Some(limit)) = (&task.concurrency_key, task.concurrency_limit) {
            let running = running_per_key.entry(key.clone()).or_default();
            if i64::from(*running) >= i64::from(limit) {
                continue;
            }
            *running += 1;
        }
        free.cpu_millis -= placement.resources.cpu_millis;
        free.memory_bytes -= placement.resources.memory_bytes;
        free.gpus -= placement.resources.gpus;
        chosen.push(i);
    }
    chosen
}

/// The data a `job.status_changed` event carries.
pub(crate) fn status_event(
    run: Uuid,
    from: TaskStatus,
    to: TaskStatus,
    attempt: u32,
) -> serde_json::Value {
    serde_json::json!({
        "job_id": RunId::from_uuid(run).to_string(),
        "from": from.as_str(),
        "to": to.as_str(),
        "attempt": attempt,
    })
}

/// Free functions the job methods share, for one backend's connection type. Expanded once per
/// backend module, next to what that module defines (`append_event`, `TASK_LOCK`, …).
macro_rules! job_helpers {
    ($conn:ty) => {
        /// The task of `task_id`, locked for a change where the backend locks rows.
        async fn task_row(
            conn: &mut $conn,
            task_id: uuid::Uuid,
        ) -> Result<Option<$crate::jobs::TaskRow>, $crate::StoreError> {
            let sql = format!(
                "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.id = $1{TASK_LOCK}",
                $crate::jobs::TASK_COLUMNS
            );
            Ok(sqlx::query_as::<_, $crate::jobs::TaskRow>(&sql)
                .bind(task_id)
                .fetch_optional(conn)
                .await?)
        }

        /// Inserts tasks, a few statements for any number. A task whose `(run, step)` exists
        /// already is left as it is, so writing a workflow's ready steps twice is harmless.
        async fn insert_tasks(
            conn: &mut $conn,
            rows: &[$crate::jobs::TaskInsert<'_>],
            now: time::OffsetDateTime,
        ) -> Result<(), $crate::StoreError> {
            for chunk in rows.chunks($crate::jobs::INSERT_CHUNK) {
                let mut tasks = sqlx::QueryBuilder::new(format!("INSERT INTO tasks ({}) ", $crate::jobs::TASK_INSERT_COLUMNS));
                tasks.push_values(chunk, |mut row, task| {
                    let v = task.values(now);
                    row.push_bind(v.id)
                        .push_bind(v.run_id)
                        .push_bind(v.step.to_owned())
                        .push_bind(v.status)
                        .push_bind(v.executor.to_owned())
                        .push_bind(v.spec.to_owned())
                        .push_bind(v.priority)
                        .push_bind(sqlx::types::Json(v.labels))
                        .push_bind(v.cpu_millis)
                        .push_bind(v.memory_bytes)
                        .push_bind(v.gpus)
                        .push_bind(v.concurrency_key.map(str::to_owned))
                        .push_bind(v.concurrency_limit)
                        .push_bind(sqlx::types::Json(v.retry))
                        .push_bind(v.schedule_to_start_ms)
                        .push_bind(v.start_to_close_ms)
                        .push_bind(v.heartbeat_ms)
                        .push_bind(0i32)
                        .push_bind(v.attempt_budget)
                        .push_bind(false)
                        .push_bind(v.run_after_us)
                        .push_bind(v.enqueued_us)
                        .push_bind(now)
                        .push_bind(v.outputs.map(str::to_owned))
                        .push_bind(v.error.map(str::to_owned))
                        .push_bind(v.finished_at)
                        .push_bind(v.traceparent.map(str::to_owned));
                });
                tasks.push(" ON CONFLICT (run_id, step) DO NOTHING");
                tasks.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// Ends attempts as their plans say, two statements per chunk of tasks. The caller has
        /// checked each attempt is the current one.
        async fn finish_attempts(
            conn: &mut $conn,
            plans: &[$crate::jobs::FinishPlan],
        ) -> Result<(), $crate::StoreError> {
            for chunk in plans.chunks($crate::jobs::INSERT_CHUNK) {
                let mut attempts = sqlx::QueryBuilder::new(
                    "WITH v (task_id, number, status, finished_at, exit_code, error) AS (",
                );
                attempts.push_values(chunk, |mut row, p| {
                    row.push_bind(p.task_id)
                        .push_bind(p.number)
                        .push_bind(p.attempt_status)
                        .push_bind(p.now)
                        .push_bind(p.exit_code)
                        .push_bind(p.error.clone());
                });
                attempts.push(
                    ") UPDATE attempts SET status = v.status, finished_at = v.finished_at, exit_code = v.exit_code, \
                     error = v.error FROM v WHERE attempts.task_id = v.task_id AND attempts.number = v.number",
                );
                attempts.build().execute(&mut *conn).await?;
                let mut tasks = sqlx::QueryBuilder::new(
                    "WITH v (id, status, cancel_requested, attempt_budget, run_after_us, output, outputs, error, exit_code, finished_at) AS (",
                );
                tasks.push_values(chunk, |mut row, p| {
                    row.push_bind(p.task_id)
                        .push_bind(p.status.as_str())
                        .push_bind(p.cancel_requested)
                        .push_bind(p.attempt_budget)
                        .push_bind(p.run_after_us)
                        .push_bind(p.output.clone())
                        .push_bind(p.outputs.clone())
                        .push_bind(p.error.clone())
                        .push_bind(p.exit_code)
                        .push_bind(p.finished_at);
                });
                tasks.push(
                    ") UPDATE tasks SET status = v.status, cancel_requested = v.cancel_requested, \
                     attempt_budget = v.attempt_budget, node_id = NULL, lease_expires_us = NULL, \
                     run_after_us = v.run_after_us, output = COALESCE(v.output, tasks.output), outputs = COALESCE(v.outputs, tasks.outputs), error = v.error, \
                     exit_code = v.exit_code, finished_at = v.finished_at FROM v WHERE tasks.id = v.id",
                );
                tasks.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// Applies an operator's event (cancel, retry) to a job's task.
        async fn apply_to_job(
            conn: &mut $conn,
            run: orchion_domain::RunId,
            event: orchion_domain::TaskEvent,
        ) -> Result<(), $crate::StoreError> {
            let sql = format!(
                "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.run_id = $1 AND r.kind = 'job'{TASK_LOCK}",
                $crate::jobs::TASK_COLUMNS
            );
            let task = sqlx::query_as::<_, $crate::jobs::TaskRow>(&sql)
                .bind(run.as_uuid())
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| $crate::StoreError::NotFound { kind: "job", id: run.to_string() })?;
            apply_to_task(conn, &task, event)
                .await
                .map_err(|e| match e {
                    $crate::StoreError::Conflict(message) => $crate::StoreError::Conflict(format!("job {run}: {message}")),
                    other => other,
                })?;
            Ok(())
        }

        /// Applies `event` to `task` (read locked): a cancel request or a retry. Returns whether
        /// anything changed; a transition the task's state refuses is a conflict.
        async fn apply_to_task(
            conn: &mut $conn,
            task: &$crate::jobs::TaskRow,
            event: orchion_domain::TaskEvent,
        ) -> Result<bool, $crate::StoreError> {
            use orchion_domain::TaskStatus;
            let state = task.state()?;
            let next = state
                .next(&event, &task.policy()?, 0.0)
                .map_err(|e| $crate::StoreError::Conflict(e.to_string()))?
                .state;
            if next == state {
                return Ok(false);
            }
            let now = $crate::now();
            let requeued = next.status == TaskStatus::Queued && state.status != TaskStatus::Queued;
            let (run_after, enqueued) = if requeued {
                ($crate::jobs::micros(now), $crate::jobs::micros(now))
            } else {
                (task.run_after_us, task.enqueued_us)
            };
            let finished_at = if next.status.is_terminal() { Some(now) } else { None };
            sqlx::query(
                "UPDATE tasks SET status = $2, cancel_requested = $3, attempt_budget = $4, run_after_us = $5, \
                 enqueued_us = $6, finished_at = $7, \
                 error = CASE WHEN $8 THEN NULL ELSE error END, exit_code = CASE WHEN $8 THEN NULL ELSE exit_code END, \
                 output = CASE WHEN $8 THEN NULL ELSE output END WHERE id = $1",
            )
            .bind(task.id)
            .bind(next.status.as_str())
            .bind(next.cancel_requested)
            .bind(i32::try_from(next.attempt_budget).unwrap_or(i32::MAX))
            .bind(run_after)
            .bind(enqueued)
            .bind(finished_at)
            .bind(requeued)
            .execute(&mut *conn)
            .await?;
            if next.status != state.status {
                append_event(
                    conn,
                    $crate::kind::JOB_STATUS_CHANGED,
                    orchion_domain::RunId::from_uuid(task.run_id).to_string(),
                    task.project_id.map(orchion_domain::ProjectId::from_uuid),
                    $crate::jobs::status_event(task.run_id, state.status, next.status, state.attempts),
                )
                .await?;
            }
            Ok(true)
        }
    };
}
pub(crate) use job_helpers;

/// `JobStore` for one backend, written once for both. See the module documentation.
macro_rules! impl_job_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::JobStore for $store {
        async fn create_jobs(
            &self,
            jobs: Vec<(orchion_domain::NewJob, Option<$crate::IdempotencyKey>)>,
        ) -> Result<Vec<Result<$crate::Created<orchion_domain::Job>, $crate::StoreError>>, $crate::StoreError> {
            self.enqueue(jobs).await
        }

        async fn get_job(&self, id: orchion_domain::RunId) -> Result<orchion_domain::Job, $crate::StoreError> {
            let sql = format!(
                "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.run_id = $1 AND r.kind = 'job'",
                $crate::jobs::TASK_COLUMNS
            );
            let row = sqlx::query_as::<_, $crate::jobs::TaskRow>(&sql)
                .bind(id.as_uuid())
                .fetch_optional(self.read_pool())
                .await?
                .ok_or_else(|| $crate::StoreError::NotFound { kind: "job", id: id.to_string() })?;
            let attempts = sqlx::query_as::<_, $crate::jobs::AttemptRow>(
                "SELECT number, node_id, status, started_at, finished_at, exit_code, error FROM attempts \
                 WHERE task_id = $1 ORDER BY number",
            )
            .bind(row.id)
            .fetch_all(self.read_pool())
            .await?
            .into_iter()
            .map(orchion_domain::Attempt::try_from)
            .collect::<Result<Vec<_>, _>>()?;
            row.into_job(attempts)
        }

        async fn list_jobs(
            &self,
            filter: &orchion_domain::JobFilter,
            page: orchion_domain::PageRequest,
        ) -> Result<orchion_domain::Page<orchion_domain::Job>, $crate::StoreError> {
            let (after, order) = $crate::rows::direction(filter.newest_first);
            // The cursor bounds both sides of the join: PostgreSQL does not carry it across
            // `r.id = t.run_id`, and merge-joined from the end of `runs` up to the cursor (a
            // page deep in three million jobs took 250 ms).
            let sql = format!(
                "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id \
                 WHERE r.kind = 'job' AND ($1 IS NULL OR t.status = $1) AND ($2 IS NULL OR r.project_id = $2) \
                 AND ($3 IS NULL OR t.executor = $3) AND ($4 IS NULL OR t.run_id {after} $4) AND ($4 IS NULL OR r.id {after} $4) \
                 AND ($6 IS NULL OR lower(r.name) LIKE $6 ESCAPE '\\') \
                 ORDER BY t.run_id {order} LIMIT $5",
                $crate::jobs::TASK_COLUMNS
            );
            let rows = sqlx::query_as::<_, $crate::jobs::TaskRow>(&sql)
                .bind(filter.status.map(|s| s.as_str()))
                .bind(filter.project_id.map(|p| p.as_uuid()))
                .bind(filter.executor.as_deref())
                .bind(page.after.map(|c| c.0))
                .bind(i64::from(page.limit) + 1)
                .bind(filter.name.as_deref().map($crate::rows::contains_pattern))
                .fetch_all(self.read_pool())
                .await?;
            let limit = page.limit as usize;
            let more = rows.len() > limit;
            let items = rows
                .into_iter()
                .take(limit)
                .map(|row| row.into_job(Vec::new()))
                .collect::<Result<Vec<_>, _>>()?;
            let next = if more { items.last().map(|j| orchion_domain::Cursor(j.id.as_uuid())) } else { None };
            Ok(orchion_domain::Page { items, next })
        }

        async fn claim_tasks(
            &self,
            claim: &$crate::ClaimRequest,
        ) -> Result<Vec<$crate::ClaimedTask>, $crate::StoreError> {
            self.claim(claim).await
        }

        async fn extend_leases(
            &self,
            node: orchion_domain::NodeId,
            leases: &[(orchion_domain::TaskId, u32)],
        ) -> Result<Vec<$crate::LeaseState>, $crate::StoreError> {
            if leases.is_empty() {
                return Ok(Vec::new());
            }
            let now = $crate::now();
            let mut tx = self.begin().await?;
            let mut states = Vec::with_capacity(leases.len());
            for (task_id, attempt) in leases {
                let held = match task_row(&mut tx, task_id.as_uuid()).await? {
                    Some(task) if $crate::jobs::holds(&task, node, *attempt) => {
                        sqlx::query("UPDATE tasks SET lease_expires_us = $2 WHERE id = $1")
                            .bind(task.id)
                            .bind($crate::jobs::micros(now + task.timeouts().heartbeat))
                            .execute(&mut *tx)
                            .await?;
                        $crate::LeaseState::Held { cancel_requested: task.cancel_requested }
                    }
                    _ => $crate::LeaseState::Lost,
                };
                states.push(held);
            }
            self.commit(tx).await?;
            Ok(states)
        }

        async fn complete_attempts(
            &self,
            reports: Vec<$crate::AttemptReport>,
        ) -> Result<Vec<Result<$crate::Completed, $crate::StoreError>>, $crate::StoreError> {
            self.finish(reports).await
        }

        async fn expire_leases(&self, now: time::OffsetDateTime) -> Result<usize, $crate::StoreError> {
            use orchion_domain::{AttemptOutcome, TaskEvent};
            let now_us = $crate::jobs::micros(now);
            let mut tx = self.begin().await?;
            let sql = format!(
                "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id \
                 WHERE t.status = 'running' AND t.lease_expires_us < $1 LIMIT 500{TASK_LOCK_SKIP}",
                $crate::jobs::TASK_COLUMNS
            );
            let expired = sqlx::query_as::<_, $crate::jobs::TaskRow>(&sql)
                .bind(now_us)
                .fetch_all(&mut *tx)
                .await?;
            let plans = expired
                .iter()
                .map(|task| $crate::jobs::plan_finish(task, AttemptOutcome::Lost, None, None, now, rand::random()))
                .collect::<Result<Vec<_>, _>>()?;
            finish_attempts(&mut tx, &plans).await?;
            let events: Vec<$crate::jobs::PendingEvent> = plans.into_iter().map(|p| p.event).collect();
            append_events(&mut tx, &events).await?;
            let sql = format!(
                "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id \
                 WHERE t.status = 'queued' AND t.attempts = 0 AND t.schedule_to_start_ms IS NOT NULL \
                 AND t.enqueued_us + t.schedule_to_start_ms * 1000 < $1 LIMIT 500{TASK_LOCK_SKIP}",
                $crate::jobs::TASK_COLUMNS
            );
            let late = sqlx::query_as::<_, $crate::jobs::TaskRow>(&sql)
                .bind(now_us)
                .fetch_all(&mut *tx)
                .await?;
            for task in &late {
                let state = task.state()?;
                let next = state
                    .next(&TaskEvent::ScheduleTimedOut, &task.policy()?, 0.0)
                    .map_err(|e| $crate::StoreError::Conflict(e.to_string()))?
                    .state;
                sqlx::query("UPDATE tasks SET status = $2, error = $3, finished_at = $4 WHERE id = $1")
                    .bind(task.id)
                    .bind(next.status.as_str())
                    .bind("no node started the job within timeouts.schedule_to_start")
                    .bind($crate::now())
                    .execute(&mut *tx)
                    .await?;
                append_event(
                    &mut tx,
                    $crate::kind::JOB_STATUS_CHANGED,
                    orchion_domain::RunId::from_uuid(task.run_id).to_string(),
                    task.project_id.map(orchion_domain::ProjectId::from_uuid),
                    $crate::jobs::status_event(task.run_id, state.status, next.status, state.attempts),
                )
                .await?;
            }
            if expired.is_empty() && late.is_empty() {
                tx.rollback().await?;
                return Ok(0);
            }
            self.commit(tx).await?;
            Ok(expired.len() + late.len())
        }

        async fn lose_node_attempts(&self, node: orchion_domain::NodeId) -> Result<usize, $crate::StoreError> {
            let mut tx = self.begin().await?;
            let sql = format!(
                "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id \
                 WHERE t.status = 'running' AND t.node_id = $1{TASK_LOCK}",
                $crate::jobs::TASK_COLUMNS
            );
            let running = sqlx::query_as::<_, $crate::jobs::TaskRow>(&sql)
                .bind(node.as_uuid())
                .fetch_all(&mut *tx)
                .await?;
            let now = $crate::now();
            let plans = running
                .iter()
                .map(|task| $crate::jobs::plan_finish(task, orchion_domain::AttemptOutcome::Lost, None, None, now, rand::random()))
                .collect::<Result<Vec<_>, _>>()?;
            finish_attempts(&mut tx, &plans).await?;
            let events: Vec<$crate::jobs::PendingEvent> = plans.into_iter().map(|p| p.event).collect();
            append_events(&mut tx, &events).await?;
            self.commit(tx).await?;
            Ok(running.len())
        }

        async fn cancel_job(&self, id: orchion_domain::RunId) -> Result<orchion_domain::Job, $crate::StoreError> {
            let mut tx = self.begin().await?;
            apply_to_job(&mut tx, id, orchion_domain::TaskEvent::CancelRequested).await?;
            self.commit(tx).await?;
            self.get_job(id).await
        }

        async fn retry_job(&self, id: orchion_domain::RunId) -> Result<orchion_domain::Job, $crate::StoreError> {
            let mut tx = self.begin().await?;
            apply_to_job(&mut tx, id, orchion_domain::TaskEvent::Retry).await?;
            self.commit(tx).await?;
            self.get_job(id).await
        }

        async fn append_logs(
            &self,
            node: orchion_domain::NodeId,
            task_id: orchion_domain::TaskId,
            attempt: u32,
            lines: &[$crate::NewLogLine],
        ) -> Result<(), $crate::StoreError> {
            if lines.is_empty() {
                return Ok(());
            }
            let mut tx = self.begin().await?;
            let task = task_row(&mut tx, task_id.as_uuid())
                .await?
                .ok_or_else(|| $crate::StoreError::NotFound { kind: "task", id: task_id.to_string() })?;
            if !$crate::jobs::holds(&task, node, attempt) {
                return Err($crate::StoreError::Stale(format!(
                    "attempt {attempt} of task {task_id} is not running on node {node}: its logs are refused"
                )));
            }
            let mut bytes = task.log_bytes;
            let mut seq = task.log_seq;
            for line in lines {
                if bytes >= $crate::jobs::MAX_LOG_BYTES {
                    break;
                }
                let len = i64::try_from(line.line.len()).unwrap_or(i64::MAX);
                let (stream, text) = if bytes.saturating_add(len) > $crate::jobs::MAX_LOG_BYTES {
                    ("system", format!("[log truncated by orchion: more than {} bytes]", $crate::jobs::MAX_LOG_BYTES))
                } else {
                    (line.stream.as_str(), line.line.clone())
                };
                seq += 1;
                bytes = bytes.saturating_add(len);
                sqlx::query("INSERT INTO task_logs (task_id, seq, attempt, stream, line, at) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(task.id)
                    .bind(seq)
                    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
                    .bind(stream)
                    .bind(text)
                    .bind(line.at)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("UPDATE tasks SET log_bytes = $2, log_seq = $3 WHERE id = $1")
                .bind(task.id)
                .bind(bytes)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            self.commit(tx).await
        }

        async fn read_logs(
            &self,
            task_id: orchion_domain::TaskId,
            after: i64,
            limit: u32,
        ) -> Result<Vec<$crate::LogLine>, $crate::StoreError> {
            let rows = sqlx::query_as::<_, $crate::jobs::LogRow>(
                "SELECT seq, attempt, stream, line, at FROM task_logs WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(task_id.as_uuid())
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.read_pool())
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| $crate::LogLine {
                    seq: r.seq,
                    attempt: u32::try_from(r.attempt).unwrap_or(0),
                    stream: r.stream,
                    line: r.line,
                    at: r.at,
                })
                .collect())
        }

        async fn create_schedule(&self, schedule: &orchion_domain::Schedule) -> Result<(), $crate::StoreError> {
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO schedules (id, name, cron, timezone, overlap, misfire, job, next_fire_us, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(schedule.id.as_uuid())
            .bind(schedule.name.as_str())
            .bind(schedule.cron.expression())
            .bind(schedule.cron.timezone())
            .bind(schedule.overlap.as_str())
            .bind(schedule.misfire.as_str())
            .bind($crate::jobs::job_json(&schedule.job))
            .bind(schedule.next_fire_at.map($crate::jobs::micros))
            .bind(schedule.created_at)
            .execute(&mut *tx)
            .await?;
            append_event(
                &mut tx,
                $crate::kind::SCHEDULE_CREATED,
                schedule.id.to_string(),
                schedule.job.project_id,
                serde_json::json!({ "name": schedule.name, "cron": schedule.cron.expression() }),
            )
            .await?;
            self.commit(tx).await
        }

        async fn get_schedule(&self, id: orchion_domain::ScheduleId) -> Result<orchion_domain::Schedule, $crate::StoreError> {
            let sql = format!("SELECT {} FROM schedules WHERE id = $1", $crate::jobs::SCHEDULE_COLUMNS);
            sqlx::query_as::<_, $crate::jobs::ScheduleRow>(&sql)
                .bind(id.as_uuid())
                .fetch_optional(self.read_pool())
                .await?
                .ok_or_else(|| $crate::StoreError::NotFound { kind: "schedule", id: id.to_string() })?
                .try_into()
        }

        async fn list_schedules(
            &self,
            page: orchion_domain::PageRequest,
        ) -> Result<orchion_domain::Page<orchion_domain::Schedule>, $crate::StoreError> {
            let sql = format!(
                "SELECT {} FROM schedules WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2",
                $crate::jobs::SCHEDULE_COLUMNS
            );
            let rows = sqlx::query_as::<_, $crate::jobs::ScheduleRow>(&sql)
                .bind(page.after.map(|c| c.0))
                .bind(i64::from(page.limit) + 1)
                .fetch_all(self.read_pool())
                .await?;
            $crate::rows::page_of(rows, page, |s: &orchion_domain::Schedule| s.id.as_uuid())
        }

        async fn delete_schedule(&self, id: orchion_domain::ScheduleId) -> Result<(), $crate::StoreError> {
            let mut tx = self.begin().await?;
            let deleted = sqlx::query("DELETE FROM schedules WHERE id = $1")
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 0 {
                return Err($crate::StoreError::NotFound { kind: "schedule", id: id.to_string() });
            }
            append_event(&mut tx, $crate::kind::SCHEDULE_DELETED, id.to_string(), None, serde_json::json!({})).await?;
            self.commit(tx).await
        }

        async fn due_schedules(
            &self,
            now: time::OffsetDateTime,
            limit: u32,
        ) -> Result<Vec<orchion_domain::Schedule>, $crate::StoreError> {
            let sql = format!(
                "SELECT {} FROM schedules WHERE next_fire_us IS NOT NULL AND next_fire_us <= $1 ORDER BY next_fire_us LIMIT $2",
                $crate::jobs::SCHEDULE_COLUMNS
            );
            sqlx::query_as::<_, $crate::jobs::ScheduleRow>(&sql)
                .bind($crate::jobs::micros(now))
                .bind(i64::from(limit))
                .fetch_all(self.read_pool())
                .await?
                .into_iter()
                .map(orchion_domain::Schedule::try_from)
                .collect()
        }

        async fn advance_schedule(
            &self,
            id: orchion_domain::ScheduleId,
            expected_next: Option<time::OffsetDateTime>,
            next: Option<time::OffsetDateTime>,
            fired: Option<(time::OffsetDateTime, orchion_domain::RunId)>,
        ) -> Result<bool, $crate::StoreError> {
            let mut tx = self.begin().await?;
            let moved = sqlx::query(
                "UPDATE schedules SET next_fire_us = $3, \
                 last_fire_us = COALESCE($4, last_fire_us), last_run_id = COALESCE($5, last_run_id) \
                 WHERE id = $1 AND next_fire_us = $2",
            )
            .bind(id.as_uuid())
            .bind(expected_next.map($crate::jobs::micros))
            .bind(next.map($crate::jobs::micros))
            .bind(fired.map(|(at, _)| $crate::jobs::micros(at)))
            .bind(fired.map(|(_, run)| run.as_uuid()))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            self.commit(tx).await?;
            Ok(moved == 1)
        }

        async fn put_workflow_type(
            &self,
            name: &str,
            project_id: Option<orchion_domain::ProjectId>,
            definition: &str,
        ) -> Result<$crate::Created<orchion_domain::WorkflowType>, $crate::StoreError> {
            let value: serde_json::Value = serde_json::from_str(definition)
                .map_err(|e| $crate::StoreError::Corrupt(format!("workflow definition: {e}")))?;
            let mut retried = false;
            loop {
                let attempt: Result<$crate::Created<orchion_domain::WorkflowType>, $crate::StoreError> = async {
                    let mut tx = self.begin().await?;
                    let latest = sqlx::query_as::<_, $crate::jobs::WorkflowTypeRow>(
                        "SELECT name, version, project_id, definition, created_at FROM workflow_types \
                         WHERE name = $1 ORDER BY version DESC LIMIT 1",
                    )
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(latest) = &latest {
                        if latest.definition.0 == value {
                            tx.rollback().await?;
                            return Ok($crate::Created { value: latest.clone().into(), created: false });
                        }
                    }
                    let version = latest.map_or(1, |l| l.version + 1);
                    let now = $crate::now();
                    sqlx::query(
                        "INSERT INTO workflow_types (project_id, name, version, definition, created_at) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(project_id.map(|p| p.as_uuid()))
                    .bind(name)
                    .bind(version)
                    .bind(sqlx::types::Json(&value))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    append_event(
                        &mut tx,
                        $crate::kind::WORKFLOW_TYPE_CREATED,
                        format!("{name}@{version}"),
                        project_id,
                        serde_json::json!({ "name": name, "version": version }),
                    )
                    .await?;
                    self.commit(tx).await?;
                    Ok($crate::Created {
                        value: orchion_domain::WorkflowType {
                            name: name.to_owned(),
                            version: u32::try_from(version).unwrap_or(0),
                            project_id,
                            definition: value.to_string(),
                            created_at: now,
                        },
                        created: true,
                    })
                }
                .await;
                return match attempt {
                    // Another replica stored a version meanwhile: look again.
                    Err(e) if !retried && $crate::is_unique_violation(&e) => {
                        retried = true;
                        continue;
                    }
                    other => other,
                };
            }
        }

        async fn get_workflow_type(
            &self,
            name: &str,
            version: Option<u32>,
        ) -> Result<orchion_domain::WorkflowType, $crate::StoreError> {
            sqlx::query_as::<_, $crate::jobs::WorkflowTypeRow>(
                "SELECT name, version, project_id, definition, created_at FROM workflow_types \
                 WHERE name = $1 AND ($2 IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
            )
            .bind(name)
            .bind(version.map(|v| i32::try_from(v).unwrap_or(i32::MAX)))
            .fetch_optional(self.read_pool())
            .await?
            .map(orchion_domain::WorkflowType::from)
            .ok_or_else(|| $crate::StoreError::NotFound {
                kind: "workflow type",
                id: match version {
                    Some(v) => format!("{name}@{v}"),
                    None => name.to_owned(),
                },
            })
        }

        async fn active_task_counts(&self) -> Result<$crate::ActiveCounts, $crate::StoreError> {
            let (queued, running): (Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT CAST(sum(CASE WHEN status = 'queued' THEN 1 ELSE 0 END) AS BIGINT), \
                 CAST(sum(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS BIGINT) \
                 FROM tasks WHERE status IN ('queued', 'running')",
            )
            .fetch_one(self.read_pool())
            .await?;
            let count = |n: Option<i64>| u64::try_from(n.unwrap_or(0)).unwrap_or(0);
            Ok($crate::ActiveCounts { queued: count(queued), running: count(running) })
        }

        async fn queue_depths(
            &self,
            now: time::OffsetDateTime,
        ) -> Result<Vec<$crate::QueueDepth>, $crate::StoreError> {
            let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
                "SELECT executor, CAST(labels AS TEXT), COUNT(*), MIN(enqueued_us) FROM tasks \
                 WHERE status = 'queued' AND run_after_us <= $1 \
                 GROUP BY executor, CAST(labels AS TEXT) ORDER BY executor, CAST(labels AS TEXT)",
            )
            .bind($crate::jobs::micros(now))
            .fetch_all(self.read_pool())
            .await?;
            Ok(rows
                .into_iter()
                .map(|(executor, labels, depth, oldest)| $crate::QueueDepth {
                    executor,
                    labels,
                    depth: u64::try_from(depth).unwrap_or(0),
                    oldest: $crate::jobs::from_micros(oldest),
                })
                .collect())
        }

        async fn running_nodes(&self) -> Result<Vec<orchion_domain::NodeId>, $crate::StoreError> {
            let rows: Vec<(uuid::Uuid,)> = sqlx::query_as(
                "SELECT DISTINCT node_id FROM tasks WHERE status = 'running' AND node_id IS NOT NULL",
            )
            .fetch_all(self.read_pool())
            .await?;
            Ok(rows.into_iter().map(|(id,)| orchion_domain::NodeId::from_uuid(id)).collect())
        }

        async fn next_run_after(&self, now: time::OffsetDateTime) -> Result<Option<time::OffsetDateTime>, $crate::StoreError> {
            let (next,): (Option<i64>,) =
                sqlx::query_as("SELECT min(run_after_us) FROM tasks WHERE status = 'queued' AND run_after_us > enqueued_us AND run_after_us > $1")
                    .bind($crate::jobs::micros(now))
                    .fetch_one(self.read_pool())
                    .await?;
            Ok(next.map($crate::jobs::from_micros))
        }
        }
    };
}
pub(crate) use impl_job_store;

/// An event a transaction writes just before it commits: appending all of a transaction's
/// events at its end keeps PostgreSQL's `event_sequence` row lock, which orders events by
/// commit, held for as short a time as possible.
#[derive(Debug, Clone)]
pub(crate) struct PendingEvent {
    pub kind: &'static str,
    pub subject: String,
    pub project_id: Option<orchion_domain::ProjectId>,
    pub data: serde_json::Value,
}

impl PendingEvent {
    /// A `job.status_changed` event for `task`, naming its step and the node that holds it.
    pub fn status(task: &TaskRow, from: TaskStatus, to: TaskStatus, attempt: u32) -> Self {
        let mut data = status_event(task.run_id, from, to, attempt);
        data["task_id"] = serde_json::json!(task.id.to_string());
        data["step"] = serde_json::json!(task.step);
        if let Some(node) = task.node_id {
            data["node_id"] = serde_json::json!(node.to_string());
        }
        PendingEvent {
            kind: crate::kind::JOB_STATUS_CHANGED,
            subject: RunId::from_uuid(task.run_id).to_string(),
            project_id: task.project_id.map(orchion_domain::ProjectId::from_uuid),
            data,
        }
    }

    /// The same, for a task `node` has just claimed.
    pub fn claimed(
        task: &TaskRow,
        from: TaskStatus,
        to: TaskStatus,
        attempt: u32,
        node: Uuid,
    ) -> Self {
        let mut event = Self::status(task, from, to, attempt);
        event.data["node_id"] = serde_json::json!(node.to_string());
        event
    }
}

/// How an attempt ends: everything its two row updates and its event need.
#[derive(Debug, Clone)]
pub(crate) struct FinishPlan {
    pub task_id: Uuid,
    pub number: i32,
    pub attempt_status: &'static str,
    pub now: OffsetDateTime,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub status: TaskStatus,
    pub cancel_requested: bool,
    pub attempt_budget: i32,
    pub run_after_us: i64,
    pub output: Option<String>,
    pub outputs: Option<String>,
    pub finished_at: Option<OffsetDateTime>,
    pub event: PendingEvent,
}

/// Plans the end of `task`'s current attempt with `outcome`: the transition comes from
/// `TaskState::next`; `random` in `[0, 1)` jitters a retry's backoff.
pub(crate) fn plan_finish(
    task: &TaskRow,
    outcome: orchion_domain::AttemptOutcome,
    output: Option<String>,
    outputs: Option<String>,
    now: OffsetDateTime,
    random: f64,
) -> Result<FinishPlan, StoreError> {
    use orchion_domain::{AttemptOutcome, TaskEvent};
    let state = task.state()?;
    let transition = state
        .next(
            &TaskEvent::Finished(outcome.clone()),
            &task.policy()?,
            random,
        )
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
    let (exit_code, error) = match &outcome {
        AttemptOutcome::Failed { exit_code, error } => (*exit_code, Some(error.clone())),
        AttemptOutcome::Lost => (
            None,
            Some("the attempt's lease expired: its node stopped answering".to_owned()),
        ),
        AttemptOutcome::TimedOut => (
            None,
            Some("the attempt ran past timeouts.start_to_close".to_owned()),
        ),
        AttemptOutcome::Cancelled => (None, Some("cancelled".to_owned())),
        AttemptOutcome::Succeeded => (None, None),
    };
    let next = transition.state;
    Ok(FinishPlan {
        task_id: task.id,
        number: task.attempts,
        attempt_status: AttemptStatus::of(&outcome).as_str(),
        now,
        exit_code,
        error,
        status: next.status,
        cancel_requested: next.cancel_requested,
        attempt_budget: i32::try_from(next.attempt_budget).unwrap_or(i32::MAX),
        run_after_us: transition
            .retry_after
            .map_or(task.run_after_us, |wait| micros(now + wait)),
        output: output.map(|o| truncate(o, MAX_OUTPUT_BYTES)),
        outputs: outputs.filter(|_| next.status == TaskStatus::Succeeded),
        finished_at: next.status.is_terminal().then_some(now),
        event: PendingEvent::status(task, state.status, next.status, state.attempts),
    })
}

/// The tasks a claim takes (`chosen` indexes `candidates`), each moved from queued to running
/// with one more attempt by `TaskState::next`, and their events. Each lease runs for the task's
/// own heartbeat timeout from the claim's time.
pub(crate) fn plan_claims(
    candidates: &[TaskRow],
    chosen: &[usize],
    claim: &crate::ClaimRequest,
) -> Result<(Vec<crate::ClaimedTask>, Vec<PendingEvent>), StoreError> {
    use orchion_domain::TaskEvent;
    let mut claimed = Vec::with_capacity(chosen.len());
    let mut events = Vec::with_capacity(chosen.len());
    for &i in chosen {
        let task = &candidates[i];
        let state = task.state()?;
        let next = state
            .next(&TaskEvent::Claimed, &task.policy()?, 0.0)
            .map_err(|e| StoreError::Conflict(e.to_string()))?
            .state;
        let timeouts = task.timeouts();
        events.push(PendingEvent::claimed(
            task,
            state.status,
            next.status,
            next.attempts,
            claim.node_id.as_uuid(),
        ));
        claimed.push(crate::ClaimedTask {
            job_id: RunId::from_uuid(task.run_id),
            task_id: TaskId::from_uuid(task.id),
            attempt: next.attempts,
            executor: task.executor.clone(),
            spec: task.spec.clone(),
            lease_expires_at: claim.now + timeouts.heartbeat,
            timeouts,
            traceparent: task.traceparent.clone(),
        });
    }
    Ok((claimed, events))
}

/// Each report's result, in order, and the plans to write.
pub(crate) type Judged = (Vec<Result<crate::Completed, StoreError>>, Vec<FinishPlan>);

/// Judges a batch of attempt reports against the tasks they name (read in the same
/// transaction): each is refused if its task is unknown or its attempt is not the one running
/// on its node (fencing), or planned to end otherwise. Returns each report's result, in order,
/// and the plans to write.
pub(crate) fn judge_reports(
    tasks: &HashMap<Uuid, TaskRow>,
    reports: Vec<crate::AttemptReport>,
    now: OffsetDateTime,
) -> Result<Judged, StoreError> {
    let mut results = Vec::with_capacity(reports.len());
    let mut plans: Vec<FinishPlan> = Vec::with_capacity(reports.len());
    let mut planned = std::collections::HashSet::with_capacity(reports.len());
    for report in reports {
        let task_id = report.task;
        let Some(task) = tasks.get(&task_id.as_uuid()) else {
            results.push(Err(StoreError::NotFound {
                kind: "task",
                id: task_id.to_string(),
            }));
            continue;
        };
        // A second report for the same attempt in this batch is as stale as a late one.
        if planned.contains(&task.id) || !holds(task, report.node, report.attempt) {
            results.push(Err(StoreError::Stale(format!(
                "attempt {} of task {task_id} is not running on node {}: its result is refused",
                report.attempt, report.node
            ))));
            continue;
        }
        let plan = plan_finish(
            task,
            report.outcome,
            report.output,
            report.outputs,
            now,
            rand::random(),
        )?;
        results.push(Ok(crate::Completed {
            status: plan.status,
            run_id: RunId::from_uuid(task.run_id),
            workflow: task.kind == "workflow",
        }));
        planned.insert(task.id);
        plans.push(plan);
    }
    Ok((results, plans))
}

/// Decides each job of a batch enqueue: new, an earlier job under its idempotency key (stored,
/// or earlier in this batch), or a key conflict. `stored` looks a key up in the store, as
/// `find_idempotent` does.
pub(crate) fn enqueue_outcomes(
    jobs: &[(orchion_domain::NewJob, Option<crate::IdempotencyKey>)],
    ids: &[(RunId, TaskId)],
    mut stored: impl FnMut(&crate::IdempotencyKey) -> Result<Option<Uuid>, StoreError>,
) -> Result<Vec<Enqueued>, StoreError> {
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut batch_keys: HashMap<&str, (usize, &[u8])> = HashMap::new();
    for (i, (_, idempotency)) in jobs.iter().enumerate() {
        let Some(key) = idempotency else {
            outcomes.push(Enqueued::New);
            continue;
        };
        if let Some(&(first, hash)) = batch_keys.get(key.key.as_str()) {
            outcomes.push(if hash == key.request_hash.as_slice() {
                Enqueued::Existing(ids[first].0)
            } else {
                Enqueued::Conflict(key.key.clone())
            });
            continue;
        }
        match stored(key) {
            Ok(Some(existing)) => outcomes.push(Enqueued::Existing(RunId::from_uuid(existing))),
            Ok(None) => {
                batch_keys.insert(&key.key, (i, &key.request_hash));
                outcomes.push(Enqueued::New);
            }
            Err(StoreError::IdempotencyConflict { key }) => outcomes.push(Enqueued::Conflict(key)),
            Err(e) => return Err(e),
        }
    }
    Ok(outcomes)
}

/// The results of a batch enqueue, in order: a job created now is built without reading it
/// back; one an idempotency key returned is read.
pub(crate) async fn enqueue_results(
    store: &(dyn crate::JobStore + Sync),
    outcomes: Vec<Enqueued>,
    jobs: Vec<(orchion_domain::NewJob, Option<crate::IdempotencyKey>)>,
    ids: Vec<(RunId, TaskId)>,
    now: OffsetDateTime,
) -> Vec<Result<crate::Created<Job>, StoreError>> {
    let mut results = Vec::with_capacity(jobs.len());
    for ((outcome, (job, _)), (run_id, task_id)) in outcomes.into_iter().zip(jobs).zip(ids) {
        results.push(match outcome {
            Enqueued::New => Ok(crate::Created {
                value: enqueued_job(run_id, task_id, job, now),
                created: true,
            }),
            Enqueued::Existing(existing) => {
                store.get_job(existing).await.map(|value| crate::Created {
                    value,
                    created: false,
                })
            }
            Enqueued::Conflict(key) => Err(StoreError::IdempotencyConflict { key }),
        });
    }
    results
}

impl PendingEvent {
    /// The `job.created` event of a job just enqueued.
    pub fn job_created(run_id: RunId, job: &orchion_domain::NewJob) -> Self {
        PendingEvent {
            kind: crate::kind::JOB_CREATED,
            subject: run_id.to_string(),
            project_id: job.project_id,
            data: serde_json::json!({ "job_id": run_id.to_string(), "executor": job.executor, "status": "queued" }),
        }
    }
}

/// Rows per multi-row INSERT (23 parameters each stays far below either backend's limit).
pub(crate) const INSERT_CHUNK: usize = 500;

/// What became of one job of a batch enqueue.
pub(crate) enum Enqueued {
    New,
    Existing(RunId),
    Conflict(String),
}

/// The job a batch enqueue just stored, built without reading it back.
pub(crate) fn enqueued_job(
    id: RunId,
    task_id: TaskId,
    job: orchion_domain::NewJob,
    now: OffsetDateTime,
) -> Job {
    Job {
        id,
        task_id,
        state: TaskState::new(&job.retry),
        run_after: from_micros(micros(job.run_at.unwrap_or(now).max(now))),
        name: job.name,
        project_id: job.project_id,
        executor: job.executor,
        spec: job.spec,
        priority: job.priority,
        retry: job.retry,
        timeouts: job.timeouts,
        placement: job.placement,
        concurrency: job.concurrency,
        node_id: None,
        lease_expires_at: None,
        output: None,
        outputs: None,
        error: None,
        exit_code: None,
        created_at: now,
        started_at: None,
        finished_at: None,
        attempts: Vec::new(),
    }
}

/// Whether `task` is running attempt `attempt` on `node`: the fence every report passes.
pub(crate) fn holds(task: &TaskRow, node: NodeId, attempt: u32) -> bool {
    task.status == TaskStatus::Running.as_str()
        && u32::try_from(task.attempts).ok() == Some(attempt)
        && task.node_id == Some(node.as_uuid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_on_a_character_boundary_and_marked() {
        assert_eq!(truncate("short".into(), 100), "short");
        let cut = truncate("é".repeat(100), 50);
        assert!(cut.len() <= 50, "{}", cut.len());
        assert!(cut.ends_with(TRUNCATED));
        assert!(cut.starts_with('é'));
    }

    #[test]
    fn microseconds_round_trip() {
        let now = crate::now();
        assert_eq!(from_micros(micros(now)), now);
    }

    #[test]
    fn retry_policies_round_trip_through_json() {
        let policy = RetryPolicy {
            non_retryable_exit_codes: vec![2, 126],
            ..RetryPolicy::default()
        };
        assert_eq!(retry_from_json(&retry_json(&policy)).unwrap(), policy);
    }
}

/// A job template as stored in a schedule (JSON).
pub(crate) fn job_json(job: &orchion_domain::NewJob) -> String {
    serde_json::json!({
        "name": job.name,
        "project_id": job.project_id.map(|p| p.to_string()),
        "executor": job.executor,
        "spec": job.spec,
        "priority": job.priority,
        "retry": retry_json(&job.retry),
        "schedule_to_start_ms": job.timeouts.schedule_to_start.map(duration_ms),
        "start_to_close_ms": job.timeouts.start_to_close.map(duration_ms),
        "heartbeat_ms": duration_ms(job.timeouts.heartbeat),
        "labels": job.placement.labels,
        "cpu_millis": job.placement.resources.cpu_millis,
        "memory_bytes": job.placement.resources.memory_bytes,
        "gpus": job.placement.resources.gpus,
        "concurrency": job.concurrency.as_ref().map(|c| serde_json::json!({"key": c.key, "limit": c.limit})),
    })
    .to_string()
}

pub(crate) fn job_from_json(text: &str) -> Result<orchion_domain::NewJob, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("schedule job {text}"));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| corrupt())?;
    let str_of = |key: &str| v[key].as_str().map(str::to_owned).ok_or_else(corrupt);
    let ms = |key: &str| v[key].as_i64().map(ms_duration);
    Ok(orchion_domain::NewJob {
        name: str_of("name")?,
        project_id: v["project_id"].as_str().and_then(|p| p.parse().ok()),
        executor: str_of("executor")?,
        spec: str_of("spec")?,
        priority: v["priority"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0),
        retry: retry_from_json(&v["retry"])?,
        timeouts: Timeouts {
            schedule_to_start: ms("schedule_to_start_ms"),
            start_to_close: ms("start_to_close_ms"),
            heartbeat: ms("heartbeat_ms").ok_or_else(corrupt)?,
        },
        placement: Placement {
            labels: serde_json::from_value(v["labels"].clone()).map_err(|_| corrupt())?,
            resources: Capacity {
                cpu_millis: v["cpu_millis"].as_u64().unwrap_or(0),
                memory_bytes: v["memory_bytes"].as_u64().unwrap_or(0),
                gpus: v["gpus"]
                    .as_u64()
                    .and_then(|g| u32::try_from(g).ok())
                    .unwrap_or(0),
            },
        },
        concurrency: match &v["concurrency"] {
            serde_json::Value::Null => None,
            c => Some(Concurrency {
                key: c["key"].as_str().ok_or_else(corrupt)?.to_owned(),
                limit: c["limit"]
                    .as_u64()
                    .and_then(|l| u32::try_from(l).ok())
                    .ok_or_else(corrupt)?,
            }),
        },
        run_at: None,
        trace_parent: None,
    })
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ScheduleRow {
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

pub(crate) const SCHEDULE_COLUMNS: &str = "id, name, cron, timezone, overlap, misfire, job, next_fire_us, last_fire_us, last_run_id, created_at";

impl TryFrom<ScheduleRow> for orchion_domain::Schedule {
    type Error = StoreError;

    fn try_from(row: ScheduleRow) -> Result<Self, StoreError> {
        Ok(orchion_domain::Schedule {
            id: orchion_domain::ScheduleId::from_uuid(row.id),
            cron: orchion_domain::CronSchedule::parse(&row.cron, &row.timezone)
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

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct WorkflowTypeRow {
    name: String,
    pub version: i32,
    project_id: Option<Uuid>,
    pub definition: sqlx::types::Json<serde_json::Value>,
    created_at: OffsetDateTime,
}

impl From<WorkflowTypeRow> for orchion_domain::WorkflowType {
    fn from(row: WorkflowTypeRow) -> Self {
        orchion_domain::WorkflowType {
            name: row.name,
            version: u32::try_from(row.version).unwrap_or(0),
            project_id: row.project_id.map(orchion_domain::ProjectId::from_uuid),
            definition: row.definition.0.to_string(),
            created_at: row.created_at,
        }
    }
}

//! Tasks as stored — the unit of work behind a job and behind each workflow step — and the
//! transaction steps every flow that changes tasks shares: lock one, insert many, end attempts
//! as planned, and apply an operator's event through `TaskState::next`.
//!
//! Invariant: a task changes status only through `TaskState::next` (here, or in the pure
//! planners of `plan.rs` the hot writes use). A task has a row in `task_queue` exactly while
//! it is queued and one in `task_leases` exactly while it runs: each step that moves a task
//! in or out of those statuses writes them in the same transaction
//! (`the_queue_and_the_leases_follow_every_status_change`).

use std::collections::BTreeMap;

use orchion_domain::{
    Attempt, AttemptStatus, Capacity, Concurrency, Job, NodeId, Placement, RetryPolicy, RunId,
    TaskEvent, TaskId, TaskState, TaskStatus, Timeouts,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    ClaimedTask, StoreError,
    backend::{Statement, Tx, Value},
    codec::{from_micros, micros, ms_duration, retry_from_json, retry_json},
    events::PendingEvent,
    plan::FinishPlan,
};

/// The columns of a [`TaskRow`], from [`TASKS`].
pub(crate) const TASK_COLUMNS: &str = "t.id, t.run_id, r.name, r.project_id, t.status, t.executor, t.spec, t.priority, t.labels, \
     t.cpu_millis, t.memory_bytes, t.gpus, t.concurrency_key, t.concurrency_limit, t.retry, \
     t.schedule_to_start_ms, t.start_to_close_ms, t.heartbeat_ms, t.attempts, t.attempt_budget, \
     t.cancel_requested, t.run_after_us, t.enqueued_us, l.node_id, l.lease_expires_us, t.output, t.error, \
     t.exit_code, t.log_bytes, t.log_seq, t.created_at, t.started_at, t.finished_at, t.outputs, r.kind, t.step, t.traceparent";

/// What [`TASK_COLUMNS`] are read from: each task with its run and, while it runs, its lease.
pub(crate) const TASKS: &str =
    "tasks t JOIN runs r ON r.id = t.run_id LEFT JOIN task_leases l ON l.task_id = t.id";

/// The same for the tasks that run: each lease with its task and run.
pub(crate) const LEASED_TASKS: &str =
    "task_leases l JOIN tasks t ON t.id = l.task_id JOIN runs r ON r.id = t.run_id";

/// The same for the queued tasks on PostgreSQL: each place in the queue with its task and run.
/// A queued task has no lease, so the leases are joined on nothing: the join only names the
/// (empty) lease columns of [`TASK_COLUMNS`], and PostgreSQL plans it away. (SQLite would try
/// the condition against every lease, so its claim joins them by id.)
pub(crate) const QUEUED_TASKS: &str = "task_queue q JOIN tasks t ON t.id = q.task_id \
     JOIN runs r ON r.id = t.run_id LEFT JOIN task_leases l ON FALSE";

/// The `step` of a job's one task: empty, which no workflow step's name is, so the trigger
/// counting workflow runs' changes (migration 0026) passes jobs by without a look.
pub(crate) const JOB_STEP: &str = "";

/// `SELECT` of [`TaskRow`]s matching `condition` (and whatever follows it: order, limit, lock).
pub(crate) fn select_tasks(condition: &str) -> String {
    format!("SELECT {TASK_COLUMNS} FROM {TASKS} WHERE {condition}")
}

/// Puts tasks just written or moved to `queued` in the queue, from their rows (migration 0028
/// of PostgreSQL: a task is queued exactly while it has a row in `task_queue`); the table or
/// `WITH` the rows come from follows.
pub(crate) const QUEUE_INSERT: &str = "INSERT INTO task_queue (task_id, executor, priority, enqueued_us, run_after_us, start_deadline_us) \
     SELECT id, executor, priority, enqueued_us, run_after_us, \
     CASE WHEN attempts = 0 THEN enqueued_us + schedule_to_start_ms * 1000 END FROM ";

/// [`QUEUE_INSERT`] from `tasks`: `id IN (` the list follows.
fn queue_from_tasks() -> String {
    format!("{QUEUE_INSERT}tasks WHERE id IN (")
}

/// Takes tasks out of the queue: `id IN (` the list follows.
pub(crate) const DEQUEUE: &str = "DELETE FROM task_queue WHERE task_id IN (";

/// Ends tasks' leases: `id IN (` the list follows.
pub(crate) const END_LEASES: &str = "DELETE FROM task_leases WHERE task_id IN (";

/// Runs `head` (one of [`queue_from_tasks`], [`DEQUEUE`], [`END_LEASES`]) for `ids`, a
/// statement per [`INSERT_CHUNK`].
pub(crate) async fn for_tasks<T: Tx>(
    tx: &mut T,
    head: &str,
    ids: &[Uuid],
) -> Result<(), StoreError> {
    for chunk in ids.chunks(INSERT_CHUNK) {
        let mut statement = Statement::new(head);
        statement.push_list(chunk.iter().map(|id| Value::from(*id)));
        statement.push(")");
        tx.execute(statement).await?;
    }
    Ok(())
}

/// A task row with its run's name, project and kind.
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
    /// `job` for a job; the step's key for a workflow.
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

    /// The task as handed to a node for `attempt`, its lease running from `now` for the
    /// task's heartbeat timeout.
    pub fn claimed(&self, attempt: u32, now: OffsetDateTime) -> ClaimedTask {
        let timeouts = self.timeouts();
        ClaimedTask {
            job_id: RunId::from_uuid(self.run_id),
            project_id: self.project_id.map(orchion_domain::ProjectId::from_uuid),
            task_id: TaskId::from_uuid(self.id),
            attempt,
            executor: self.executor.clone(),
            spec: self.spec.clone(),
            lease_expires_at: now + timeouts.heartbeat,
            timeouts,
            traceparent: self.traceparent.clone(),
        }
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

/// The columns of an [`AttemptRow`].
pub(crate) const ATTEMPT_COLUMNS: &str =
    "number, node_id, status, started_at, finished_at, exit_code, error";

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

/// A task to write: a job's, or a workflow step's.
pub(crate) struct TaskInsert<'a> {
    pub id: Uuid,
    pub run_id: Uuid,
    /// `job` for a job; the step's key for a workflow.
    pub step: &'a str,
    pub job: &'a orchion_domain::NewJob,
    /// `queued`, or a final status for a step that never runs (failed to render, or an empty
    /// fan-out that succeeds at once).
    pub status: TaskStatus,
    pub outputs: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// How many columns a new task is written with.
pub(crate) const TASK_INSERT_WIDTH: usize = 27;

/// The columns a new task is written with, in the order of [`TaskInsert::row`]: a column added
/// here without its value there (or the other way round) does not compile.
pub(crate) const TASK_INSERT_COLUMNS: [&str; TASK_INSERT_WIDTH] = [
    "id",
    "run_id",
    "step",
    "status",
    "executor",
    "spec",
    "priority",
    "labels",
    "cpu_millis",
    "memory_bytes",
    "gpus",
    "concurrency_key",
    "concurrency_limit",
    "retry",
    "schedule_to_start_ms",
    "start_to_close_ms",
    "heartbeat_ms",
    "attempts",
    "attempt_budget",
    "cancel_requested",
    "run_after_us",
    "enqueued_us",
    "created_at",
    "outputs",
    "error",
    "finished_at",
    "traceparent",
];

/// `INSERT INTO tasks (…columns…) ` — the values follow.
pub(crate) fn task_insert() -> String {
    format!("INSERT INTO tasks ({}) ", TASK_INSERT_COLUMNS.join(", "))
}

impl<'a> TaskInsert<'a> {
    /// The row to write for this task, created at `now`, in [`TASK_INSERT_COLUMNS`] order;
    /// `attempts` starts at 0 and `cancel_requested` false.
    pub fn row(&self, now: OffsetDateTime) -> [Value<'a>; TASK_INSERT_WIDTH] {
        let job = self.job;
        let resources = job.placement.resources;
        let millis = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let concurrency = job.concurrency.as_ref();
        [
            self.id.into(),
            self.run_id.into(),
            self.step.into(),
            self.status.as_str().into(),
            job.executor.as_str().into(),
            job.spec.as_str().into(),
            job.priority.into(),
            serde_json::json!(job.placement.labels).into(),
            i64::try_from(resources.cpu_millis)
                .unwrap_or(i64::MAX)
                .into(),
            i64::try_from(resources.memory_bytes)
                .unwrap_or(i64::MAX)
                .into(),
            i32::try_from(resources.gpus).unwrap_or(i32::MAX).into(),
            concurrency.map(|c| c.key.as_str()).into(),
            concurrency
                .map(|c| i32::try_from(c.limit).unwrap_or(i32::MAX))
                .into(),
            retry_json(&job.retry).into(),
            job.timeouts.schedule_to_start.map(millis).into(),
            job.timeouts.start_to_close.map(millis).into(),
            millis(job.timeouts.heartbeat).into(),
            0i32.into(),
            i32::try_from(TaskState::new(&job.retry).attempt_budget)
                .unwrap_or(i32::MAX)
                .into(),
            false.into(),
            micros(job.run_at.unwrap_or(now).max(now)).into(),
            micros(now).into(),
            now.into(),
            self.outputs.into(),
            self.error.into(),
            self.status.is_terminal().then_some(now).into(),
            job.trace_parent.as_deref().into(),
        ]
    }
}

/// Rows per multi-row statement (27 parameters each stays far below either backend's limit).
pub(crate) const INSERT_CHUNK: usize = 500;

/// The task of `task_id`, locked for a change where the backend locks rows.
pub(crate) async fn lock_task<T: Tx>(
    tx: &mut T,
    task_id: Uuid,
) -> Result<Option<TaskRow>, StoreError> {
    let sql = format!("{}{}", select_tasks("t.id = $1"), T::TASK_LOCK);
    tx.fetch_optional(Statement::new(sql).bind(task_id)).await
}

/// Inserts tasks, a statement per [`INSERT_CHUNK`], and queues the queued ones. A task whose
/// `(run, step)` exists already is left as it is (its new id is in no row, so it is not
/// queued either), so writing a workflow's ready steps twice is harmless.
pub(crate) async fn insert_tasks<T: Tx>(
    tx: &mut T,
    rows: &[TaskInsert<'_>],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut insert = Statement::new(if T::INSERT_IN_WITH {
            format!("WITH t AS ({}", task_insert())
        } else {
            task_insert()
        });
        insert.push_values(chunk.iter().map(|task| task.row(now)));
        insert.push(" ON CONFLICT (run_id, step) DO NOTHING");
        if T::INSERT_IN_WITH {
            // What was inserted, read back by the queue's insert in the same statement.
            insert.push(&format!(
                " RETURNING id, executor, priority, enqueued_us, run_after_us, attempts, \
                 schedule_to_start_ms, status) {QUEUE_INSERT}t WHERE status = 'queued'"
            ));
        }
        tx.execute(insert).await?;
        if !T::INSERT_IN_WITH {
            let queued: Vec<Uuid> = chunk
                .iter()
                .filter(|task| task.status == TaskStatus::Queued)
                .map(|task| task.id)
                .collect();
            for_tasks(tx, &queue_from_tasks(), &queued).await?;
        }
    }
    Ok(())
}

/// Ends attempts as their plans say, two statements per chunk of tasks. The caller has checked
/// each attempt is the current one.
pub(crate) async fn finish_attempts<T: Tx>(
    tx: &mut T,
    plans: &[FinishPlan],
) -> Result<(), StoreError> {
    for chunk in plans.chunks(INSERT_CHUNK) {
        let mut attempts =
            Statement::new("WITH v (task_id, number, status, finished_at, exit_code, error) AS (");
        attempts.push_values(chunk.iter().map(|p| {
            [
                Value::from(p.task_id),
                p.number.into(),
                p.attempt_status.into(),
                p.now.into(),
                p.exit_code.into(),
                p.error.as_deref().into(),
            ]
        }));
        attempts.push(
            ") UPDATE attempts SET status = v.status, finished_at = v.finished_at, exit_code = v.exit_code, \
             error = v.error FROM v WHERE attempts.task_id = v.task_id AND attempts.number = v.number",
        );
        tx.execute(attempts).await?;
        let mut tasks = Statement::new(
            "WITH v (id, status, cancel_requested, attempt_budget, run_after_us, output, outputs, error, exit_code, finished_at) AS (",
        );
        tasks.push_values(chunk.iter().map(|p| {
            [
                Value::from(p.task_id),
                p.status.as_str().into(),
                p.cancel_requested.into(),
                p.attempt_budget.into(),
                p.run_after_us.into(),
                p.output.as_deref().into(),
                p.outputs.as_deref().into(),
                p.error.as_deref().into(),
                p.exit_code.into(),
                p.finished_at.into(),
            ]
        }));
        tasks.push(")");
        if T::INSERT_IN_WITH {
            // The leases end in the same statement.
            tasks.push(", e AS (DELETE FROM task_leases WHERE task_id IN (SELECT id FROM v))");
        }
        tasks.push(
            " UPDATE tasks SET status = v.status, cancel_requested = v.cancel_requested, \
             attempt_budget = v.attempt_budget, run_after_us = v.run_after_us, output = COALESCE(v.output, tasks.output), outputs = COALESCE(v.outputs, tasks.outputs), error = v.error, \
             exit_code = v.exit_code, finished_at = v.finished_at FROM v WHERE tasks.id = v.id",
        );
        tx.execute(tasks).await?;
        if !T::INSERT_IN_WITH {
            let ended: Vec<Uuid> = chunk.iter().map(|p| p.task_id).collect();
            for_tasks(tx, END_LEASES, &ended).await?;
        }
        let retried: Vec<Uuid> = chunk
            .iter()
            .filter(|p| p.status == TaskStatus::Queued)
            .map(|p| p.task_id)
            .collect();
        for_tasks(tx, &queue_from_tasks(), &retried).await?;
    }
    Ok(())
}

/// Applies an operator's `event` (a cancel request, a retry) to `task`, read locked. Returns
/// whether anything changed; a transition the task's state refuses is a conflict.
pub(crate) async fn apply_to_task<T: Tx>(
    tx: &mut T,
    task: &TaskRow,
    event: TaskEvent,
) -> Result<bool, StoreError> {
    let state = task.state()?;
    let next = state
        .next(&event, &task.policy()?, 0.0)
        .map_err(|e| StoreError::Conflict(e.to_string()))?
        .state;
    if next == state {
        return Ok(false);
    }
    let now = crate::now();
    let requeued = next.status == TaskStatus::Queued && state.status != TaskStatus::Queued;
    let (run_after, enqueued) = if requeued {
        (micros(now), micros(now))
    } else {
        (task.run_after_us, task.enqueued_us)
    };
    let finished_at = next.status.is_terminal().then_some(now);
    tx.execute(
        Statement::new(
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
        .bind(requeued),
    )
    .await?;
    if state.status == TaskStatus::Queued && next.status != TaskStatus::Queued {
        for_tasks(tx, DEQUEUE, &[task.id]).await?;
    }
    if state.status == TaskStatus::Running && next.status != TaskStatus::Running {
        for_tasks(tx, END_LEASES, &[task.id]).await?;
    }
    if requeued {
        for_tasks(tx, &queue_from_tasks(), &[task.id]).await?;
    }
    if next.status != state.status {
        tx.append_event(PendingEvent::job_status(
            task,
            state.status,
            next.status,
            state.attempts,
        ))
        .await?;
    }
    Ok(true)
}

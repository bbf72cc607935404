//! Jobs: enqueue, claim under a lease, extend, complete (fenced), expire, cancel, retry, logs,
//! and what the queue holds — the [`JobStore`] half of the store, written once for every
//! backend. The three hot writes (enqueue, claim, finish) are each backend's own
//! ([`StoreBackend::enqueue`], [`StoreBackend::claim`], [`StoreBackend::finish`]); the
//! decisions in them are the pure functions of `plan.rs`.
//!
//! Invariants: a task changes status only through `TaskState::next`; an attempt's result, lease
//! extension or log line is accepted only from the node holding that attempt's lease, and only
//! while the task is running that attempt (fencing, [`holds`]), so a task completes once.

use async_trait::async_trait;
use orchion_domain::{
    Attempt, AttemptOutcome, Capacity, Cursor, Job, JobFilter, Labels, NewJob, NodeId, NodeStatus,
    Page, PageRequest, RunId, TaskEvent, TaskId, TaskStatus, Timeouts,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Created, IdempotencyKey, StoreError,
    backend::{Statement, StoreBackend, Tx},
    codec::{MAX_LOG_BYTES, contains_pattern, direction, from_micros, micros, page_limit},
    error::missing_project,
    events::PendingEvent,
    plan::{Enqueued, enqueued_job, holds, plan_finish},
    tasks::{
        ATTEMPT_COLUMNS, AttemptRow, DEQUEUE, LEASED_TASKS, TASK_COLUMNS, TaskRow, apply_to_task,
        finish_attempts, for_tasks, lock_task, select_tasks,
    },
};

/// Tasks in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveCounts {
    pub queued: u64,
    pub running: u64,
}

/// The tasks ready to run and waiting for one executor and one set of placement labels: what an
/// autoscaler reads to add nodes of that kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub executor: String,
    /// The placement labels the tasks need, as a JSON object.
    pub labels: String,
    pub depth: u64,
    /// When the longest-waiting one was queued.
    pub oldest: OffsetDateTime,
}

/// A node asking for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub node_id: NodeId,
    /// Executors the node offers.
    pub executors: Vec<String>,
    pub labels: Labels,
    /// The node's whole capacity; what its running tasks use is subtracted.
    pub capacity: Capacity,
    /// At most this many tasks.
    pub max: usize,
    /// The time to claim at: tasks due by then are candidates, leases run from then.
    pub now: OffsetDateTime,
}

/// A task a node claimed: its attempt holds a lease until `lease_expires_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    pub job_id: RunId,
    /// The project the task's run belongs to.
    pub project_id: Option<orchion_domain::ProjectId>,
    pub task_id: TaskId,
    pub attempt: u32,
    pub executor: String,
    pub spec: String,
    pub timeouts: Timeouts,
    pub lease_expires_at: OffsetDateTime,
    /// The W3C trace context the task was created in, for the agent to continue.
    pub traceparent: Option<String>,
}

/// What a recorded result did to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// The task's status after the result.
    pub status: TaskStatus,
    pub run_id: RunId,
    /// The task is a workflow step, so its run may move on.
    pub workflow: bool,
}

/// How one attempt ended, as its node reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptReport {
    pub node: NodeId,
    pub task: TaskId,
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    pub output: Option<String>,
    /// What a succeeded step produced, a JSON object; workflow steps feed it to later steps.
    pub outputs: Option<String>,
}

/// Whether a node still holds an attempt's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Extended; `cancel_requested` tells the agent to stop the work.
    Held { cancel_requested: bool },
    /// Gone: the attempt was lost, finished or taken over. Stop the work and report nothing.
    Lost,
}

/// A log line as an agent sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLogLine {
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    pub line: String,
    pub at: OffsetDateTime,
}

/// A stored log line.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Position in the task's log, from 1.
    pub seq: i64,
    pub attempt: u32,
    pub stream: String,
    pub line: String,
    pub at: OffsetDateTime,
}

/// The job half of the store: queue, leases, results and logs. A supertrait of
/// [`crate::Store`], so an `Arc<dyn Store>` has these methods too.
/// A job to enqueue, with what makes it idempotent and the audit entry of the request that
/// made it.
#[derive(Debug, Clone)]
pub struct JobIntake {
    pub job: NewJob,
    pub idempotency: Option<IdempotencyKey>,
    /// Appended to the audit log in the job's own transaction when the job is created now
    /// (with status 201 and the job's id as its resource); nothing is appended otherwise.
    pub audit: Option<std::sync::Arc<orchion_domain::AuditEntry>>,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Enqueues jobs in one transaction. Each gets its own outcome: created, the job an earlier
    /// call with the same idempotency key created, or a key conflict. The outer error means
    /// nothing was written.
    async fn create_jobs(
        &self,
        jobs: Vec<JobIntake>,
    ) -> Result<Vec<Result<Created<Job>, StoreError>>, StoreError>;

    /// Enqueues a job, or returns the one an earlier call with the same key created.
    async fn create_job(
        &self,
        job: NewJob,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<Job>, StoreError> {
        self.create_jobs(vec![JobIntake {
            job,
            idempotency,
            audit: None,
        }])
        .await?
        .pop()
        .unwrap_or_else(|| Err(StoreError::Corrupt("a batch of one came back empty".into())))
    }

    /// A job with its attempts.
    async fn get_job(&self, id: RunId) -> Result<Job, StoreError>;

    /// Jobs matching the filter, in id (creation) order, without their attempts.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: PageRequest,
    ) -> Result<Page<Job>, StoreError>;

    /// Gives a node the queued tasks that fit it — by priority, then age — each under a new
    /// attempt with a lease.
    async fn claim_tasks(&self, claim: &ClaimRequest) -> Result<Vec<ClaimedTask>, StoreError>;

    /// Extends the leases `node` holds; each answer says whether it still holds it.
    async fn extend_leases(
        &self,
        node: NodeId,
        leases: &[(TaskId, u32)],
    ) -> Result<Vec<LeaseState>, StoreError>;

    /// Records how attempts ended, in one transaction. Each report gets its own outcome: the
    /// task's new status, or [`StoreError::Stale`] when its node no longer holds the attempt.
    /// The outer error means nothing was written.
    async fn complete_attempts(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<Completed, StoreError>>, StoreError>;

    /// Records how an attempt ended, if `node` still holds it ([`StoreError::Stale`] if not),
    /// and returns the task's new status.
    async fn complete_attempt(
        &self,
        node: NodeId,
        task: TaskId,
        attempt: u32,
        outcome: AttemptOutcome,
        output: Option<String>,
    ) -> Result<TaskStatus, StoreError> {
        let report = AttemptReport {
            node,
            task,
            attempt,
            outcome,
            output,
            outputs: None,
        };
        self.complete_attempts(vec![report])
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("a batch of one came back empty".into())))
            .map(|done| done.status)
    }

    /// Ends attempts whose lease expired by `now` (lost: retried by policy) and fails tasks
    /// that waited past `schedule_to_start`. Returns how many tasks changed.
    async fn expire_leases(&self, now: OffsetDateTime) -> Result<usize, StoreError>;

    /// Lets go of the running attempts of `executor` on `node` without ending them: their work
    /// runs outside the agent (a Kubernetes Job) and goes on; they keep their attempt number and
    /// lease, and the next node to [`JobStore::adopt_released`] them follows that work. Not
    /// adopted before the lease ends, they are lost as any other. Returns how many.
    async fn release_attempts(&self, node: NodeId, executor: &str) -> Result<usize, StoreError>;

    /// Takes over up to `claim.max` released attempts of `executor` for `claim.node_id`: the
    /// same attempt, with a fresh lease. The node they were released by can no longer report
    /// or renew them.
    async fn adopt_released(
        &self,
        claim: &ClaimRequest,
        executor: &str,
    ) -> Result<Vec<ClaimedTask>, StoreError>;

    /// Ends every attempt running on `node` as lost (the node is not alive), each with `why`
    /// as its error.
    async fn lose_node_attempts(&self, node: NodeId, why: &str) -> Result<usize, StoreError>;

    /// Cancels a job: at once when queued; a running attempt is asked to stop.
    async fn cancel_job(&self, id: RunId) -> Result<Job, StoreError>;

    /// Queues a failed or cancelled job again with a fresh attempt budget.
    async fn retry_job(&self, id: RunId) -> Result<Job, StoreError>;

    /// Appends log lines for an attempt `node` holds.
    async fn append_logs(
        &self,
        node: NodeId,
        task: TaskId,
        attempt: u32,
        lines: &[NewLogLine],
    ) -> Result<(), StoreError>;

    /// A task's log lines after `after`, oldest first.
    async fn read_logs(
        &self,
        task: TaskId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError>;

    /// How many tasks (of jobs and of workflow steps) are queued and running. Only work in
    /// flight is counted, so the cost follows the queue's depth, not the history's length.
    async fn active_task_counts(&self) -> Result<ActiveCounts, StoreError>;

    /// Ready tasks (queued, due by `now`) grouped by executor and placement labels.
    async fn queue_depths(&self, now: OffsetDateTime) -> Result<Vec<QueueDepth>, StoreError>;

    /// Nodes that have attempts running but are not alive by the store's record: each with its
    /// status, or `None` when the node no longer exists.
    async fn lost_running_nodes(&self) -> Result<Vec<(NodeId, Option<NodeStatus>)>, StoreError>;

    /// When the earliest queued task that is not yet due at `now` becomes due: what a claim
    /// that found nothing sleeps until. A task due already is not counted — if the claim did
    /// not take it, its node cannot run it, and waiting for it would be a busy loop.
    async fn next_run_after(
        &self,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, StoreError>;
}

/// Tasks the reaper handles in one transaction.
const REAP_BATCH: &str = " LIMIT 500";

#[async_trait]
impl<B: StoreBackend> JobStore for B {
    async fn create_jobs(
        &self,
        jobs: Vec<JobIntake>,
    ) -> Result<Vec<Result<Created<Job>, StoreError>>, StoreError> {
        // A batch that fails on a missing project fails as a whole; its jobs alone (as the
        // intake retries them) say whose project is missing.
        let project = match jobs.as_slice() {
            [intake] => intake.job.project_id,
            _ => None,
        };
        self.enqueue(jobs)
            .await
            .map_err(|e| missing_project(e, project))
    }

    async fn get_job(&self, id: RunId) -> Result<Job, StoreError> {
        let row: TaskRow = self
            .read_optional(
                Statement::new(select_tasks("t.run_id = $1 AND r.kind = 'job'")).bind(id.as_uuid()),
            )
            .await?
            .ok_or_else(|| job_not_found(id))?;
        let attempts = self
            .read_all::<AttemptRow>(
                Statement::new(format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task_id = $1 ORDER BY number"
                ))
                .bind(row.id),
            )
            .await?
            .into_iter()
            .map(Attempt::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        row.into_job(attempts)
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: PageRequest,
    ) -> Result<Page<Job>, StoreError> {
        let (after, order) = direction(filter.newest_first);
        // The cursor bounds both sides of the join: PostgreSQL does not carry it across
        // `r.id = t.run_id`, and merge-joined from the end of `runs` up to the cursor (a page
        // deep in three million jobs took 250 ms).
        let sql = select_tasks(&format!(
            "r.kind = 'job' AND ($1 IS NULL OR t.status = $1) AND ($2 IS NULL OR r.project_id = $2) \
             AND ($3 IS NULL OR t.executor = $3) AND ($4 IS NULL OR t.run_id {after} $4) AND ($4 IS NULL OR r.id {after} $4) \
             AND ($6 IS NULL OR lower(r.name) LIKE $6 ESCAPE '\\') \
             ORDER BY t.run_id {order} LIMIT $5"
        ));
        let rows: Vec<TaskRow> = self
            .read_all(
                Statement::new(sql)
                    .bind(filter.status.map(|s| s.as_str()))
                    .bind(filter.project_id.map(|p| p.as_uuid()))
                    .bind(filter.executor.as_deref())
                    .bind(page.after.map(|c| c.0))
                    .bind(page_limit(page))
                    .bind(filter.name.as_deref().map(contains_pattern)),
            )
            .await?;
        let limit = page.limit as usize;
        let more = rows.len() > limit;
        let items = rows
            .into_iter()
            .take(limit)
            .map(|row| row.into_job(Vec::new()))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            items.last().map(|j| Cursor(j.id.as_uuid()))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn claim_tasks(&self, claim: &ClaimRequest) -> Result<Vec<ClaimedTask>, StoreError> {
        self.claim(claim).await
    }

    async fn extend_leases(
        &self,
        node: NodeId,
        leases: &[(TaskId, u32)],
    ) -> Result<Vec<LeaseState>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let now = crate::now();
        let mut tx = self.begin().await?;
        let mut states = Vec::with_capacity(leases.len());
        for (task_id, attempt) in leases {
            let held = match lock_task(&mut tx, task_id.as_uuid()).await? {
                Some(task) if holds(&task, node, *attempt) => {
                    tx.execute(
                        Statement::new(
                            "UPDATE task_leases SET lease_expires_us = $2 WHERE task_id = $1",
                        )
                        .bind(task.id)
                        .bind(micros(now + task.timeouts().heartbeat)),
                    )
                    .await?;
                    LeaseState::Held {
                        cancel_requested: task.cancel_requested,
                    }
                }
                _ => LeaseState::Lost,
            };
            states.push(held);
        }
        tx.commit().await?;
        Ok(states)
    }

    async fn complete_attempts(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<Completed, StoreError>>, StoreError> {
        self.finish(reports).await
    }

    async fn expire_leases(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        let now_us = micros(now);
        let mut tx = self.begin().await?;
        let expired: Vec<TaskRow> = tx
            .fetch_all(
                Statement::new(format!(
                    "SELECT {TASK_COLUMNS} FROM task_leases l{} JOIN tasks t ON t.id = l.task_id \
                     JOIN runs r ON r.id = t.run_id WHERE l.lease_expires_us < $1{REAP_BATCH}{}",
                    B::Tx::LEASE_INDEX,
                    B::Tx::LEASED_LOCK_SKIP
                ))
                .bind(now_us),
            )
            .await?;
        let plans = expired
            .iter()
            .map(|task| plan_finish(task, AttemptOutcome::Lost, None, None, now, rand::random()))
            .collect::<Result<Vec<_>, _>>()?;
        finish_attempts(&mut tx, &plans).await?;
        let mut events: Vec<PendingEvent> = plans.into_iter().map(|p| p.event).collect();
        // By the queue's start-deadline index: no scan of the queue.
        let late: Vec<TaskRow> = tx
            .fetch_all(
                Statement::new(format!(
                    "SELECT {TASK_COLUMNS} FROM task_queue q{} JOIN tasks t ON t.id = q.task_id \
                     JOIN runs r ON r.id = t.run_id LEFT JOIN task_leases l ON l.task_id = t.id \
                     WHERE q.start_deadline_us < $1{REAP_BATCH}{}",
                    B::Tx::START_DEADLINE_INDEX,
                    B::Tx::QUEUED_LOCK_SKIP
                ))
                .bind(now_us),
            )
            .await?;
        let ids: Vec<Uuid> = late.iter().map(|task| task.id).collect();
        for_tasks(&mut tx, DEQUEUE, &ids).await?;
        for task in &late {
            let state = task.state()?;
            let next = state
                .next(&TaskEvent::ScheduleTimedOut, &task.policy()?, 0.0)
                .map_err(|e| StoreError::Conflict(e.to_string()))?
                .state;
            tx.execute(
                Statement::new(
                    "UPDATE tasks SET status = $2, error = $3, finished_at = $4 WHERE id = $1",
                )
                .bind(task.id)
                .bind(next.status.as_str())
                .bind("no node started the job within timeouts.schedule_to_start")
                .bind(crate::now()),
            )
            .await?;
            events.push(PendingEvent::job_status(
                task,
                state.status,
                next.status,
                state.attempts,
            ));
        }
        if expired.is_empty() && late.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        tx.append_events(&events).await?;
        tx.commit().await?;
        Ok(expired.len() + late.len())
    }

    async fn release_attempts(&self, node: NodeId, executor: &str) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let released = tx
            .execute(
                // Through the tasks' row locks, which every change of a lease takes first.
                Statement::new(format!(
                    "UPDATE task_leases SET node_id = NULL WHERE task_id IN (SELECT l.task_id FROM {LEASED_TASKS} \
                     WHERE l.node_id = $1 AND l.executor = $2{})",
                    B::Tx::LEASED_LOCK
                ))
                .bind(node.as_uuid())
                .bind(executor),
            )
            .await?;
        tx.commit().await?;
        Ok(usize::try_from(released).unwrap_or(usize::MAX))
    }

    async fn adopt_released(
        &self,
        claim: &ClaimRequest,
        executor: &str,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        // Most claims find nothing released: a read says so without the write turn.
        let any: Vec<(i32,)> = self
            .read_all(
                Statement::new(
                    "SELECT 1 FROM task_leases WHERE node_id IS NULL AND executor = $1 LIMIT 1",
                )
                .bind(executor),
            )
            .await?;
        if any.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let limit = i64::try_from(claim.max).unwrap_or(i64::MAX);
        let released: Vec<TaskRow> = tx
            .fetch_all(
                Statement::new(format!(
                    "SELECT {TASK_COLUMNS} FROM {LEASED_TASKS} \
                     WHERE l.node_id IS NULL AND l.executor = $1 AND l.lease_expires_us >= $2 LIMIT $3{}",
                    B::Tx::LEASED_LOCK_SKIP
                ))
                .bind(executor)
                .bind(micros(claim.now))
                .bind(limit),
            )
            .await?;
        if released.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let mut adopted = Vec::with_capacity(released.len());
        for task in released {
            let claimed = task.claimed(u32::try_from(task.attempts).unwrap_or(0), claim.now);
            tx.execute(
                Statement::new(
                    "UPDATE task_leases SET node_id = $2, lease_expires_us = $3 WHERE task_id = $1",
                )
                .bind(task.id)
                .bind(claim.node_id.as_uuid())
                .bind(micros(claimed.lease_expires_at)),
            )
            .await?;
            tx.execute(
                Statement::new(
                    "UPDATE attempts SET node_id = $2 WHERE task_id = $1 AND number = $3",
                )
                .bind(task.id)
                .bind(claim.node_id.as_uuid())
                .bind(task.attempts),
            )
            .await?;
            adopted.push(claimed);
        }
        tx.commit().await?;
        Ok(adopted)
    }

    async fn lose_node_attempts(&self, node: NodeId, why: &str) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let running: Vec<TaskRow> = tx
            .fetch_all(
                Statement::new(format!(
                    "SELECT {TASK_COLUMNS} FROM {LEASED_TASKS} WHERE l.node_id = $1{}",
                    B::Tx::LEASED_LOCK
                ))
                .bind(node.as_uuid()),
            )
            .await?;
        let now = crate::now();
        let plans = running
            .iter()
            .map(|task| {
                let mut plan =
                    plan_finish(task, AttemptOutcome::Lost, None, None, now, rand::random())?;
                plan.error = Some(why.to_owned());
                Ok(plan)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        finish_attempts(&mut tx, &plans).await?;
        let events: Vec<PendingEvent> = plans.into_iter().map(|p| p.event).collect();
        tx.append_events(&events).await?;
        tx.commit().await?;
        Ok(running.len())
    }

    async fn cancel_job(&self, id: RunId) -> Result<Job, StoreError> {
        let mut tx = self.begin().await?;
        apply_to_job(&mut tx, id, TaskEvent::CancelRequested).await?;
        tx.commit().await?;
        self.get_job(id).await
    }

    async fn retry_job(&self, id: RunId) -> Result<Job, StoreError> {
        let mut tx = self.begin().await?;
        apply_to_job(&mut tx, id, TaskEvent::Retry).await?;
        tx.commit().await?;
        self.get_job(id).await
    }

    async fn append_logs(
        &self,
        node: NodeId,
        task_id: TaskId,
        attempt: u32,
        lines: &[NewLogLine],
    ) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        let task = lock_task(&mut tx, task_id.as_uuid())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "task",
                id: task_id.to_string(),
            })?;
        if !holds(&task, node, attempt) {
            return Err(StoreError::Stale(format!(
                "attempt {attempt} of task {task_id} is not running on node {node}: its logs are refused"
            )));
        }
        let mut bytes = task.log_bytes;
        let mut seq = task.log_seq;
        for line in lines {
            if bytes >= MAX_LOG_BYTES {
                break;
            }
            let len = i64::try_from(line.line.len()).unwrap_or(i64::MAX);
            let (stream, text) = if bytes.saturating_add(len) > MAX_LOG_BYTES {
                (
                    "system",
                    format!("[log truncated by orchion: more than {MAX_LOG_BYTES} bytes]"),
                )
            } else {
                (line.stream.as_str(), line.line.clone())
            };
            seq += 1;
            bytes = bytes.saturating_add(len);
            tx.execute(
                Statement::new(
                    "INSERT INTO task_logs (task_id, seq, attempt, stream, line, at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(task.id)
                .bind(seq)
                .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
                .bind(stream)
                .bind(text)
                .bind(line.at),
            )
            .await?;
        }
        tx.execute(
            Statement::new("UPDATE tasks SET log_bytes = $2, log_seq = $3 WHERE id = $1")
                .bind(task.id)
                .bind(bytes)
                .bind(seq),
        )
        .await?;
        tx.commit().await
    }

    async fn read_logs(
        &self,
        task_id: TaskId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError> {
        let rows: Vec<LogRow> = self
            .read_all(
                Statement::new(
                    "SELECT seq, attempt, stream, line, at FROM task_logs WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(task_id.as_uuid())
                .bind(after)
                .bind(i64::from(limit)),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| LogLine {
                seq: r.seq,
                attempt: u32::try_from(r.attempt).unwrap_or(0),
                stream: r.stream,
                line: r.line,
                at: r.at,
            })
            .collect())
    }

    async fn active_task_counts(&self) -> Result<ActiveCounts, StoreError> {
        let (queued, running): (i64, i64) = self
            .read_one(Statement::new(
                "SELECT (SELECT count(*) FROM task_queue), (SELECT count(*) FROM task_leases)",
            ))
            .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(ActiveCounts {
            queued: count(queued),
            running: count(running),
        })
    }

    async fn queue_depths(&self, now: OffsetDateTime) -> Result<Vec<QueueDepth>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = self
            .read_all(
                Statement::new(
                    "SELECT q.executor, CAST(t.labels AS TEXT), COUNT(*), MIN(q.enqueued_us) \
                     FROM task_queue q JOIN tasks t ON t.id = q.task_id WHERE q.run_after_us <= $1 \
                     GROUP BY q.executor, CAST(t.labels AS TEXT) ORDER BY q.executor, CAST(t.labels AS TEXT)",
                )
                .bind(micros(now)),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(executor, labels, depth, oldest)| QueueDepth {
                executor,
                labels,
                depth: u64::try_from(depth).unwrap_or(0),
                oldest: from_micros(oldest),
            })
            .collect())
    }

    async fn lost_running_nodes(&self) -> Result<Vec<(NodeId, Option<NodeStatus>)>, StoreError> {
        let rows: Vec<(Uuid, Option<String>)> = self
            .read_all(Statement::new(
                "SELECT DISTINCT l.node_id, n.status FROM task_leases l LEFT JOIN nodes n ON n.id = l.node_id \
                 WHERE l.node_id IS NOT NULL \
                 AND (n.id IS NULL OR n.status NOT IN ('ready', 'draining'))",
            ))
            .await?;
        rows.into_iter()
            .map(|(id, status)| {
                let status = status
                    .map(|s| s.parse::<NodeStatus>().map_err(StoreError::Corrupt))
                    .transpose()?;
                Ok((NodeId::from_uuid(id), status))
            })
            .collect()
    }

    async fn next_run_after(
        &self,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let (next,): (Option<i64>,) = self
            .read_one(
                Statement::new(
                    "SELECT min(run_after_us) FROM task_queue \
                     WHERE run_after_us > enqueued_us AND run_after_us > $1",
                )
                .bind(micros(now)),
            )
            .await?;
        Ok(next.map(from_micros))
    }
}

fn job_not_found(id: RunId) -> StoreError {
    StoreError::NotFound {
        kind: "job",
        id: id.to_string(),
    }
}

/// Applies an operator's event (cancel, retry) to a job's task.
async fn apply_to_job<T: Tx>(tx: &mut T, run: RunId, event: TaskEvent) -> Result<(), StoreError> {
    let sql = format!(
        "{}{}",
        select_tasks("t.run_id = $1 AND r.kind = 'job'"),
        T::TASK_LOCK
    );
    let task: TaskRow = tx
        .fetch_optional(Statement::new(sql).bind(run.as_uuid()))
        .await?
        .ok_or_else(|| job_not_found(run))?;
    apply_to_task(tx, &task, event).await.map_err(|e| match e {
        StoreError::Conflict(message) => StoreError::Conflict(format!("job {run}: {message}")),
        other => other,
    })?;
    Ok(())
}

/// The results of a batch enqueue, in order: a job created now is built without reading it
/// back; one an idempotency key returned is read.
pub(crate) async fn enqueue_results(
    store: &(dyn JobStore + Sync),
    outcomes: Vec<Enqueued>,
    jobs: Vec<JobIntake>,
    ids: Vec<(RunId, TaskId)>,
    now: OffsetDateTime,
) -> Vec<Result<Created<Job>, StoreError>> {
    let mut results = Vec::with_capacity(jobs.len());
    for ((outcome, JobIntake { job, .. }), (run_id, task_id)) in
        outcomes.into_iter().zip(jobs).zip(ids)
    {
        results.push(match outcome {
            Enqueued::New => Ok(Created {
                value: enqueued_job(run_id, task_id, job, now),
                created: true,
            }),
            Enqueued::Existing(existing) => store.get_job(existing).await.map(|value| Created {
                value,
                created: false,
            }),
            Enqueued::Conflict(key) => Err(StoreError::IdempotencyConflict { key }),
        });
    }
    results
}

#[derive(Debug, sqlx::FromRow)]
struct LogRow {
    seq: i64,
    attempt: i32,
    stream: String,
    line: String,
    at: OffsetDateTime,
}

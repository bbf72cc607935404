//! The decisions of the work queue's hot writes, as pure functions both backends call: which
//! jobs of a batch are new ([`enqueue_outcomes`]), which tasks a node takes ([`select_claims`],
//! [`plan_claims`]), and how reported attempts end ([`judge_reports`], [`plan_finish`]). The
//! backends only read what these need and write what they decide, so the two cannot drift;
//! the table tests below pin each decision.

use std::collections::{HashMap, HashSet};

use orchion_domain::{
    AttemptOutcome, AttemptStatus, Capacity, Job, Labels, NewJob, NodeId, Placement, RunId,
    TaskEvent, TaskId, TaskState, TaskStatus,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    AttemptReport, ClaimRequest, ClaimedTask, Completed, IdempotencyKey, StoreError,
    codec::{MAX_OUTPUT_BYTES, from_micros, micros, truncate},
    events::PendingEvent,
    tasks::TaskRow,
};

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
    outcome: AttemptOutcome,
    output: Option<String>,
    outputs: Option<String>,
    now: OffsetDateTime,
    random: f64,
) -> Result<FinishPlan, StoreError> {
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
    claim: &ClaimRequest,
) -> Result<(Vec<ClaimedTask>, Vec<PendingEvent>), StoreError> {
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
        claimed.push(ClaimedTask {
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
pub(crate) type Judged = (Vec<Result<Completed, StoreError>>, Vec<FinishPlan>);

/// Judges a batch of attempt reports against the tasks they name (read in the same
/// transaction): each is refused if its task is unknown or its attempt is not the one running
/// on its node (fencing), or planned to end otherwise. Returns each report's result, in order,
/// and the plans to write.
pub(crate) fn judge_reports(
    tasks: &HashMap<Uuid, TaskRow>,
    reports: Vec<AttemptReport>,
    now: OffsetDateTime,
) -> Result<Judged, StoreError> {
    let mut results = Vec::with_capacity(reports.len());
    let mut plans: Vec<FinishPlan> = Vec::with_capacity(reports.len());
    let mut planned = HashSet::with_capacity(reports.len());
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
        results.push(Ok(Completed {
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
    jobs: &[(NewJob, Option<IdempotencyKey>)],
    ids: &[(RunId, TaskId)],
    mut stored: impl FnMut(&IdempotencyKey) -> Result<Option<Uuid>, StoreError>,
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

/// What became of one job of a batch enqueue.
pub(crate) enum Enqueued {
    New,
    Existing(RunId),
    Conflict(String),
}

/// The job a batch enqueue just stored, built without reading it back.
pub(crate) fn enqueued_job(id: RunId, task_id: TaskId, job: NewJob, now: OffsetDateTime) -> Job {
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

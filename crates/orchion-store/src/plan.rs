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
            Some(
                "the attempt's lease expired: its agent did not renew it in time (the agent \
                 stopped, crashed or lost its connection to every server)"
                    .to_owned(),
            ),
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
        events.push(PendingEvent::claimed(
            task,
            state.status,
            next.status,
            next.attempts,
            claim.node_id.as_uuid(),
        ));
        claimed.push(task.claimed(next.attempts, claim.now));
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
    jobs: &[crate::JobIntake],
    ids: &[(RunId, TaskId)],
    mut stored: impl FnMut(&IdempotencyKey) -> Result<Option<Uuid>, StoreError>,
) -> Result<Vec<Enqueued>, StoreError> {
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut batch_keys: HashMap<&str, (usize, &[u8])> = HashMap::new();
    for (i, intake) in jobs.iter().enumerate() {
        let Some(key) = &intake.idempotency else {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use orchion_domain::RetryPolicy;

    use super::*;
    use crate::codec::retry_json;

    /// A queued task with no placement needs, no concurrency key and a budget of 3 attempts.
    fn task() -> TaskRow {
        TaskRow {
            id: Uuid::now_v7(),
            run_id: Uuid::now_v7(),
            name: "job".into(),
            project_id: None,
            status: "queued".into(),
            executor: "shell".into(),
            spec: "{}".into(),
            priority: 0,
            labels: sqlx::types::Json(BTreeMap::new()),
            cpu_millis: 0,
            memory_bytes: 0,
            gpus: 0,
            concurrency_key: None,
            concurrency_limit: None,
            retry: sqlx::types::Json(retry_json(&RetryPolicy::default())),
            schedule_to_start_ms: None,
            start_to_close_ms: None,
            heartbeat_ms: 30_000,
            attempts: 0,
            attempt_budget: 3,
            cancel_requested: false,
            run_after_us: 0,
            enqueued_us: 0,
            node_id: None,
            lease_expires_us: None,
            output: None,
            error: None,
            exit_code: None,
            log_bytes: 0,
            log_seq: 0,
            created_at: OffsetDateTime::UNIX_EPOCH,
            started_at: None,
            finished_at: None,
            outputs: None,
            kind: "job".into(),
            step: "job".into(),
            traceparent: None,
        }
    }

    /// `task()` running attempt `attempt` on `node`.
    fn running(node: NodeId, attempt: i32) -> TaskRow {
        TaskRow {
            status: "running".into(),
            attempts: attempt,
            node_id: Some(node.as_uuid()),
            ..task()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .unwrap()
    }

    fn capacity(cpu_millis: u64, memory_bytes: u64, gpus: u32) -> Capacity {
        Capacity {
            cpu_millis,
            memory_bytes,
            gpus,
        }
    }

    #[test]
    fn claims_take_what_fits_in_order_up_to_the_limit() {
        let gpu = TaskRow { gpus: 1, ..task() };
        let big = TaskRow {
            cpu_millis: 3000,
            ..task()
        };
        let small = TaskRow {
            cpu_millis: 1000,
            ..task()
        };
        let on_linux = TaskRow {
            labels: sqlx::types::Json(BTreeMap::from([("os".into(), "linux".into())])),
            ..task()
        };
        let keyed = |key: &str, limit| TaskRow {
            concurrency_key: Some(key.into()),
            concurrency_limit: Some(limit),
            ..task()
        };
        let none = HashMap::new();
        struct Case {
            name: &'static str,
            candidates: Vec<TaskRow>,
            labels: Labels,
            free: Capacity,
            running: HashMap<String, u32>,
            max: usize,
            chosen: Vec<usize>,
        }
        let cases = [
            Case {
                name: "everything that fits, in the order given",
                candidates: vec![task(), task(), task()],
                labels: labels(&[]),
                free: capacity(0, 0, 0),
                running: none.clone(),
                max: 10,
                chosen: vec![0, 1, 2],
            },
            Case {
                name: "no more than max",
                candidates: vec![task(), task(), task()],
                labels: labels(&[]),
                free: capacity(0, 0, 0),
                running: none.clone(),
                max: 2,
                chosen: vec![0, 1],
            },
            Case {
                name: "a task needing a GPU the node lacks is passed over",
                candidates: vec![gpu.clone(), task()],
                labels: labels(&[]),
                free: capacity(8000, 1 << 30, 0),
                running: none.clone(),
                max: 10,
                chosen: vec![1],
            },
            Case {
                name: "what is taken is no longer free",
                candidates: vec![big.clone(), big.clone(), small.clone()],
                labels: labels(&[]),
                free: capacity(4000, 0, 0),
                running: none.clone(),
                max: 10,
                chosen: vec![0, 2],
            },
            Case {
                name: "placement labels must match the node's",
                candidates: vec![on_linux.clone(), on_linux.clone()],
                labels: labels(&[("os", "windows")]),
                free: capacity(0, 0, 0),
                running: none.clone(),
                max: 10,
                chosen: vec![],
            },
            Case {
                name: "labels the node has let the task in",
                candidates: vec![on_linux],
                labels: labels(&[("os", "linux"), ("zone", "a")]),
                free: capacity(0, 0, 0),
                running: none.clone(),
                max: 10,
                chosen: vec![0],
            },
            Case {
                name: "a concurrency limit counts what runs and what this claim takes",
                candidates: vec![
                    keyed("db", 2),
                    keyed("db", 2),
                    keyed("db", 2),
                    keyed("other", 1),
                ],
                labels: labels(&[]),
                free: capacity(0, 0, 0),
                running: HashMap::from([("db".to_owned(), 1)]),
                max: 10,
                chosen: vec![0, 3],
            },
        ];
        for case in cases {
            let chosen = select_claims(
                &case.candidates,
                &case.labels,
                case.free,
                case.running,
                case.max,
            );
            assert_eq!(chosen, case.chosen, "{}", case.name);
        }
    }

    #[test]
    fn resources_are_read_only_when_a_candidate_needs_them() {
        assert!(!need_resources(&[task(), task()]));
        let memory = TaskRow {
            memory_bytes: 1,
            ..task()
        };
        assert!(need_resources(&[task(), memory]));
        assert_eq!(
            free_capacity(capacity(4000, 100, 2), (Some(1500), Some(40), Some(1))),
            capacity(2500, 60, 1)
        );
        assert_eq!(
            free_capacity(capacity(4000, 100, 2), (None, None, None)),
            capacity(4000, 100, 2),
            "nothing running uses nothing"
        );
        assert_eq!(
            free_capacity(capacity(1000, 0, 0), (Some(5000), None, None)),
            capacity(0, 0, 0),
            "overcommitted is none free, not an underflow"
        );
    }

    #[test]
    fn a_claim_starts_a_new_attempt_under_a_lease_of_the_tasks_heartbeat() {
        let node = NodeId::new();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
        let candidates = [task(), task()];
        let claim = ClaimRequest {
            node_id: node,
            executors: vec!["shell".into()],
            labels: labels(&[]),
            capacity: capacity(0, 0, 0),
            max: 10,
            now,
        };
        let (claimed, events) = plan_claims(&candidates, &[1], &claim).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].task_id.as_uuid(), candidates[1].id);
        assert_eq!(claimed[0].attempt, 1);
        assert_eq!(
            claimed[0].lease_expires_at,
            now + time::Duration::seconds(30)
        );
        assert_eq!(events[0].data["from"], "queued");
        assert_eq!(events[0].data["to"], "running");
        assert_eq!(events[0].data["node_id"], node.to_string());
    }

    #[test]
    fn how_an_attempt_ends() {
        let node = NodeId::new();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
        let failed = |exit_code| AttemptOutcome::Failed {
            exit_code,
            error: "exit status 3".into(),
        };
        let cases = [
            (
                "success ends the task",
                running(node, 1),
                AttemptOutcome::Succeeded,
                TaskStatus::Succeeded,
                "succeeded",
                None,
            ),
            (
                "a failure with budget left queues it again",
                running(node, 1),
                failed(Some(3)),
                TaskStatus::Queued,
                "failed",
                Some(3),
            ),
            (
                "the last attempt's failure ends it",
                running(node, 3),
                failed(Some(3)),
                TaskStatus::Failed,
                "failed",
                Some(3),
            ),
            (
                "a lost attempt is retried",
                running(node, 1),
                AttemptOutcome::Lost,
                TaskStatus::Queued,
                "lost",
                None,
            ),
            (
                "a timed-out attempt is retried",
                running(node, 1),
                AttemptOutcome::TimedOut,
                TaskStatus::Queued,
                "timed_out",
                None,
            ),
            (
                "a cancelled attempt of a task asked to stop cancels it",
                TaskRow {
                    cancel_requested: true,
                    ..running(node, 1)
                },
                AttemptOutcome::Cancelled,
                TaskStatus::Cancelled,
                "cancelled",
                None,
            ),
        ];
        for (name, task, outcome, status, attempt_status, exit_code) in cases {
            let plan = plan_finish(
                &task,
                outcome,
                Some("out".into()),
                Some("{}".into()),
                now,
                0.5,
            )
            .unwrap();
            assert_eq!(plan.status, status, "{name}");
            assert_eq!(plan.attempt_status, attempt_status, "{name}");
            assert_eq!(plan.exit_code, exit_code, "{name}");
            assert_eq!(
                plan.number, task.attempts,
                "{name}: the current attempt ends"
            );
            assert_eq!(plan.finished_at.is_some(), status.is_terminal(), "{name}");
            assert_eq!(
                plan.outputs.is_some(),
                status == TaskStatus::Succeeded,
                "{name}: only a success keeps its outputs"
            );
            if status == TaskStatus::Queued {
                assert!(
                    plan.run_after_us > micros(now),
                    "{name}: a retry waits its backoff"
                );
            }
            assert_eq!(plan.event.data["to"], status.as_str(), "{name}");
        }
        let long = plan_finish(
            &running(node, 1),
            AttemptOutcome::Succeeded,
            Some("x".repeat(MAX_OUTPUT_BYTES + 1)),
            None,
            now,
            0.0,
        )
        .unwrap();
        assert!(
            long.output.unwrap().len() <= MAX_OUTPUT_BYTES,
            "output is cut"
        );
    }

    #[test]
    fn reports_are_fenced_on_node_and_attempt() {
        let node = NodeId::new();
        let other = NodeId::new();
        let now = OffsetDateTime::UNIX_EPOCH;
        let current = running(node, 2);
        let queued = task();
        let tasks = HashMap::from([(current.id, current.clone()), (queued.id, queued.clone())]);
        let report = |node, task: Uuid, attempt| AttemptReport {
            node,
            task: TaskId::from_uuid(task),
            attempt,
            outcome: AttemptOutcome::Succeeded,
            output: None,
            outputs: None,
        };
        let reports = vec![
            report(other, current.id, 2),
            report(node, current.id, 1),
            report(node, queued.id, 0),
            report(node, Uuid::now_v7(), 1),
            report(node, current.id, 2),
            report(node, current.id, 2),
        ];
        let (results, plans) = judge_reports(&tasks, reports, now).unwrap();
        let verdicts: Vec<&str> = results
            .iter()
            .map(|r| match r {
                Ok(_) => "ok",
                Err(StoreError::Stale(_)) => "stale",
                Err(StoreError::NotFound { .. }) => "not found",
                Err(_) => "other",
            })
            .collect();
        assert_eq!(
            verdicts,
            ["stale", "stale", "stale", "not found", "ok", "stale"],
            "another node's, an old attempt's, a queued task's, an unknown task's, the holder's, and the holder's again"
        );
        assert_eq!(plans.len(), 1);
        let done = results[4].as_ref().unwrap();
        assert_eq!(done.status, TaskStatus::Succeeded);
        assert!(!done.workflow);
    }

    #[test]
    fn each_job_of_a_batch_is_new_an_earlier_one_or_a_conflict() {
        let job = |name: &str| NewJob {
            name: name.into(),
            project_id: None,
            executor: "shell".into(),
            spec: "{}".into(),
            priority: 0,
            retry: RetryPolicy::default(),
            timeouts: orchion_domain::Timeouts::default(),
            placement: Placement::default(),
            concurrency: None,
            run_at: None,
            trace_parent: None,
        };
        let key = |key: &str, body: &str| {
            Some(IdempotencyKey {
                key: key.into(),
                request_hash: body.as_bytes().to_vec(),
            })
        };
        let jobs: Vec<crate::JobIntake> = [
            (job("a"), None),
            (job("b"), key("k1", "x")),
            (job("c"), key("k1", "x")),
            (job("d"), key("k1", "y")),
            (job("e"), key("stored", "x")),
            (job("f"), key("stored-other", "x")),
        ]
        .into_iter()
        .map(|(job, idempotency)| crate::JobIntake {
            job,
            idempotency,
            audit: None,
        })
        .collect();
        let ids: Vec<(RunId, TaskId)> =
            jobs.iter().map(|_| (RunId::new(), TaskId::new())).collect();
        let earlier = Uuid::now_v7();
        let outcomes = enqueue_outcomes(&jobs, &ids, |key| match key.key.as_str() {
            "stored" => Ok(Some(earlier)),
            "stored-other" => Err(StoreError::IdempotencyConflict {
                key: key.key.clone(),
            }),
            _ => Ok(None),
        })
        .unwrap();
        let described: Vec<String> = outcomes
            .iter()
            .map(|o| match o {
                Enqueued::New => "new".to_owned(),
                Enqueued::Existing(id) if *id == ids[1].0 => "same as b".to_owned(),
                Enqueued::Existing(id) if id.as_uuid() == earlier => "stored".to_owned(),
                Enqueued::Existing(id) => format!("existing {id}"),
                Enqueued::Conflict(key) => format!("conflict {key}"),
            })
            .collect();
        assert_eq!(
            described,
            [
                "new",
                "new",
                "same as b",
                "conflict k1",
                "stored",
                "conflict stored-other"
            ]
        );
    }
}

//! Jobs and tasks: what a task's lifecycle is, how retries back off, and where work may run.
//!
//! A job is a run of one task. A task is tried in attempts; each attempt runs on one node under
//! a lease. [`TaskState::next`] is the one place task transitions are decided: a pure function
//! from a state and an event to the next state and what must happen. The store applies it inside
//! its transactions; nothing else changes a task's status.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use crate::{Capacity, FieldError, Labels, NodeId, ValidationErrors};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Waiting for a node (possibly until `run_after`).
    Queued,
    /// An attempt holds a lease on a node.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// Whether the task is finished for good (until a manual retry).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a job status: expected queued, running, succeeded, failed or cancelled")
            })
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    /// The work failed; `exit_code` for processes.
    Failed {
        exit_code: Option<i32>,
        error: String,
    },
    /// The attempt stopped because cancellation was requested.
    Cancelled,
    /// The lease expired or the node was lost: nobody knows how the work went.
    Lost,
    /// The attempt ran past `start_to_close`.
    TimedOut,
}

/// An attempt's status, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Lost,
    TimedOut,
}

impl AttemptStatus {
    pub const ALL: [AttemptStatus; 6] = [
        AttemptStatus::Running,
        AttemptStatus::Succeeded,
        AttemptStatus::Failed,
        AttemptStatus::Cancelled,
        AttemptStatus::Lost,
        AttemptStatus::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Running => "running",
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Cancelled => "cancelled",
            AttemptStatus::Lost => "lost",
            AttemptStatus::TimedOut => "timed_out",
        }
    }

    pub fn of(outcome: &AttemptOutcome) -> Self {
        match outcome {
            AttemptOutcome::Succeeded => AttemptStatus::Succeeded,
            AttemptOutcome::Failed { .. } => AttemptStatus::Failed,
            AttemptOutcome::Cancelled => AttemptStatus::Cancelled,
            AttemptOutcome::Lost => AttemptStatus::Lost,
            AttemptOutcome::TimedOut => AttemptStatus::TimedOut,
        }
    }
}

impl FromStr for AttemptStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not an attempt status"))
    }
}

/// One try of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first try.
    pub number: u32,
    pub node_id: Option<NodeId>,
    pub status: AttemptStatus,
    pub started_at: time::OffsetDateTime,
    pub finished_at: Option<time::OffsetDateTime>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

/// How a failed task is tried again (Temporal's names).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included; 1 means never retried.
    pub max_attempts: u32,
    pub initial_interval: Duration,
    pub max_interval: Duration,
    /// Each retry waits this many times longer than the one before.
    pub backoff_coefficient: f64,
    /// Up to this fraction of a wait is randomized away (0 to 1).
    pub jitter: f64,
    /// Exit codes that mean "retrying will not help".
    pub non_retryable_exit_codes: Vec<i32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(60),
            backoff_coefficient: 2.0,
            jitter: 0.2,
            non_retryable_exit_codes: Vec::new(),
        }
    }
}

/// The most attempts a policy may allow.
pub const MAX_ATTEMPTS: u32 = 1000;

impl RetryPolicy {
    /// Checks the policy, reporting every problem.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let field = |name: &str| format!("/retry/{name}");
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            errors.push(FieldError {
                pointer: field("max_attempts"),
                message: format!("retry.max_attempts must be between 1 and {MAX_ATTEMPTS}"),
            });
        }
        if self.initial_interval.is_zero() || self.initial_interval > Duration::from_secs(24 * 3600)
        {
            errors.push(FieldError {
                pointer: field("initial_interval"),
                message: "retry.initial_interval must be more than 0 and at most 24h".into(),
            });
        }
        if self.max_interval < self.initial_interval
            || self.max_interval > Duration::from_secs(7 * 24 * 3600)
        {
            errors.push(FieldError {
                pointer: field("max_interval"),
                message:
                    "retry.max_interval must be at least retry.initial_interval and at most 7 days"
                        .into(),
            });
        }
        if !(1.0..=100.0).contains(&self.backoff_coefficient) {
            errors.push(FieldError {
                pointer: field("backoff_coefficient"),
                message: "retry.backoff_coefficient must be between 1 and 100".into(),
            });
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            errors.push(FieldError {
                pointer: field("jitter"),
                message: "retry.jitter must be between 0 and 1".into(),
            });
        }
        errors.into_result(())
    }

    /// How long to wait before attempt `failed_attempts + 1`, given a uniform random number in
    /// `[0, 1)`: `initial × coefficient^(failed − 1)`, capped at `max_interval`, then up to
    /// `jitter` of it taken away.
    pub fn delay(&self, failed_attempts: u32, random: f64) -> Duration {
        let exponent = i32::try_from(failed_attempts.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.initial_interval.as_secs_f64() * self.backoff_coefficient.powi(exponent);
        let capped = base.min(self.max_interval.as_secs_f64());
        let jittered = capped * (1.0 - self.jitter * random.clamp(0.0, 1.0));
        Duration::from_secs_f64(jittered.max(0.0))
    }

    /// Whether a failure with this exit code may be retried.
    pub fn retryable(&self, exit_code: Option<i32>) -> bool {
        exit_code.is_none_or(|code| !self.non_retryable_exit_codes.contains(&code))
    }
}

/// Limits on how long a task may wait and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From enqueue to the first start; the task fails when it passes.
    pub schedule_to_start: Option<Duration>,
    /// How long one attempt may run.
    pub start_to_close: Option<Duration>,
    /// How long a lease lasts without being extended: an agent that goes silent this long
    /// loses the attempt.
    pub heartbeat: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            schedule_to_start: None,
            start_to_close: None,
            heartbeat: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// Checks the timeouts, reporting every problem.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let year = Duration::from_secs(366 * 24 * 3600);
        for (name, value) in [
            ("schedule_to_start", self.schedule_to_start),
            ("start_to_close", self.start_to_close),
        ] {
            if let Some(value) = value {
                if value.is_zero() || value > year {
                    errors.push(FieldError {
                        pointer: format!("/timeouts/{name}"),
                        message: format!("timeouts.{name} must be more than 0 and at most a year"),
                    });
                }
            }
        }
        if self.heartbeat < Duration::from_millis(500) || self.heartbeat > Duration::from_secs(3600)
        {
            errors.push(FieldError {
                pointer: "/timeouts/heartbeat".into(),
                message: "timeouts.heartbeat must be between 500ms and 1h".into(),
            });
        }
        errors.into_result(())
    }
}

/// Where a task may run: on a live, non-draining node with all these labels and this much free
/// capacity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    pub labels: BTreeMap<String, String>,
    pub resources: Capacity,
}

impl Placement {
    /// Whether a node with `labels` and `free` capacity can take the task.
    pub fn fits(&self, labels: &Labels, free: Capacity) -> bool {
        labels.matches(&self.labels)
            && self.resources.cpu_millis <= free.cpu_millis
            && self.resources.memory_bytes <= free.memory_bytes
            && self.resources.gpus <= free.gpus
    }
}

/// At most `limit` tasks with the same `key` run at once (e.g. one deploy per environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    pub key: String,
    pub limit: u32,
}

impl Concurrency {
    /// Checks key and limit.
    pub fn new(key: String, limit: u32) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if key.is_empty() || key.len() > 200 || key.chars().any(char::is_control) {
            errors.push(FieldError {
                pointer: "/concurrency/key".into(),
                message: "concurrency.key must be 1 to 200 characters with no control characters"
                    .into(),
            });
        }
        if !(1..=100_000).contains(&limit) {
            errors.push(FieldError {
                pointer: "/concurrency/limit".into(),
                message: "concurrency.limit must be between 1 and 100000".into(),
            });
        }
        errors.into_result(Concurrency { key, limit })
    }
}

/// The part of a task's state that transitions change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskState {
    pub status: TaskStatus,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed in all; a manual retry raises it.
    pub attempt_budget: u32,
    /// A cancellation is waiting for the running attempt to stop.
    pub cancel_requested: bool,
}

impl TaskState {
    /// A new task under `policy`.
    pub fn new(policy: &RetryPolicy) -> Self {
        Self {
            status: TaskStatus::Queued,
            attempts: 0,
            attempt_budget: policy.max_attempts,
            cancel_requested: false,
        }
    }
}

/// What happens to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// A node claimed it: a new attempt starts.
    Claimed,
    /// The current attempt ended.
    Finished(AttemptOutcome),
    /// Someone asked to cancel.
    CancelRequested,
    /// Waited past `schedule_to_start` without starting.
    ScheduleTimedOut,
    /// Someone asked to try a finished task again.
    Retry,
}

/// What a transition leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: TaskState,
    /// When queued again after a failure: how long to wait first.
    pub retry_after: Option<Duration>,
}

/// Why an event does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {status} task cannot take `{event}`")]
pub struct InvalidTransition {
    pub status: TaskStatus,
    pub event: &'static str,
}

impl TaskEvent {
    fn name(&self) -> &'static str {
        match self {
            TaskEvent::Claimed => "claim",
            TaskEvent::Finished(_) => "attempt result",
            TaskEvent::CancelRequested => "cancel",
            TaskEvent::ScheduleTimedOut => "schedule timeout",
            TaskEvent::Retry => "retry",
        }
    }
}

impl TaskState {
    /// The state after `event`. `random` is a uniform number in `[0, 1)` for retry jitter.
    pub fn next(
        self,
        event: &TaskEvent,
        policy: &RetryPolicy,
        random: f64,
    ) -> Result<Transition, InvalidTransition> {
        let invalid = || InvalidTransition {
            status: self.status,
            event: event.name(),
        };
        let stay = |state: TaskState| {
            Ok(Transition {
                state,
                retry_after: None,
            })
        };
        use TaskStatus::*;
        match (self.status, event) {
            (Queued, TaskEvent::Claimed) if !self.cancel_requested => stay(TaskState {
                status: Running,
                attempts: self.attempts + 1,
                ..self
            }),
            (Queued, TaskEvent::CancelRequested) => stay(TaskState {
                status: Cancelled,
                cancel_requested: false,
                ..self
            }),
            (Queued, TaskEvent::ScheduleTimedOut) => stay(TaskState {
                status: Failed,
                ..self
            }),
            (Running, TaskEvent::CancelRequested) => stay(TaskState {
                cancel_requested: true,
                ..self
            }),
            (Running, TaskEvent::Finished(outcome)) => {
                let terminal = |status| {
                    stay(TaskState {
                        status,
                        cancel_requested: false,
                        ..self
                    })
                };
                match outcome {
                    AttemptOutcome::Succeeded => terminal(Succeeded),
                    _ if self.cancel_requested => terminal(Cancelled),
                    AttemptOutcome::Cancelled => terminal(Cancelled),
                    AttemptOutcome::Failed { exit_code, .. } if !policy.retryable(*exit_code) => {
                        terminal(Failed)
                    }
                    AttemptOutcome::Failed { .. }
                    | AttemptOutcome::Lost
                    | AttemptOutcome::TimedOut => {
                        if self.attempts < self.attempt_budget {
                            Ok(Transition {
                                state: TaskState {
                                    status: Queued,
                                    ..self
                                },
                                retry_after: Some(policy.delay(self.attempts, random)),
                            })
                        } else {
                            terminal(Failed)
                        }
                    }
                }
            }
            (Failed | Cancelled, TaskEvent::Retry) => stay(TaskState {
                status: Queued,
                attempt_budget: self.attempts + policy.max_attempts,
                cancel_requested: false,
                ..self
            }),
            // Cancelling what is finished, or cancelling twice, changes nothing.
            (Succeeded | Failed | Cancelled, TaskEvent::CancelRequested) => stay(self),
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            non_retryable_exit_codes: vec![2],
            ..RetryPolicy::default()
        }
    }

    fn failed(code: i32) -> TaskEvent {
        TaskEvent::Finished(AttemptOutcome::Failed {
            exit_code: Some(code),
            error: "exit".into(),
        })
    }

    fn run(state: TaskState, events: &[TaskEvent]) -> TaskState {
        events
            .iter()
            .fold(state, |s, e| s.next(e, &policy(), 0.0).unwrap().state)
    }

    #[test]
    fn a_failure_is_retried_until_the_budget_is_spent() {
        let p = policy();
        let mut s = TaskState::new(&p);
        for attempt in 1..=3 {
            s = s.next(&TaskEvent::Claimed, &p, 0.0).unwrap().state;
            assert_eq!((s.status, s.attempts), (TaskStatus::Running, attempt));
            let t = s.next(&failed(1), &p, 0.0).unwrap();
            s = t.state;
            if attempt < 3 {
                assert_eq!(s.status, TaskStatus::Queued);
                assert_eq!(t.retry_after, Some(p.delay(attempt, 0.0)));
            } else {
                assert_eq!(s.status, TaskStatus::Failed);
                assert_eq!(t.retry_after, None);
            }
        }
    }

    #[test]
    fn non_retryable_exit_codes_fail_at_once() {
        let s = run(TaskState::new(&policy()), &[TaskEvent::Claimed, failed(2)]);
        assert_eq!(s.status, TaskStatus::Failed);
        assert_eq!(s.attempts, 1);
    }

    #[test]
    fn a_lost_attempt_is_retried() {
        let s = run(
            TaskState::new(&policy()),
            &[
                TaskEvent::Claimed,
                TaskEvent::Finished(AttemptOutcome::Lost),
            ],
        );
        assert_eq!(s.status, TaskStatus::Queued);
    }

    #[test]
    fn cancelling_a_running_task_waits_for_the_attempt_then_never_retries() {
        let s = run(
            TaskState::new(&policy()),
            &[TaskEvent::Claimed, TaskEvent::CancelRequested],
        );
        assert_eq!(s.status, TaskStatus::Running);
        assert!(s.cancel_requested);
        let s = run(s, &[TaskEvent::Finished(AttemptOutcome::Lost)]);
        assert_eq!(s.status, TaskStatus::Cancelled);
        assert!(!s.cancel_requested);
    }

    #[test]
    fn cancelling_a_queued_task_is_immediate() {
        let s = run(TaskState::new(&policy()), &[TaskEvent::CancelRequested]);
        assert_eq!(s.status, TaskStatus::Cancelled);
    }

    #[test]
    fn a_manual_retry_grants_a_fresh_budget() {
        let p = policy();
        let s = run(
            TaskState::new(&p),
            &[TaskEvent::Claimed, failed(2), TaskEvent::Retry],
        );
        assert_eq!(s.status, TaskStatus::Queued);
        assert_eq!(s.attempt_budget, 1 + p.max_attempts);
        let err = run(TaskState::new(&p), &[])
            .next(&TaskEvent::Retry, &p, 0.0)
            .unwrap_err();
        assert_eq!(err.to_string(), "a queued task cannot take `retry`");
    }

    #[test]
    fn a_succeeded_task_takes_no_more_results() {
        let p = policy();
        let s = run(
            TaskState::new(&p),
            &[
                TaskEvent::Claimed,
                TaskEvent::Finished(AttemptOutcome::Succeeded),
            ],
        );
        assert_eq!(s.status, TaskStatus::Succeeded);
        assert!(
            s.next(&TaskEvent::Finished(AttemptOutcome::Succeeded), &p, 0.0)
                .is_err()
        );
        assert!(s.next(&TaskEvent::Claimed, &p, 0.0).is_err());
        assert!(s.next(&TaskEvent::Retry, &p, 0.0).is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(10),
            backoff_coefficient: 2.0,
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(p.delay(4, 0.0), Duration::from_secs(8));
        assert_eq!(p.delay(5, 0.0), Duration::from_secs(10));
        assert_eq!(p.delay(50, 0.0), Duration::from_secs(10));
        assert_eq!(
            p.delay(5, 1.0),
            Duration::from_secs(5),
            "jitter takes up to half away"
        );
    }

    #[test]
    fn policies_and_timeouts_report_every_problem() {
        let bad = RetryPolicy {
            max_attempts: 0,
            initial_interval: Duration::ZERO,
            max_interval: Duration::ZERO,
            backoff_coefficient: 0.5,
            jitter: 2.0,
            non_retryable_exit_codes: vec![],
        };
        assert_eq!(
            bad.validate().unwrap_err().0.len(),
            4,
            "max_interval ≥ initial holds at 0"
        );
        let t = Timeouts {
            schedule_to_start: Some(Duration::ZERO),
            start_to_close: Some(Duration::from_secs(400 * 24 * 3600)),
            heartbeat: Duration::from_millis(1),
        };
        let pointers: Vec<String> = t
            .validate()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.pointer)
            .collect();
        assert_eq!(
            pointers,
            [
                "/timeouts/schedule_to_start",
                "/timeouts/start_to_close",
                "/timeouts/heartbeat"
            ]
        );
    }

    fn event() -> impl Strategy<Value = TaskEvent> {
        prop_oneof![
            Just(TaskEvent::Claimed),
            Just(TaskEvent::CancelRequested),
            Just(TaskEvent::ScheduleTimedOut),
            Just(TaskEvent::Retry),
            Just(TaskEvent::Finished(AttemptOutcome::Succeeded)),
            Just(TaskEvent::Finished(AttemptOutcome::Lost)),
            Just(TaskEvent::Finished(AttemptOutcome::Cancelled)),
            Just(TaskEvent::Finished(AttemptOutcome::TimedOut)),
            (0..4i32).prop_map(failed),
        ]
    }

    proptest! {
        #[test]
        fn attempts_never_exceed_the_budget(events in prop::collection::vec(event(), 0..60), r in 0.0f64..1.0) {
            let p = policy();
            let mut s = TaskState::new(&p);
            for e in &events {
                if let Ok(t) = s.next(e, &p, r) {
                    prop_assert!(t.state.attempts <= t.state.attempt_budget);
                    if t.retry_after.is_some() {
                        prop_assert_eq!(t.state.status, TaskStatus::Queued);
                        prop_assert!(t.retry_after.unwrap() <= p.max_interval);
                    }
                    s = t.state;
                }
            }
        }

        #[test]
        fn a_succeeded_task_stays_succeeded(events in prop::collection::vec(event(), 0..30)) {
            let p = policy();
            let mut s = run(TaskState::new(&p), &[TaskEvent::Claimed, TaskEvent::Finished(AttemptOutcome::Succeeded)]);
            for e in &events {
                if let Ok(t) = s.next(e, &p, 0.5) {
                    s = t.state;
                }
                prop_assert_eq!(s.status, TaskStatus::Succeeded);
            }
        }

        #[test]
        fn only_running_tasks_take_results(events in prop::collection::vec(event(), 0..30)) {
            let p = policy();
            let mut s = TaskState::new(&p);
            for e in &events {
                let before = s.status;
                if let Ok(t) = s.next(e, &p, 0.5) {
                    if matches!(e, TaskEvent::Finished(_)) {
                        prop_assert_eq!(before, TaskStatus::Running);
                    }
                    s = t.state;
                }
            }
        }
    }
}

/// The lowest and highest priority a job may have; higher runs first.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1_000_000..=1_000_000;

/// A valid request for a job: one task, run by one executor.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub name: String,
    pub project_id: Option<crate::ProjectId>,
    /// The executor's name (`shell`, `http`, …).
    pub executor: String,
    /// The executor's spec as JSON, validated by the executor at the edge.
    pub spec: String,
    pub priority: i32,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub placement: Placement,
    pub concurrency: Option<Concurrency>,
    /// Not before this time.
    pub run_at: Option<time::OffsetDateTime>,
    /// The W3C `traceparent` of the request that created it, so its execution joins that trace.
    pub trace_parent: Option<String>,
}

impl NewJob {
    /// Checks what the parts do not check alone, adding to `errors`.
    pub fn check(&self, errors: &mut ValidationErrors) {
        if !PRIORITY_RANGE.contains(&self.priority) {
            errors.push(FieldError::new(
                "priority",
                format!(
                    "priority must be between {} and {}",
                    PRIORITY_RANGE.start(),
                    PRIORITY_RANGE.end()
                ),
            ));
        }
        if self.name.len() > 200 || self.name.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "name",
                "name must be at most 200 characters with no control characters",
            ));
        }
        if let Err(e) = self.retry.validate() {
            errors.0.extend(e.0);
        }
        if let Err(e) = self.timeouts.validate() {
            errors.0.extend(e.0);
        }
    }
}

/// A job as stored, with its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: crate::RunId,
    pub task_id: crate::TaskId,
    pub name: String,
    pub project_id: Option<crate::ProjectId>,
    pub executor: String,
    pub spec: String,
    pub priority: i32,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub placement: Placement,
    pub concurrency: Option<Concurrency>,
    pub state: TaskState,
    /// Not claimed before this time (a delayed start or a retry's backoff).
    pub run_after: time::OffsetDateTime,
    /// The node running the current attempt.
    pub node_id: Option<NodeId>,
    /// When the current attempt's lease runs out unless extended.
    pub lease_expires_at: Option<time::OffsetDateTime>,
    pub output: Option<String>,
    /// What the task produced, a JSON object (workflow steps read it).
    pub outputs: Option<String>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub created_at: time::OffsetDateTime,
    pub started_at: Option<time::OffsetDateTime>,
    pub finished_at: Option<time::OffsetDateTime>,
    pub attempts: Vec<Attempt>,
}

/// Which jobs a listing returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobFilter {
    pub status: Option<TaskStatus>,
    pub project_id: Option<crate::ProjectId>,
    pub executor: Option<String>,
    /// Jobs whose name contains this, ignoring case.
    pub name: Option<String>,
    /// Newest first (the cursor then moves to older ones); oldest first otherwise.
    pub newest_first: bool,
}

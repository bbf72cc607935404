//! Workflow runs: one execution of a stored workflow type's pinned version with an input. Its
//! steps are tasks, created as they become ready; the run's status follows from theirs.

use std::{fmt, str::FromStr};

use crate::{Job, ProjectId, RunId};

/// Where a workflow run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 4] = [
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != RunStatus::Running
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a workflow status: expected running, succeeded, failed or cancelled"
                )
            })
    }
}

/// A workflow run.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRun {
    pub id: RunId,
    pub name: String,
    pub project_id: Option<ProjectId>,
    /// The workflow type's name, and the version the run is pinned to.
    pub workflow: String,
    pub version: u32,
    /// The input, a JSON document.
    pub input: String,
    /// The definition itself, for a run not made from a stored workflow type (a deployment).
    pub definition: Option<String>,
    pub status: RunStatus,
    pub cancel_requested: bool,
    /// Waiting for its turn (a deployment queued behind another for the same composer and
    /// environment): no step starts while held.
    pub held: bool,
    pub created_at: time::OffsetDateTime,
    pub finished_at: Option<time::OffsetDateTime>,
    /// The W3C `traceparent` of the request that started it; its steps join that trace.
    pub trace_parent: Option<String>,
}

/// Which part of a step a task carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// The step itself.
    Run,
    /// Its compensation, run when a failed or cancelled run is rolled back.
    Rollback,
}

/// Which task of a run this is: a step, one element of a step's fan-out, or a step's
/// rollback. Stored as text — `build`, `build[3]`, `build:rollback` — which step names (letters,
/// digits, `_`, `-`) cannot be confused with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey {
    pub name: String,
    /// The element of a `for_each` fan-out.
    pub index: Option<usize>,
    pub phase: Phase,
}

impl StepKey {
    /// The task of step `name`.
    pub fn step(name: impl Into<String>) -> Self {
        StepKey {
            name: name.into(),
            index: None,
            phase: Phase::Run,
        }
    }

    /// Element `index` of step `name`'s fan-out.
    pub fn element(name: impl Into<String>, index: usize) -> Self {
        StepKey {
            index: Some(index),
            ..Self::step(name)
        }
    }

    /// The rollback of step `name`.
    pub fn rollback(name: impl Into<String>) -> Self {
        StepKey {
            phase: Phase::Rollback,
            ..Self::step(name)
        }
    }

    /// The key stored as `text`. Any text is a key: what is not an element or a rollback is a
    /// step's name.
    pub fn parse(text: &str) -> Self {
        Self::from_stored(text.to_owned())
    }

    /// The same, reusing `text`'s allocation for the name (a run's every task is read this
    /// way each time the engine looks at the run).
    pub fn from_stored(mut text: String) -> Self {
        if text.ends_with(":rollback") {
            text.truncate(text.len() - ":rollback".len());
            return Self::rollback(text);
        }
        if let Some(open) = text.strip_suffix(']').and_then(|s| s.rfind('[')) {
            if let Ok(i) = text[open + 1..text.len() - 1].parse() {
                text.truncate(open);
                return Self::element(text, i);
            }
        }
        Self::step(text)
    }

    /// The key as stored (what [`fmt::Display`] writes), built without the formatting
    /// machinery.
    pub fn text(&self) -> String {
        let mut text = String::with_capacity(self.name.len() + 12);
        text.push_str(&self.name);
        if let Some(i) = self.index {
            text.push('[');
            text.push_str(&i.to_string());
            text.push(']');
        }
        if self.phase == Phase::Rollback {
            text.push_str(":rollback");
        }
        text
    }

    pub fn is_rollback(&self) -> bool {
        self.phase == Phase::Rollback
    }
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        if self.phase == Phase::Rollback {
            f.write_str(":rollback")?;
        }
        Ok(())
    }
}

/// A step's task.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTask {
    pub step: StepKey,
    pub task: Job,
}

/// The part of a run's state its lifecycle changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunState {
    pub status: RunStatus,
    /// No new step starts, and its queued and running tasks are asked to stop.
    pub cancel_requested: bool,
    /// Waiting for its turn (a deployment behind another for its composer and environment):
    /// no step starts.
    pub held: bool,
}

/// What happens to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEvent {
    /// Someone asked it to stop.
    Cancel,
    /// Someone asked to undo it (a deployment's `DELETE`): a running run is cancelled, a
    /// finished one reopened as cancelled, so the engine rolls back its succeeded steps.
    Undo,
    /// Someone asked to run a failed or cancelled run again from where it failed;
    /// `rolled_back` says whether any of its steps was rolled back.
    Retry { rolled_back: bool },
    /// The engine found that it ended, with this status.
    Finish(RunStatus),
    /// The deployment it waited behind ended: its turn has come.
    Release,
}

impl RunEvent {
    fn name(self) -> &'static str {
        match self {
            RunEvent::Cancel => "cancel",
            RunEvent::Undo => "undo",
            RunEvent::Retry { .. } => "retry",
            RunEvent::Finish(_) => "finish",
            RunEvent::Release => "release",
        }
    }
}

/// What the store carries out besides writing the new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEffect {
    /// Ask its queued and running tasks to stop.
    CancelActiveTasks,
    /// Try its failed and cancelled steps again, keeping their attempts; the ones that never
    /// ran are dropped, to be planned afresh.
    RetryEndedSteps,
    /// Free its deployment's slot for the oldest run held behind it.
    ReleaseSlot,
}

/// What an event leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTransition {
    pub state: RunState,
    pub effects: Vec<RunEffect>,
}

/// Why an event does not apply to a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRunTransition {
    #[error("is {0}: only a running run can be cancelled")]
    NotRunning(RunStatus),
    #[error("is {0}: only a failed or cancelled run can be retried")]
    NotRetryable(RunStatus),
    #[error("was rolled back: start a new run instead")]
    RolledBack,
    #[error("has ended already ({0})")]
    Ended(RunStatus),
    #[error("cannot take `{event}` while {status}")]
    Refused {
        status: RunStatus,
        event: &'static str,
    },
}

impl RunState {
    /// A run just started (or held, waiting for its turn).
    pub fn new(held: bool) -> Self {
        RunState {
            status: RunStatus::Running,
            cancel_requested: false,
            held,
        }
    }

    /// The state after `event`, and what else must happen.
    pub fn next(self, event: RunEvent) -> Result<RunTransition, InvalidRunTransition> {
        use RunStatus::*;
        let to = |state: RunState, effects: &[RunEffect]| {
            Ok(RunTransition {
                state,
                effects: effects.to_vec(),
            })
        };
        match (self.status, event) {
            (Running, RunEvent::Cancel | RunEvent::Undo) => to(
                RunState {
                    cancel_requested: true,
                    ..self
                },
                &[RunEffect::CancelActiveTasks],
            ),
            (_, RunEvent::Cancel) => Err(InvalidRunTransition::NotRunning(self.status)),
            // Undoing what was cancelled (and so rolled back already) changes nothing.
            (Cancelled, RunEvent::Undo) => to(self, &[]),
            (Succeeded | Failed, RunEvent::Undo) => to(
                RunState {
                    status: Running,
                    cancel_requested: true,
                    ..self
                },
                &[RunEffect::CancelActiveTasks],
            ),
            (Failed | Cancelled, RunEvent::Retry { rolled_back: true }) => {
                Err(InvalidRunTransition::RolledBack)
            }
            (Failed | Cancelled, RunEvent::Retry { rolled_back: false }) => to(
                RunState {
                    status: Running,
                    cancel_requested: false,
                    ..self
                },
                &[RunEffect::RetryEndedSteps],
            ),
            (_, RunEvent::Retry { .. }) => Err(InvalidRunTransition::NotRetryable(self.status)),
            (Running, RunEvent::Finish(end)) if end.is_terminal() => to(
                RunState {
                    status: end,
                    ..self
                },
                &[RunEffect::ReleaseSlot],
            ),
            (status, RunEvent::Finish(_)) if status.is_terminal() => {
                Err(InvalidRunTransition::Ended(status))
            }
            (Running, RunEvent::Release) if self.held => to(
                RunState {
                    held: false,
                    ..self
                },
                &[],
            ),
            (status, event) => Err(InvalidRunTransition::Refused {
                status,
                event: event.name(),
            }),
        }
    }
}

/// A run with its tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRunRecord {
    pub run: WorkflowRun,
    /// In creation order.
    pub tasks: Vec<StepTask>,
}

/// A deployment: the run that applies its resources, and the request as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// Chosen by the client.
    pub id: String,
    pub run_id: RunId,
    pub composer: String,
    pub environment: String,
    /// The request, a JSON document.
    pub request: String,
    /// Holds its composer and environment's slot: while it runs, others for the same pair wait.
    pub active: bool,
    pub created_at: time::OffsetDateTime,
}

/// Which deployments a listing returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeploymentFilter {
    pub composer: Option<String>,
    pub environment: Option<String>,
    /// Deployments of this project.
    pub project_id: Option<crate::ProjectId>,
}

/// Which workflow runs a listing returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkflowRunFilter {
    pub project_id: Option<ProjectId>,
    pub status: Option<RunStatus>,
    pub workflow: Option<String>,
    /// Runs whose name contains this, ignoring case.
    pub name: Option<String>,
    /// Newest first (the cursor then moves to older ones); oldest first otherwise.
    pub newest_first: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn step_keys_read_back_as_written() {
        let cases = [
            ("build", StepKey::step("build")),
            ("build[3]", StepKey::element("build", 3)),
            ("x[12]", StepKey::element("x", 12)),
            ("build:rollback", StepKey::rollback("build")),
            ("odd[x]", StepKey::step("odd[x]")),
        ];
        for (text, key) in cases {
            assert_eq!(StepKey::parse(text), key, "{text}");
            assert_eq!(StepKey::from_stored(text.to_owned()), key, "{text}");
            assert_eq!(key.to_string(), text);
            assert_eq!(key.text(), text);
        }
        assert!(StepKey::parse("build:rollback").is_rollback());
        assert!(!StepKey::parse("build[0]").is_rollback());
    }

    fn status() -> impl Strategy<Value = RunStatus> {
        prop::sample::select(RunStatus::ALL.to_vec())
    }

    fn state() -> impl Strategy<Value = RunState> {
        (status(), any::<bool>(), any::<bool>()).prop_map(|(status, cancel_requested, held)| {
            RunState {
                status,
                cancel_requested,
                held,
            }
        })
    }

    fn event() -> impl Strategy<Value = RunEvent> {
        prop_oneof![
            Just(RunEvent::Cancel),
            Just(RunEvent::Undo),
            any::<bool>().prop_map(|rolled_back| RunEvent::Retry { rolled_back }),
            status().prop_map(RunEvent::Finish),
            Just(RunEvent::Release),
        ]
    }

    #[test]
    fn the_lifecycle_by_example() {
        let running = RunState::new(false);
        let failed = RunState {
            status: RunStatus::Failed,
            ..running
        };
        let cancelled = RunState {
            status: RunStatus::Cancelled,
            cancel_requested: true,
            ..running
        };
        let next = |s: RunState, e| s.next(e).map(|t| (t.state, t.effects));
        assert_eq!(
            next(running, RunEvent::Cancel),
            Ok((
                RunState {
                    cancel_requested: true,
                    ..running
                },
                vec![RunEffect::CancelActiveTasks]
            ))
        );
        assert_eq!(
            next(failed, RunEvent::Cancel),
            Err(InvalidRunTransition::NotRunning(RunStatus::Failed))
        );
        assert_eq!(
            next(failed, RunEvent::Undo),
            Ok((
                RunState {
                    status: RunStatus::Running,
                    cancel_requested: true,
                    ..failed
                },
                vec![RunEffect::CancelActiveTasks]
            ))
        );
        assert_eq!(next(cancelled, RunEvent::Undo), Ok((cancelled, vec![])));
        assert_eq!(
            next(cancelled, RunEvent::Retry { rolled_back: false }),
            Ok((running, vec![RunEffect::RetryEndedSteps]))
        );
        assert_eq!(
            next(failed, RunEvent::Retry { rolled_back: true }),
            Err(InvalidRunTransition::RolledBack)
        );
        assert_eq!(
            next(running, RunEvent::Retry { rolled_back: false }),
            Err(InvalidRunTransition::NotRetryable(RunStatus::Running))
        );
        assert_eq!(
            next(running, RunEvent::Finish(RunStatus::Succeeded)),
            Ok((
                RunState {
                    status: RunStatus::Succeeded,
                    ..running
                },
                vec![RunEffect::ReleaseSlot]
            ))
        );
        assert_eq!(
            next(failed, RunEvent::Finish(RunStatus::Succeeded)),
            Err(InvalidRunTransition::Ended(RunStatus::Failed))
        );
        assert_eq!(
            next(RunState::new(true), RunEvent::Release),
            Ok((running, vec![]))
        );
        assert!(next(running, RunEvent::Release).is_err());
        assert_eq!(
            InvalidRunTransition::NotRunning(RunStatus::Failed).to_string(),
            "is failed: only a running run can be cancelled"
        );
    }

    proptest! {
        #[test]
        fn only_a_running_run_ends_and_it_ends_once(s in state(), events in prop::collection::vec(event(), 0..40)) {
            let mut s = s;
            for e in events {
                let before = s;
                if let Ok(t) = s.next(e) {
                    if before.status.is_terminal() {
                        prop_assert!(!matches!(e, RunEvent::Finish(_)), "{:?} finished again", before);
                    }
                    if t.state.status.is_terminal() && !before.status.is_terminal() {
                        prop_assert!(matches!(e, RunEvent::Finish(_)));
                        prop_assert!(t.effects.contains(&RunEffect::ReleaseSlot));
                    }
                    s = t.state;
                }
            }
        }

        #[test]
        fn a_run_reopens_only_by_undo_or_retry(s in state(), e in event()) {
            if let Ok(t) = s.next(e) {
                if s.status.is_terminal() && t.state.status == RunStatus::Running {
                    let reopening = matches!(e, RunEvent::Undo | RunEvent::Retry { rolled_back: false });
                    prop_assert!(reopening, "{:?} reopened a finished run", e);
                    prop_assert_eq!(t.state.cancel_requested, e == RunEvent::Undo);
                }
            }
        }

        #[test]
        fn a_succeeded_run_is_never_retried_and_a_rolled_back_one_never(s in state()) {
            let retried = s.next(RunEvent::Retry { rolled_back: false });
            prop_assert_eq!(retried.is_ok(), matches!(s.status, RunStatus::Failed | RunStatus::Cancelled));
            let rolled_back = RunEvent::Retry { rolled_back: true };
            prop_assert!(s.next(rolled_back).is_err());
        }

        #[test]
        fn a_stopped_run_asks_its_tasks_to_stop(s in state(), e in event()) {
            if let Ok(t) = s.next(e) {
                if t.state.cancel_requested && !s.cancel_requested {
                    prop_assert!(t.effects.contains(&RunEffect::CancelActiveTasks));
                }
                prop_assert!(s.held || !t.state.held, "nothing holds a run once started");
            }
        }
    }
}

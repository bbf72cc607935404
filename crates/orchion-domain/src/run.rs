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

/// A step's task: `step` is the step's name, or `name[i]` for element `i` of a fan-out.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTask {
    pub step: String,
    pub task: Job,
}

impl StepTask {
    /// The step this task belongs to, and its fan-out index.
    pub fn step_and_index(&self) -> (&str, Option<usize>) {
        split_step(&self.step)
    }
}

/// `build[3]` → (`build`, Some(3)); `build` → (`build`, None).
pub fn split_step(step: &str) -> (&str, Option<usize>) {
    if let Some(open) = step.strip_suffix(']').and_then(|s| s.rfind('[')) {
        if let Ok(i) = step[open + 1..step.len() - 1].parse() {
            return (&step[..open], Some(i));
        }
    }
    (step, None)
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

    #[test]
    fn fan_out_steps_split_into_name_and_index() {
        assert_eq!(split_step("build[3]"), ("build", Some(3)));
        assert_eq!(split_step("build"), ("build", None));
        assert_eq!(split_step("odd[x]"), ("odd[x]", None));
        assert_eq!(split_step("x[12]"), ("x", Some(12)));
    }
}

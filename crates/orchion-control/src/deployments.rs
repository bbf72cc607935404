//! A deployment's status, projected from its run's [`Plan`]: a pure function beside `plan`,
//! so what the deployments API says follows from the run alone. The resource statuses are the
//! deployment service's (`pending`, `in_progress`, `ready`, `failed`, `rolling_back`,
//! `rolled_back`, `rollback_failed`, …).

use std::collections::{BTreeMap, HashMap};

use orchion_domain::{RunStatus, StepKey, StepTask, TaskStatus, WorkflowRunRecord};
use serde_json::Value;

use crate::{Plan, StepState};

/// Where a deployment stands.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentStatus {
    /// `queued`, `in_progress`, `rolling_back`, `ready`, `failed`, `cancelled`, `rolled_back`
    /// or `rollback_failed`.
    pub status: &'static str,
    /// `waiting`, `deploying`, `rolling_back` or `complete`.
    pub phase: &'static str,
    /// Which resource failed first (in definition order), and why.
    pub error: Option<String>,
    /// Each resource, in definition order.
    pub resources: Vec<ResourceStatus>,
}

/// Where one resource stands.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceStatus {
    pub name: String,
    pub status: &'static str,
    /// `0%`, `50%` or `100%`.
    pub progress: &'static str,
    /// What its apply produced, once it succeeded.
    pub outputs: Option<Value>,
    /// Why its apply or its rollback failed.
    pub error: Option<String>,
    /// Attempts of its apply and its rollback together.
    pub attempts: u32,
}

/// The status of the deployment whose run is `record`, as `plan` (the run's plan) finds it.
pub fn deployment_status(plan: &Plan, record: &WorkflowRunRecord) -> DeploymentStatus {
    let rollbacks: BTreeMap<&str, StepState> = plan
        .rollbacks
        .iter()
        .map(|(n, s)| (n.as_str(), *s))
        .collect();
    let run = &record.run;
    let rolling_back =
        run.status == RunStatus::Running && (run.cancel_requested || !plan.rollbacks.is_empty());
    // How a failed or cancelled deployment ended: undone, partly undone, or left as it was.
    let undone = |otherwise: &'static str| -> &'static str {
        if plan.rollbacks.is_empty() {
            otherwise
        } else if plan
            .rollbacks
            .iter()
            .all(|(_, s)| *s == StepState::Succeeded)
        {
            "rolled_back"
        } else {
            "rollback_failed"
        }
    };
    let (status, phase) = match run.status {
        RunStatus::Running if run.held => ("queued", "waiting"),
        RunStatus::Running if rolling_back => ("rolling_back", "rolling_back"),
        RunStatus::Running => ("in_progress", "deploying"),
        RunStatus::Succeeded => ("ready", "complete"),
        RunStatus::Failed => (undone("failed"), "complete"),
        RunStatus::Cancelled => (undone("cancelled"), "complete"),
    };
    let by_key: HashMap<&StepKey, &StepTask> = record.tasks.iter().map(|t| (&t.step, t)).collect();
    let task = |key: StepKey| by_key.get(&key).copied();
    let mut error = None;
    let mut resources = Vec::with_capacity(plan.steps.len());
    for (name, step_state) in &plan.steps {
        let apply = task(StepKey::step(name.as_str()));
        let rollback = task(StepKey::rollback(name.as_str()));
        let resource_status = match rollbacks.get(name.as_str()) {
            Some(StepState::Active) => "rolling_back",
            Some(StepState::Succeeded) => "rolled_back",
            Some(StepState::Failed | StepState::Cancelled | StepState::Skipped) => {
                "rollback_failed"
            }
            Some(StepState::Pending) | None => match step_state {
                StepState::Pending => "pending",
                StepState::Active => "in_progress",
                StepState::Succeeded => "ready",
                StepState::Failed => "failed",
                StepState::Cancelled => "cancelled",
                StepState::Skipped => "skipped",
            },
        };
        let both = || [apply, rollback].into_iter().flatten();
        let failed_task = both()
            .find(|t: &&StepTask| t.task.error.is_some() && t.task.state.status.is_terminal());
        let resource_error = failed_task.and_then(|t| t.task.error.clone());
        if error.is_none() && *step_state == StepState::Failed {
            error = Some(format!(
                "resource `{name}` failed: {}",
                resource_error.as_deref().unwrap_or("no reason given")
            ));
        }
        resources.push(ResourceStatus {
            name: name.clone(),
            progress: match resource_status {
                "pending" => "0%",
                "in_progress" | "rolling_back" => "50%",
                _ => "100%",
            },
            status: resource_status,
            outputs: apply
                .filter(|t| t.task.state.status == TaskStatus::Succeeded)
                .and_then(|t| t.task.outputs.as_deref())
                .and_then(|o| serde_json::from_str(o).ok()),
            error: resource_error,
            attempts: both().map(|t| t.task.state.attempts).sum(),
        });
    }
    DeploymentStatus {
        status,
        phase,
        error,
        resources,
    }
}

#[cfg(test)]
mod tests {
    use orchion_domain::{
        Job, Placement, RetryPolicy, RunId, TaskId, TaskState, Timeouts, WorkflowRun,
    };
    use orchion_spec::{Workflow, WorkflowDefinition};
    use serde_json::json;
    use std::sync::Arc;
    use time::OffsetDateTime;

    use super::*;
    use crate::plan;

    /// A chain `network -> database -> app`, each step with a rollback.
    fn workflow() -> Arc<Workflow> {
        let step = |name: &str, needs: &[&str]| {
            json!({"name": name, "needs": needs, "executor": "noop", "spec": {},
                   "rollback": {"executor": "noop", "spec": {}}})
        };
        let definition = json!({"name": "deploy", "rollback": true, "steps": [
            step("network", &[]), step("database", &["network"]), step("app", &["database"]),
        ]});
        Arc::new(
            serde_json::from_value::<WorkflowDefinition>(definition)
                .unwrap()
                .compile()
                .unwrap(),
        )
    }

    fn task(key: &str, status: TaskStatus, error: Option<&str>) -> StepTask {
        let now = OffsetDateTime::UNIX_EPOCH;
        StepTask {
            step: StepKey::parse(key),
            task: Job {
                id: RunId::new(),
                task_id: TaskId::new(),
                name: key.into(),
                project_id: None,
                executor: "noop".into(),
                spec: "{}".into(),
                priority: 0,
                retry: RetryPolicy::default(),
                timeouts: Timeouts::default(),
                placement: Placement::default(),
                concurrency: None,
                state: TaskState {
                    status,
                    attempts: u32::from(status != TaskStatus::Queued),
                    attempt_budget: 3,
                    cancel_requested: false,
                },
                run_after: now,
                node_id: None,
                lease_expires_at: None,
                output: None,
                outputs: (status == TaskStatus::Succeeded).then(|| r#"{"id":"x"}"#.into()),
                error: error.map(str::to_owned),
                exit_code: None,
                created_at: now,
                started_at: None,
                finished_at: None,
                attempts: Vec::new(),
            },
        }
    }

    fn record(status: RunStatus, held: bool, tasks: Vec<StepTask>) -> WorkflowRunRecord {
        WorkflowRunRecord {
            run: WorkflowRun {
                id: RunId::new(),
                name: "deploy".into(),
                project_id: None,
                workflow: "deploy".into(),
                version: 1,
                input: "{}".into(),
                definition: None,
                status,
                cancel_requested: false,
                held,
                created_at: OffsetDateTime::UNIX_EPOCH,
                finished_at: None,
                trace_parent: None,
            },
            tasks,
        }
    }

    use TaskStatus::{Failed, Queued, Running, Succeeded};

    #[test]
    fn the_plan_and_the_deployment_status_of_each_moment() {
        let workflow = workflow();
        struct Case {
            name: &'static str,
            record: WorkflowRunRecord,
            creates: Vec<&'static str>,
            finish: Option<RunStatus>,
            status: &'static str,
            phase: &'static str,
            resources: [&'static str; 3],
        }
        let cases = [
            Case {
                name: "held behind another: nothing starts",
                record: record(RunStatus::Running, true, vec![]),
                creates: vec![],
                finish: None,
                status: "queued",
                phase: "waiting",
                resources: ["pending", "pending", "pending"],
            },
            Case {
                name: "just started: the first step is created",
                record: record(RunStatus::Running, false, vec![]),
                creates: vec!["network"],
                finish: None,
                status: "in_progress",
                phase: "deploying",
                resources: ["in_progress", "pending", "pending"],
            },
            Case {
                name: "the first done, the second running",
                record: record(
                    RunStatus::Running,
                    false,
                    vec![
                        task("network", Succeeded, None),
                        task("database", Running, None),
                    ],
                ),
                creates: vec![],
                finish: None,
                status: "in_progress",
                phase: "deploying",
                resources: ["ready", "in_progress", "pending"],
            },
            Case {
                name: "all applied: the run succeeds",
                record: record(
                    RunStatus::Running,
                    false,
                    vec![
                        task("network", Succeeded, None),
                        task("database", Succeeded, None),
                        task("app", Succeeded, None),
                    ],
                ),
                creates: vec![],
                finish: Some(RunStatus::Succeeded),
                status: "in_progress",
                phase: "deploying",
                resources: ["ready", "ready", "ready"],
            },
            Case {
                name: "the second failed: its dependent is skipped and the first rolled back",
                record: record(
                    RunStatus::Running,
                    false,
                    vec![
                        task("network", Succeeded, None),
                        task("database", Failed, Some("quota")),
                    ],
                ),
                creates: vec!["network:rollback"],
                finish: None,
                status: "rolling_back",
                phase: "rolling_back",
                resources: ["rolling_back", "failed", "skipped"],
            },
            Case {
                name: "the rollback done: the run fails, rolled back",
                record: record(
                    RunStatus::Running,
                    false,
                    vec![
                        task("network", Succeeded, None),
                        task("database", Failed, Some("quota")),
                        task("network:rollback", Succeeded, None),
                    ],
                ),
                creates: vec![],
                finish: Some(RunStatus::Failed),
                status: "rolling_back",
                phase: "rolling_back",
                resources: ["rolled_back", "failed", "skipped"],
            },
            Case {
                name: "ended failed after a rollback that failed",
                record: record(
                    RunStatus::Failed,
                    false,
                    vec![
                        task("network", Succeeded, None),
                        task("database", Failed, Some("quota")),
                        task("network:rollback", Failed, Some("in use")),
                    ],
                ),
                creates: vec![],
                finish: Some(RunStatus::Failed),
                status: "rollback_failed",
                phase: "complete",
                resources: ["rollback_failed", "failed", "skipped"],
            },
            Case {
                name: "a queued retry counts as in progress",
                record: record(
                    RunStatus::Running,
                    false,
                    vec![task("network", Queued, None)],
                ),
                creates: vec![],
                finish: None,
                status: "in_progress",
                phase: "deploying",
                resources: ["in_progress", "pending", "pending"],
            },
        ];
        for case in cases {
            let plan = plan(&workflow, &case.record);
            let created: Vec<String> = plan.create.iter().map(|s| s.step.to_string()).collect();
            assert_eq!(created, case.creates, "{}: created", case.name);
            assert_eq!(plan.finish, case.finish, "{}: finish", case.name);
            let projected = deployment_status(&plan, &case.record);
            assert_eq!(
                (projected.status, projected.phase),
                (case.status, case.phase),
                "{}",
                case.name
            );
            let statuses: Vec<&str> = projected.resources.iter().map(|r| r.status).collect();
            assert_eq!(statuses, case.resources, "{}: resources", case.name);
        }
    }

    #[test]
    fn the_first_failure_names_its_resource_and_outputs_come_from_the_apply() {
        let workflow = workflow();
        let run = record(
            RunStatus::Failed,
            false,
            vec![
                task("network", Succeeded, None),
                task("database", Failed, Some("quota exceeded")),
                task("network:rollback", Succeeded, None),
            ],
        );
        let projected = deployment_status(&plan(&workflow, &run), &run);
        assert_eq!(projected.status, "rolled_back");
        assert_eq!(
            projected.error.as_deref(),
            Some("resource `database` failed: quota exceeded")
        );
        let network = &projected.resources[0];
        assert_eq!(network.outputs, Some(json!({"id": "x"})));
        assert_eq!(network.attempts, 2, "its apply and its rollback");
        assert_eq!(network.progress, "100%");
        assert_eq!(
            projected.resources[1].error.as_deref(),
            Some("quota exceeded")
        );
        assert_eq!(projected.resources[2].progress, "100%", "skipped is final");
    }
}

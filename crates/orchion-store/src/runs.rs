//! Workflow runs and deployments: the run (pinned workflow type version, input, status) and
//! its steps' tasks, which the workflow engine adds as steps become ready — the [`RunStore`]
//! half of the store, written once for every backend.
//!
//! Writing the same ready steps twice is harmless (`(run, step)` is unique and a second insert
//! is ignored), and a run's status moves from `running` only by compare-and-set. So two
//! replicas, or a replica and its own periodic pass, may advance one run at the same time.
//! Deployments: a partial unique index lets one deployment per composer and environment be
//! `active`; one started meanwhile gets a `held` run, released to the oldest waiting one in the
//! transaction that ends the active one.

use std::collections::HashMap;

use async_trait::async_trait;
use orchion_domain::{
    Attempt, Deployment, DeploymentFilter, NewJob, Page, PageRequest, ProjectId, RunEffect,
    RunEvent, RunId, RunState, RunStatus, StepKey, StepTask, TaskEvent, TaskId, TaskStatus,
    WorkflowRun, WorkflowRunFilter, WorkflowRunRecord,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Created, IdempotencyKey, StoreError,
    backend::{Statement, StoreBackend, Tx, Value},
    codec::{contains_pattern, direction, page_limit, page_of},
    error::{is_unique_violation, missing_project},
    events::PendingEvent,
    idempotency::{WORKFLOW_CREATE_SCOPE, find_idempotent, insert_key, retry_lost_race},
    tasks::{AttemptRow, TaskInsert, TaskRow, apply_to_task, insert_tasks, select_tasks},
};

/// A workflow run to start.
#[derive(Debug, Clone)]
pub struct NewWorkflowRun {
    pub name: String,
    pub project_id: Option<ProjectId>,
    pub workflow: String,
    pub version: u32,
    /// The input, a JSON document.
    pub input: String,
    /// The definition, for a run not made from a stored workflow type (a deployment).
    pub definition: Option<String>,
    /// The W3C `traceparent` of the request that started it.
    pub trace_parent: Option<String>,
}

/// A deployment to record with its run.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub id: String,
    pub composer: String,
    pub environment: String,
    /// The request, a JSON document.
    pub request: String,
}

/// A step of a workflow run, written as a task when it becomes ready.
#[derive(Debug, Clone)]
pub struct NewStep {
    /// Which step, fan-out element or rollback this is.
    pub step: StepKey,
    /// The rendered job: executor, spec, retry, timeouts, placement.
    pub job: NewJob,
    /// `Queued` to run it; `Failed` (with `error`) for a step that cannot run, such as one whose
    /// template reads a missing output; `Succeeded` (with `outputs`) for one with nothing to run.
    pub status: TaskStatus,
    pub outputs: Option<String>,
    pub error: Option<String>,
}

/// A run as the engine reads it before a change: its state and its revision (how many changes
/// to what its plan reads the store has recorded; see migration 0023).
#[derive(Debug, Clone)]
pub struct RunHead {
    pub run: WorkflowRun,
    pub revision: u64,
}

/// What [`RunStore::advance_workflow_run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advanced {
    /// The run's revision after the change.
    pub revision: u64,
    /// The deployment run that was held behind this one and now runs, when this one ended.
    pub released: Option<RunId>,
}

/// What the engine's plan reads of one of a run's tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    pub id: TaskId,
    pub step: StepKey,
    pub status: TaskStatus,
    /// The outputs of a succeeded step, a JSON object.
    pub outputs: Option<String>,
}

/// Workflow runs and their steps. A supertrait of [`crate::Store`].
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Starts a run with its first ready steps, in one transaction. With an idempotency key
    /// already used, returns that run instead (`created: false`).
    async fn create_workflow_run(
        &self,
        run: NewWorkflowRun,
        steps: Vec<NewStep>,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<WorkflowRun>, StoreError>;

    /// A run with its tasks and their attempts.
    async fn get_workflow_run(&self, id: RunId) -> Result<WorkflowRunRecord, StoreError>;

    /// Runs in creation order.
    async fn list_workflow_runs(
        &self,
        filter: &WorkflowRunFilter,
        page: PageRequest,
    ) -> Result<Page<WorkflowRun>, StoreError>;

    /// Adds steps that became ready and, with `finish`, ends the run — if it is still
    /// running. Steps already written are left alone. `None` if the run was not running.
    async fn advance_workflow_run(
        &self,
        id: RunId,
        steps: Vec<NewStep>,
        finish: Option<RunStatus>,
    ) -> Result<Option<Advanced>, StoreError>;

    /// The run and its revision, read together.
    async fn workflow_run_head(&self, id: RunId) -> Result<RunHead, StoreError>;

    /// What the plan reads of the run's tasks: all of them, or those of `tasks` that belong
    /// to the run.
    async fn workflow_run_steps(
        &self,
        id: RunId,
        tasks: Option<&[TaskId]>,
    ) -> Result<Vec<StepProgress>, StoreError>;

    /// The runs still running.
    async fn running_workflow_runs(&self) -> Result<Vec<RunId>, StoreError>;

    /// The runs still running, each with its revision: the engine's sweep for changes no one
    /// told it of.
    async fn running_workflow_revisions(&self) -> Result<Vec<(RunId, u64)>, StoreError>;

    /// Asks a running run to stop: no new steps start, and its queued and running tasks are
    /// cancelled. [`StoreError::Conflict`] if it has finished.
    async fn cancel_workflow_run(&self, id: RunId) -> Result<(), StoreError>;

    /// Starts a deployment's run. While another deployment for the same composer and
    /// environment runs, the new one waits: its run is held, with no step written, until that
    /// one ends. The same request again (the same id, body and project) gets the deployment it
    /// made, `created: false`, however many arrive at once; [`StoreError::Conflict`] when the
    /// id is taken by another.
    async fn create_deployment(
        &self,
        deployment: NewDeployment,
        run: NewWorkflowRun,
        steps: Vec<NewStep>,
    ) -> Result<Created<Deployment>, StoreError>;

    async fn get_deployment(&self, id: &str) -> Result<Deployment, StoreError>;

    /// Deployments in creation order.
    async fn list_deployments(
        &self,
        filter: &DeploymentFilter,
        page: PageRequest,
    ) -> Result<Page<Deployment>, StoreError>;

    /// Undoes a run: a running one is cancelled, a finished one reopened as cancelled, so the
    /// engine rolls back its succeeded steps. A cancelled run is left as it is.
    async fn undo_workflow_run(&self, id: RunId) -> Result<(), StoreError>;

    /// Runs a failed or cancelled run again from where it failed: its failed and cancelled
    /// steps are tried again (keeping their attempts), and the steps they held back follow.
    /// [`StoreError::Conflict`] for a run that is running or succeeded, or was rolled back.
    async fn retry_workflow_run(&self, id: RunId) -> Result<(), StoreError>;
}

/// The columns of a [`WorkflowRunRow`], from `workflow_runs w JOIN runs r ON r.id = w.run_id`.
const RUN_COLUMNS: &str = "w.run_id, r.name, r.project_id, w.workflow, w.version, w.input, w.definition, \
     w.status, w.cancel_requested, w.held, w.created_at, w.finished_at, w.traceparent";

const DEPLOYMENT_COLUMNS: &str = "id, run_id, composer, environment, request, active, created_at";

fn run_not_found(id: RunId) -> StoreError {
    StoreError::NotFound {
        kind: "workflow run",
        id: id.to_string(),
    }
}

#[async_trait]
impl<B: StoreBackend> RunStore for B {
    async fn create_workflow_run(
        &self,
        run: NewWorkflowRun,
        steps: Vec<NewStep>,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<WorkflowRun>, StoreError> {
        let (run, steps, idempotency) = (&run, &steps, idempotency.as_ref());
        // A run another replica started under the same key meanwhile makes the insert of the
        // key fail; the second try finds that run.
        let (id, created) = retry_lost_race(idempotency.is_some(), || async move {
            let id = RunId::new();
            let now = crate::now();
            let mut tx = self.begin().await?;
            if let Some(key) = idempotency {
                if let Some(existing) = find_idempotent(&mut tx, WORKFLOW_CREATE_SCOPE, key).await?
                {
                    tx.rollback().await?;
                    return Ok((RunId::from_uuid(existing), false));
                }
            }
            insert_run(&mut tx, id, run, steps, now).await?;
            if let Some(key) = idempotency {
                tx.execute(insert_key(WORKFLOW_CREATE_SCOPE, key, id.as_uuid(), now))
                    .await?;
            }
            tx.commit().await?;
            Ok((id, true))
        })
        .await?;
        Ok(Created {
            value: self.get_workflow_run(id).await?.run,
            created,
        })
    }

    async fn get_workflow_run(&self, id: RunId) -> Result<WorkflowRunRecord, StoreError> {
        let run: WorkflowRun = self
            .read_optional::<WorkflowRunRow>(
                Statement::new(format!(
                    "SELECT {RUN_COLUMNS} FROM workflow_runs w JOIN runs r ON r.id = w.run_id WHERE w.run_id = $1"
                ))
                .bind(id.as_uuid()),
            )
            .await?
            .ok_or_else(|| run_not_found(id))?
            .try_into()?;
        let rows: Vec<TaskRow> = self
            .read_all(
                Statement::new(select_tasks("t.run_id = $1 ORDER BY t.id")).bind(id.as_uuid()),
            )
            .await?;
        let attempts: Vec<AttemptOfTask> = self
            .read_all(
                Statement::new(
                    "SELECT a.task_id, a.number, a.node_id, a.status, a.started_at, a.finished_at, a.exit_code, a.error \
                     FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE t.run_id = $1 ORDER BY a.task_id, a.number",
                )
                .bind(id.as_uuid()),
            )
            .await?;
        let mut by_task: HashMap<Uuid, Vec<Attempt>> = HashMap::new();
        for (task_id, number, node_id, status, started_at, finished_at, exit_code, error) in
            attempts
        {
            let attempt = AttemptRow {
                number,
                node_id,
                status,
                started_at,
                finished_at,
                exit_code,
                error,
            };
            by_task
                .entry(task_id)
                .or_default()
                .push(Attempt::try_from(attempt)?);
        }
        let tasks = rows
            .into_iter()
            .map(|mut row| {
                let step = StepKey::from_stored(std::mem::take(&mut row.step));
                let attempts = by_task.remove(&row.id).unwrap_or_default();
                Ok(StepTask {
                    step,
                    task: row.into_job(attempts)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(WorkflowRunRecord { run, tasks })
    }

    async fn list_workflow_runs(
        &self,
        filter: &WorkflowRunFilter,
        page: PageRequest,
    ) -> Result<Page<WorkflowRun>, StoreError> {
        let (after, order) = direction(filter.newest_first);
        let rows: Vec<WorkflowRunRow> = self
            .read_all(
                Statement::new(format!(
                    "SELECT {RUN_COLUMNS} FROM workflow_runs w JOIN runs r ON r.id = w.run_id \
                     WHERE ($1 IS NULL OR w.status = $1) AND ($2 IS NULL OR r.project_id = $2) \
                     AND ($3 IS NULL OR w.workflow = $3) AND ($4 IS NULL OR w.run_id {after} $4) AND ($4 IS NULL OR r.id {after} $4) \
                     AND ($6 IS NULL OR lower(r.name) LIKE $6 ESCAPE '\\') \
                     ORDER BY w.run_id {order} LIMIT $5"
                ))
                .bind(filter.status.map(|s| s.as_str()))
                .bind(filter.project_id.map(|p| p.as_uuid()))
                .bind(filter.workflow.as_deref())
                .bind(page.after.map(|c| c.0))
                .bind(page_limit(page))
                .bind(filter.name.as_deref().map(contains_pattern)),
            )
            .await?;
        page_of(rows, page, |r: &WorkflowRun| r.id.as_uuid())
    }

    async fn advance_workflow_run(
        &self,
        id: RunId,
        steps: Vec<NewStep>,
        finish: Option<RunStatus>,
    ) -> Result<Option<Advanced>, StoreError> {
        let now = crate::now();
        let mut tx = self.begin().await?;
        let run = lock_run(&mut tx, id).await?;
        if run.state.status != RunStatus::Running {
            // Finished meanwhile (elsewhere, or cancelled): nothing more to add.
            tx.rollback().await?;
            return Ok(None);
        }
        insert_steps(&mut tx, id, &steps, now).await?;
        let released = match finish {
            Some(end) => apply_to_run(&mut tx, &run, RunEvent::Finish(end)).await?,
            None => None,
        };
        let revision = bump_revision(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(Advanced { revision, released }))
    }

    async fn workflow_run_head(&self, id: RunId) -> Result<RunHead, StoreError> {
        let row: HeadRow = self
            .read_optional(
                Statement::new(format!(
                    "SELECT {RUN_COLUMNS}, v.revision FROM workflow_runs w JOIN runs r ON r.id = w.run_id \
                     JOIN workflow_revisions v ON v.run_id = w.run_id WHERE w.run_id = $1"
                ))
                .bind(id.as_uuid()),
            )
            .await?
            .ok_or_else(|| run_not_found(id))?;
        Ok(RunHead {
            revision: u64::try_from(row.revision).unwrap_or(0),
            run: row.run.try_into()?,
        })
    }

    async fn workflow_run_steps(
        &self,
        id: RunId,
        tasks: Option<&[TaskId]>,
    ) -> Result<Vec<StepProgress>, StoreError> {
        let rows: Vec<(Uuid, String, String, Option<String>)> = match tasks {
            None => {
                self.read_all(
                    Statement::new(
                        "SELECT id, step, status, outputs FROM tasks WHERE run_id = $1 ORDER BY id",
                    )
                    .bind(id.as_uuid()),
                )
                .await?
            }
            Some([]) => Vec::new(),
            Some(tasks) => {
                let mut rows = Vec::with_capacity(tasks.len());
                for chunk in tasks.chunks(crate::tasks::INSERT_CHUNK) {
                    let mut statement = Statement::new(
                        "SELECT id, step, status, outputs FROM tasks WHERE run_id = $1 AND id IN (",
                    )
                    .bind(id.as_uuid());
                    statement.push_list(chunk.iter().map(|t| Value::from(t.as_uuid())));
                    statement.push(")");
                    rows.extend(self.read_all(statement).await?);
                }
                rows
            }
        };
        rows.into_iter()
            .map(|(task, step, status, outputs)| {
                Ok(StepProgress {
                    id: TaskId::from_uuid(task),
                    step: StepKey::from_stored(step),
                    status: status.parse().map_err(StoreError::Corrupt)?,
                    outputs,
                })
            })
            .collect()
    }

    async fn running_workflow_runs(&self) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(Uuid,)> = self
            .read_all(Statement::new(
                "SELECT run_id FROM workflow_runs WHERE status = 'running' ORDER BY run_id",
            ))
            .await?;
        Ok(rows.into_iter().map(|(id,)| RunId::from_uuid(id)).collect())
    }

    async fn running_workflow_revisions(&self) -> Result<Vec<(RunId, u64)>, StoreError> {
        let rows: Vec<(Uuid, i64)> = self
            .read_all(Statement::new(
                "SELECT w.run_id, v.revision FROM workflow_runs w JOIN workflow_revisions v ON v.run_id = w.run_id \
                 WHERE w.status = 'running' ORDER BY w.run_id",
            ))
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, revision)| (RunId::from_uuid(id), u64::try_from(revision).unwrap_or(0)))
            .collect())
    }

    async fn cancel_workflow_run(&self, id: RunId) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let run = lock_run(&mut tx, id).await?;
        apply_to_run(&mut tx, &run, RunEvent::Cancel).await?;
        tx.commit().await
    }

    async fn create_deployment(
        &self,
        deployment: NewDeployment,
        run: NewWorkflowRun,
        steps: Vec<NewStep>,
    ) -> Result<Created<Deployment>, StoreError> {
        // Another request made the same id, or took this composer and environment, at the same
        // moment (on another connection): once it has committed, a second try sees it.
        let attempt =
            || try_create_deployment(self, deployment.clone(), run.clone(), steps.clone());
        match attempt().await {
            Err(e) if is_unique_violation(&e) => match attempt().await {
                Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                    "another deployment for composer `{}` in environment `{}` started at the same moment: try again",
                    deployment.composer, deployment.environment
                ))),
                other => other,
            },
            other => other,
        }
    }

    async fn get_deployment(&self, id: &str) -> Result<Deployment, StoreError> {
        self.read_optional::<DeploymentRow>(
            Statement::new(format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1"
            ))
            .bind(id),
        )
        .await?
        .map(Into::into)
        .ok_or_else(|| StoreError::NotFound {
            kind: "deployment",
            id: id.to_owned(),
        })
    }

    async fn list_deployments(
        &self,
        filter: &DeploymentFilter,
        page: PageRequest,
    ) -> Result<Page<Deployment>, StoreError> {
        let rows: Vec<DeploymentRow> = self
            .read_all(
                Statement::new(format!(
                    "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE ($1 IS NULL OR composer = $1) \
                     AND ($2 IS NULL OR environment = $2) AND ($3 IS NULL OR run_id > $3) \
                     AND ($5 IS NULL OR run_id IN (SELECT id FROM runs WHERE project_id = $5)) \
                     ORDER BY run_id LIMIT $4"
                ))
                .bind(filter.composer.as_deref())
                .bind(filter.environment.as_deref())
                .bind(page.after.map(|c| c.0))
                .bind(page_limit(page))
                .bind(filter.project_id.map(|p| p.as_uuid())),
            )
            .await?;
        page_of(rows, page, |d: &Deployment| d.run_id.as_uuid())
    }

    async fn undo_workflow_run(&self, id: RunId) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let run = lock_run(&mut tx, id).await?;
        apply_to_run(&mut tx, &run, RunEvent::Undo).await?;
        tx.commit().await
    }

    async fn retry_workflow_run(&self, id: RunId) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let run = lock_run(&mut tx, id).await?;
        let steps: Vec<(String,)> = tx
            .fetch_all(
                Statement::new("SELECT step FROM tasks WHERE run_id = $1").bind(id.as_uuid()),
            )
            .await?;
        let rolled_back = steps
            .into_iter()
            .any(|(step,)| StepKey::from_stored(step).is_rollback());
        apply_to_run(&mut tx, &run, RunEvent::Retry { rolled_back }).await?;
        // It drops the steps that never ran, which no trigger counts.
        bump_revision(&mut tx, id).await?;
        tx.commit().await
    }
}

/// An attempt with the task it belongs to, read by column position (a run's attempts are read
/// whole each time the engine looks at it).
type AttemptOfTask = (
    Uuid,
    i32,
    Option<Uuid>,
    String,
    OffsetDateTime,
    Option<OffsetDateTime>,
    Option<i32>,
    Option<String>,
);

/// A run read for a change, its row locked where the backend locks.
struct LockedRun {
    id: RunId,
    state: RunState,
    project: Option<ProjectId>,
}

async fn lock_run<T: Tx>(tx: &mut T, id: RunId) -> Result<LockedRun, StoreError> {
    let (status, cancel_requested, held, project): (String, bool, bool, Option<Uuid>) = tx
        .fetch_optional(
            Statement::new(format!(
                "SELECT w.status, w.cancel_requested, w.held, r.project_id FROM workflow_runs w \
                 JOIN runs r ON r.id = w.run_id WHERE w.run_id = $1{}",
                T::ROW_LOCK
            ))
            .bind(id.as_uuid()),
        )
        .await?
        .ok_or_else(|| run_not_found(id))?;
    Ok(LockedRun {
        id,
        state: RunState {
            status: status.parse().map_err(StoreError::Corrupt)?,
            cancel_requested,
            held,
        },
        project: project.map(ProjectId::from_uuid),
    })
}

/// Applies `event` to a locked run as `RunState::next` decides: writes the new state (with an
/// event when the status changed), then carries out the transition's effects. A refused event
/// is a conflict that names the run. Returns the held run it released, if it did.
async fn apply_to_run<T: Tx>(
    tx: &mut T,
    run: &LockedRun,
    event: RunEvent,
) -> Result<Option<RunId>, StoreError> {
    let id = run.id;
    let transition = run
        .state
        .next(event)
        .map_err(|e| StoreError::Conflict(format!("workflow run {id} {e}")))?;
    let (from, to) = (run.state, transition.state);
    if to != from {
        let finished_at = to.status.is_terminal().then(crate::now);
        tx.execute(
            Statement::new(
                "UPDATE workflow_runs SET status = $2, cancel_requested = $3, held = $4, finished_at = $5 \
                 WHERE run_id = $1",
            )
            .bind(id.as_uuid())
            .bind(to.status.as_str())
            .bind(to.cancel_requested)
            .bind(to.held)
            .bind(finished_at),
        )
        .await?;
        if to.status != from.status {
            tx.append_event(PendingEvent::run_status(
                id,
                run.project,
                from.status,
                to.status,
            ))
            .await?;
        }
    }
    let mut released = None;
    for effect in transition.effects {
        match effect {
            RunEffect::CancelActiveTasks => cancel_active_tasks(tx, id).await?,
            RunEffect::RetryEndedSteps => retry_ended_steps(tx, id).await?,
            RunEffect::ReleaseSlot => released = release_slot(tx, id).await?,
        }
    }
    Ok(released)
}

/// Tries a run's failed and cancelled steps again under their policy, keeping their attempts;
/// the ones that never ran (they could not be rendered, or were cancelled before starting) are
/// dropped, to be planned afresh.
async fn retry_ended_steps<T: Tx>(tx: &mut T, id: RunId) -> Result<(), StoreError> {
    tx.execute(
        Statement::new(
            "DELETE FROM tasks WHERE run_id = $1 AND status IN ('failed', 'cancelled') AND attempts = 0",
        )
        .bind(id.as_uuid()),
    )
    .await?;
    let sql = format!(
        "{}{}",
        select_tasks("t.run_id = $1 AND t.status IN ('failed', 'cancelled') ORDER BY t.id"),
        T::TASK_LOCK
    );
    let ended: Vec<TaskRow> = tx.fetch_all(Statement::new(sql).bind(id.as_uuid())).await?;
    for task in &ended {
        apply_to_task(tx, task, TaskEvent::Retry).await?;
    }
    Ok(())
}

/// A finished deployment frees its composer and environment's slot: the oldest run held
/// behind it takes the slot and is released; returns that run.
async fn release_slot<T: Tx>(tx: &mut T, id: RunId) -> Result<Option<RunId>, StoreError> {
    let freed: Option<(String, String)> = tx
        .fetch_optional(
            Statement::new(
                "UPDATE deployments SET active = $2 WHERE run_id = $1 AND active = $3 RETURNING composer, environment",
            )
            .bind(id.as_uuid())
            .bind(false)
            .bind(true),
        )
        .await?;
    let Some((composer, environment)) = freed else {
        return Ok(None);
    };
    let next: Option<(Uuid,)> = tx
        .fetch_optional(
            Statement::new(
                "SELECT d.run_id FROM deployments d JOIN workflow_runs w ON w.run_id = d.run_id \
                 WHERE d.composer = $1 AND d.environment = $2 AND w.held = $3 AND w.status = 'running' \
                 ORDER BY d.run_id LIMIT 1",
            )
            .bind(composer)
            .bind(environment)
            .bind(true),
        )
        .await?;
    if let Some((next,)) = next {
        tx.execute(
            Statement::new("UPDATE deployments SET active = $2 WHERE run_id = $1")
                .bind(next)
                .bind(true),
        )
        .await?;
        let next = RunId::from_uuid(next);
        let held = lock_run(tx, next).await?;
        Box::pin(apply_to_run(tx, &held, RunEvent::Release)).await?;
        bump_revision(tx, next).await?;
        return Ok(Some(next));
    }
    Ok(None)
}

/// Asks a run's queued and running tasks to stop.
async fn cancel_active_tasks<T: Tx>(tx: &mut T, id: RunId) -> Result<(), StoreError> {
    let sql = format!(
        "{}{}",
        select_tasks("t.run_id = $1 AND t.status IN ('queued', 'running') ORDER BY t.id"),
        T::TASK_LOCK
    );
    let active: Vec<TaskRow> = tx.fetch_all(Statement::new(sql).bind(id.as_uuid())).await?;
    for task in &active {
        apply_to_task(tx, task, TaskEvent::CancelRequested).await?;
    }
    Ok(())
}

/// Counts a change to what the run's plan reads that no trigger counted; returns the new
/// revision. Taken last in a transaction, after any task (see migration 0023).
async fn bump_revision<T: Tx>(tx: &mut T, id: RunId) -> Result<u64, StoreError> {
    let (revision,): (i64,) = tx
        .fetch_optional(
            Statement::new(
                "UPDATE workflow_revisions SET revision = revision + 1 WHERE run_id = $1 RETURNING revision",
            )
            .bind(id.as_uuid()),
        )
        .await?
        .ok_or_else(|| run_not_found(id))?;
    Ok(u64::try_from(revision).unwrap_or(0))
}

/// Writes a new workflow run with its first steps, and its event.
async fn insert_run<T: Tx>(
    tx: &mut T,
    id: RunId,
    run: &NewWorkflowRun,
    steps: &[NewStep],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    tx.execute(
        Statement::new(
            "INSERT INTO runs (id, project_id, kind, name, created_at) VALUES ($1, $2, 'workflow', $3, $4)",
        )
        .bind(id.as_uuid())
        .bind(run.project_id.map(|p| p.as_uuid()))
        .bind(run.name.as_str())
        .bind(now),
    )
    .await
    .map_err(|e| missing_project(e, run.project_id))?;
    tx.execute(
        Statement::new(
            "INSERT INTO workflow_runs (run_id, workflow, version, input, definition, status, cancel_requested, created_at, traceparent) \
             VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8)",
        )
        .bind(id.as_uuid())
        .bind(run.workflow.as_str())
        .bind(i32::try_from(run.version).unwrap_or(i32::MAX))
        .bind(run.input.as_str())
        .bind(run.definition.as_deref())
        .bind(false)
        .bind(now)
        .bind(run.trace_parent.as_deref()),
    )
    .await?;
    tx.execute(
        Statement::new("INSERT INTO workflow_revisions (run_id) VALUES ($1)").bind(id.as_uuid()),
    )
    .await?;
    insert_steps(tx, id, steps, now).await?;
    tx.append_event(PendingEvent::run_created(
        id,
        run.project_id,
        &run.workflow,
        run.version,
    ))
    .await
}

/// Writes a run's steps as tasks; steps already written are left alone.
async fn insert_steps<T: Tx>(
    tx: &mut T,
    run: RunId,
    steps: &[NewStep],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let keys: Vec<String> = steps.iter().map(|step| step.step.text()).collect();
    let rows: Vec<TaskInsert<'_>> = steps
        .iter()
        .zip(&keys)
        .map(|(step, key)| TaskInsert {
            id: TaskId::new().as_uuid(),
            run_id: run.as_uuid(),
            step: key,
            job: &step.job,
            status: step.status,
            outputs: step.outputs.as_deref(),
            error: step.error.as_deref(),
        })
        .collect();
    insert_tasks(tx, &rows, now).await
}

/// A `workflow_runs` row joined with its `runs` row.
#[derive(sqlx::FromRow)]
struct WorkflowRunRow {
    run_id: Uuid,
    name: String,
    project_id: Option<Uuid>,
    workflow: String,
    version: i32,
    input: String,
    definition: Option<String>,
    status: String,
    cancel_requested: bool,
    held: bool,
    created_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
    traceparent: Option<String>,
}

/// A [`WorkflowRunRow`] with its revision.
#[derive(sqlx::FromRow)]
struct HeadRow {
    #[sqlx(flatten)]
    run: WorkflowRunRow,
    revision: i64,
}

/// One try of [`RunStore::create_deployment`].
async fn try_create_deployment<B: StoreBackend>(
    store: &B,
    deployment: NewDeployment,
    run: NewWorkflowRun,
    steps: Vec<NewStep>,
) -> Result<Created<Deployment>, StoreError> {
    let id = RunId::new();
    let now = crate::now();
    let mut tx = store.begin().await?;
    let existing: Option<(String, Option<Uuid>)> = tx
        .fetch_optional(
            Statement::new(
                "SELECT d.request, r.project_id FROM deployments d JOIN runs r ON r.id = d.run_id \
                 WHERE d.id = $1",
            )
            .bind(deployment.id.as_str()),
        )
        .await?;
    if let Some((request, project)) = existing {
        tx.rollback().await?;
        if request == deployment.request && project == run.project_id.map(|p| p.as_uuid()) {
            return Ok(Created {
                value: store.get_deployment(&deployment.id).await?,
                created: false,
            });
        }
        return Err(StoreError::Conflict(format!(
            "deployment `{}` exists: choose another id, or DELETE it first",
            deployment.id
        )));
    }
    let active: Option<(String,)> = tx
        .fetch_optional(
            Statement::new(
                "SELECT id FROM deployments WHERE composer = $1 AND environment = $2 AND active = $3",
            )
            .bind(deployment.composer.as_str())
            .bind(deployment.environment.as_str())
            .bind(true),
        )
        .await?;
    // Another runs for this composer and environment: this one waits its turn, held, with
    // no step written yet.
    let waits = active.is_some();
    let steps = if waits { Vec::new() } else { steps };
    insert_run(&mut tx, id, &run, &steps, now).await?;
    if waits {
        tx.execute(
            Statement::new("UPDATE workflow_runs SET held = $2 WHERE run_id = $1")
                .bind(id.as_uuid())
                .bind(true),
        )
        .await?;
    }
    // A unique index refusing it means another made the same id or took this composer and
    // environment meanwhile: the caller tries again.
    tx.execute(
        Statement::new(
            "INSERT INTO deployments (id, run_id, composer, environment, request, active, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(deployment.id.as_str())
        .bind(id.as_uuid())
        .bind(deployment.composer.as_str())
        .bind(deployment.environment.as_str())
        .bind(deployment.request.as_str())
        .bind(!waits)
        .bind(now),
    )
    .await?;
    tx.commit().await?;
    Ok(Created {
        value: store.get_deployment(&deployment.id).await?,
        created: true,
    })
}

impl TryFrom<WorkflowRunRow> for WorkflowRun {
    type Error = StoreError;

    fn try_from(row: WorkflowRunRow) -> Result<Self, StoreError> {
        Ok(WorkflowRun {
            id: RunId::from_uuid(row.run_id),
            name: row.name,
            project_id: row.project_id.map(ProjectId::from_uuid),
            workflow: row.workflow,
            version: u32::try_from(row.version).unwrap_or(0),
            input: row.input,
            definition: row.definition,
            status: row
                .status
                .parse::<RunStatus>()
                .map_err(StoreError::Corrupt)?,
            cancel_requested: row.cancel_requested,
            held: row.held,
            created_at: row.created_at,
            finished_at: row.finished_at,
            trace_parent: row.traceparent,
        })
    }
}

/// A `deployments` row.
#[derive(sqlx::FromRow)]
struct DeploymentRow {
    id: String,
    run_id: Uuid,
    composer: String,
    environment: String,
    request: String,
    active: bool,
    created_at: OffsetDateTime,
}

impl From<DeploymentRow> for Deployment {
    fn from(row: DeploymentRow) -> Self {
        Deployment {
            id: row.id,
            run_id: RunId::from_uuid(row.run_id),
            composer: row.composer,
            environment: row.environment,
            request: row.request,
            active: row.active,
            created_at: row.created_at,
        }
    }
}

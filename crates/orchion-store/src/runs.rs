//! Workflow runs in the store: the run (pinned workflow type version, input, status) and its
//! steps' tasks, which the workflow engine adds as steps become ready.
//!
//! Writing the same ready steps twice is harmless (`(run, step)` is unique and a second insert
//! is ignored), and a run's status moves from `running` only by compare-and-set. So two
//! replicas, or a replica and its own periodic pass, may advance one run at the same time.
//! Written once for both backends as [`impl_run_store!`], like the job store.

use orchion_domain::{ProjectId, RunId, RunStatus, WorkflowRun};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

/// A `workflow_runs` row joined with its `runs` row.
#[derive(sqlx::FromRow)]
pub(crate) struct WorkflowRunRow {
    pub run_id: Uuid,
    pub name: String,
    pub project_id: Option<Uuid>,
    pub workflow: String,
    pub version: i32,
    pub input: String,
    pub definition: Option<String>,
    pub status: String,
    pub cancel_requested: bool,
    pub held: bool,
    pub created_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    pub traceparent: Option<String>,
}

pub(crate) const RUN_COLUMNS: &str = "w.run_id, r.name, r.project_id, w.workflow, w.version, w.input, w.definition, \
     w.status, w.cancel_requested, w.held, w.created_at, w.finished_at, w.traceparent";

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
pub(crate) struct DeploymentRow {
    pub id: String,
    pub run_id: Uuid,
    pub composer: String,
    pub environment: String,
    pub request: String,
    pub active: bool,
    pub created_at: OffsetDateTime,
}

impl From<DeploymentRow> for orchion_domain::Deployment {
    fn from(row: DeploymentRow) -> Self {
        orchion_domain::Deployment {
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

pub(crate) const DEPLOYMENT_COLUMNS: &str =
    "id, run_id, composer, environment, request, active, created_at";

/// The data of a `workflow_run.status_changed` event.
pub(crate) fn status_event(run: RunId, from: RunStatus, to: RunStatus) -> serde_json::Value {
    serde_json::json!({ "run_id": run.to_string(), "from": from.as_str(), "to": to.as_str() })
}

/// `RunStore` for one backend, whose connection type is `$conn`. Expects the backend's
/// `job_helpers!` in scope.
macro_rules! impl_run_store {
    ($store:ty, $conn:ty) => {
        #[async_trait::async_trait]
        impl $crate::RunStore for $store {
            async fn create_workflow_run(
                &self,
                run: $crate::NewWorkflowRun,
                steps: Vec<$crate::NewStep>,
                idempotency: Option<$crate::IdempotencyKey>,
            ) -> Result<$crate::Created<orchion_domain::WorkflowRun>, $crate::StoreError> {
                let id = orchion_domain::RunId::new();
                let now = $crate::now();
                let mut tx = self.begin().await?;
                if let Some(key) = &idempotency {
                    if let Some(existing) = find_idempotent(&mut tx, $crate::WORKFLOW_CREATE_SCOPE, key).await? {
                        tx.rollback().await?;
                        let record = self.get_workflow_run(orchion_domain::RunId::from_uuid(existing)).await?;
                        return Ok($crate::Created { value: record.run, created: false });
                    }
                }
                insert_run(&mut tx, id, &run, &steps, now).await?;
                if let Some(key) = &idempotency {
                    $crate::queries::bound::insert_idempotency_key($crate::WORKFLOW_CREATE_SCOPE, key, id.as_uuid(), now)
                        .execute(&mut *tx)
                        .await?;
                }
                self.commit(tx).await?;
                Ok($crate::Created { value: self.get_workflow_run(id).await?.run, created: true })
            }

            async fn get_workflow_run(
                &self,
                id: orchion_domain::RunId,
            ) -> Result<orchion_domain::WorkflowRunRecord, $crate::StoreError> {
                let sql = format!(
                    "SELECT {} FROM workflow_runs w JOIN runs r ON r.id = w.run_id WHERE w.run_id = $1",
                    $crate::runs::RUN_COLUMNS
                );
                let run: orchion_domain::WorkflowRun = sqlx::query_as::<_, $crate::runs::WorkflowRunRow>(&sql)
                    .bind(id.as_uuid())
                    .fetch_optional(self.read_pool())
                    .await?
                    .ok_or_else(|| $crate::StoreError::NotFound { kind: "workflow run", id: id.to_string() })?
                    .try_into()?;
                let sql = format!(
                    "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.run_id = $1 ORDER BY t.id",
                    $crate::jobs::TASK_COLUMNS
                );
                let rows = sqlx::query_as::<_, $crate::jobs::TaskRow>(&sql)
                    .bind(id.as_uuid())
                    .fetch_all(self.read_pool())
                    .await?;
                let attempts = sqlx::query_as::<_, (uuid::Uuid, i32, Option<uuid::Uuid>, String, time::OffsetDateTime, Option<time::OffsetDateTime>, Option<i32>, Option<String>)>(
                    "SELECT a.task_id, a.number, a.node_id, a.status, a.started_at, a.finished_at, a.exit_code, a.error \
                     FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE t.run_id = $1 ORDER BY a.task_id, a.number",
                )
                .bind(id.as_uuid())
                .fetch_all(self.read_pool())
                .await?;
                let mut by_task: std::collections::HashMap<uuid::Uuid, Vec<orchion_domain::Attempt>> = std::collections::HashMap::new();
                for (task_id, number, node_id, status, started_at, finished_at, exit_code, error) in attempts {
                    let attempt = orchion_domain::Attempt::try_from($crate::jobs::AttemptRow {
                        number,
                        node_id,
                        status,
                        started_at,
                        finished_at,
                        exit_code,
                        error,
                    })?;
                    by_task.entry(task_id).or_default().push(attempt);
                }
                let tasks = rows
                    .into_iter()
                    .map(|row| {
                        let step = row.step.clone();
                        let attempts = by_task.remove(&row.id).unwrap_or_default();
                        Ok(orchion_domain::StepTask { step, task: row.into_job(attempts)? })
                    })
                    .collect::<Result<Vec<_>, $crate::StoreError>>()?;
                Ok(orchion_domain::WorkflowRunRecord { run, tasks })
            }

            async fn list_workflow_runs(
                &self,
                filter: &orchion_domain::WorkflowRunFilter,
                page: orchion_domain::PageRequest,
            ) -> Result<orchion_domain::Page<orchion_domain::WorkflowRun>, $crate::StoreError> {
                let (after, order) = $crate::rows::direction(filter.newest_first);
                let sql = format!(
                    "SELECT {} FROM workflow_runs w JOIN runs r ON r.id = w.run_id \
                     WHERE ($1 IS NULL OR w.status = $1) AND ($2 IS NULL OR r.project_id = $2) \
                     AND ($3 IS NULL OR w.workflow = $3) AND ($4 IS NULL OR w.run_id {after} $4) AND ($4 IS NULL OR r.id {after} $4) \
                     AND ($6 IS NULL OR lower(r.name) LIKE $6 ESCAPE '\\') \
                     ORDER BY w.run_id {order} LIMIT $5",
                    $crate::runs::RUN_COLUMNS
                );
                let rows = sqlx::query_as::<_, $crate::runs::WorkflowRunRow>(&sql)
                    .bind(filter.status.map(|s| s.as_str()))
                    .bind(filter.project_id.map(|p| p.as_uuid()))
                    .bind(filter.workflow.as_deref())
                    .bind(page.after.map(|c| c.0))
                    .bind(i64::from(page.limit) + 1)
                    .bind(filter.name.as_deref().map($crate::rows::contains_pattern))
                    .fetch_all(self.read_pool())
                    .await?;
$crate::rows::page_of(rows, page, |r: &orchion_domain::WorkflowRun| r.id.as_uuid())
            }

            async fn advance_workflow_run(
                &self,
                id: orchion_domain::RunId,
                steps: Vec<$crate::NewStep>,
                finish: Option<orchion_domain::RunStatus>,
            ) -> Result<bool, $crate::StoreError> {
                if steps.is_empty() && finish.is_none() {
                    return Ok(false);
                }
                let now = $crate::now();
                let mut tx = self.begin().await?;
                let (status, project) = locked_run(&mut tx, id).await?;
                if status != orchion_domain::RunStatus::Running {
                    // Finished meanwhile (elsewhere, or cancelled): nothing more to add.
                    tx.rollback().await?;
                    return Ok(false);
                }
                insert_steps(&mut tx, id, &steps, now).await?;
                if let Some(to) = finish {
                    sqlx::query("UPDATE workflow_runs SET status = $2, finished_at = $3 WHERE run_id = $1 AND status = 'running'")
                        .bind(id.as_uuid())
                        .bind(to.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    // A finished deployment frees its composer and environment's slot for the
                    // oldest one waiting.
                    let freed: Option<(String, String)> = sqlx::query_as(
                        "UPDATE deployments SET active = $2 WHERE run_id = $1 AND active = $3 RETURNING composer, environment",
                    )
                    .bind(id.as_uuid())
                    .bind(false)
                    .bind(true)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some((composer, environment)) = freed {
                        let next: Option<(uuid::Uuid,)> = sqlx::query_as(
                            "SELECT d.run_id FROM deployments d JOIN workflow_runs w ON w.run_id = d.run_id \
                             WHERE d.composer = $1 AND d.environment = $2 AND w.held = $3 AND w.status = 'running' \
                             ORDER BY d.run_id LIMIT 1",
                        )
                        .bind(composer)
                        .bind(environment)
                        .bind(true)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some((next,)) = next {
                            sqlx::query("UPDATE deployments SET active = $2 WHERE run_id = $1")
                                .bind(next)
                                .bind(true)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query("UPDATE workflow_runs SET held = $2 WHERE run_id = $1")
                                .bind(next)
                                .bind(false)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                    append_event(
                        &mut tx,
                        $crate::kind::WORKFLOW_RUN_STATUS_CHANGED,
                        id.to_string(),
                        project.map(orchion_domain::ProjectId::from_uuid),
                        $crate::runs::status_event(id, orchion_domain::RunStatus::Running, to),
                    )
                    .await?;
                }
                self.commit(tx).await?;
                Ok(true)
            }

            async fn running_workflow_runs(&self) -> Result<Vec<orchion_domain::RunId>, $crate::StoreError> {
                let rows: Vec<(uuid::Uuid,)> =
                    sqlx::query_as("SELECT run_id FROM workflow_runs WHERE status = 'running' ORDER BY run_id")
                        .fetch_all(self.read_pool())
                        .await?;
                Ok(rows.into_iter().map(|(id,)| orchion_domain::RunId::from_uuid(id)).collect())
            }

            async fn cancel_workflow_run(&self, id: orchion_domain::RunId) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                let (status, _) = locked_run(&mut tx, id).await?;
                if status != orchion_domain::RunStatus::Running {
                    tx.rollback().await?;
                    return Err($crate::StoreError::Conflict(format!(
                        "workflow run {id} is {status}: only a running run can be cancelled"
                    )));
                }
                sqlx::query("UPDATE workflow_runs SET cancel_requested = $2 WHERE run_id = $1")
                    .bind(id.as_uuid())
                    .bind(true)
                    .execute(&mut *tx)
                    .await?;
                cancel_active_tasks(&mut tx, id).await?;
                self.commit(tx).await?;
                Ok(())
            }

            async fn create_deployment(
                &self,
                deployment: $crate::NewDeployment,
                run: $crate::NewWorkflowRun,
                steps: Vec<$crate::NewStep>,
            ) -> Result<orchion_domain::Deployment, $crate::StoreError> {
                let id = orchion_domain::RunId::new();
                let now = $crate::now();
                let mut tx = self.begin().await?;
                let existing: Option<(String,)> = sqlx::query_as("SELECT id FROM deployments WHERE id = $1")
                    .bind(deployment.id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                if existing.is_some() {
                    tx.rollback().await?;
                    return Err($crate::StoreError::Conflict(format!(
                        "deployment `{}` exists: choose another id, or DELETE it first",
                        deployment.id
                    )));
                }
                let active: Option<(String,)> = sqlx::query_as(
                    "SELECT id FROM deployments WHERE composer = $1 AND environment = $2 AND active = $3",
                )
                .bind(deployment.composer.as_str())
                .bind(deployment.environment.as_str())
                .bind(true)
                .fetch_optional(&mut *tx)
                .await?;
                // Another runs for this composer and environment: this one waits its turn,
                // held, with no step written yet.
                let waits = active.is_some();
                let steps = if waits { Vec::new() } else { steps };
                insert_run(&mut tx, id, &run, &steps, now).await?;
                if waits {
                    sqlx::query("UPDATE workflow_runs SET held = $2 WHERE run_id = $1")
                        .bind(id.as_uuid())
                        .bind(true)
                        .execute(&mut *tx)
                        .await?;
                }
                let inserted = sqlx::query(
                    "INSERT INTO deployments (id, run_id, composer, environment, request, active, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(deployment.id.as_str())
                .bind(id.as_uuid())
                .bind(deployment.composer.as_str())
                .bind(deployment.environment.as_str())
                .bind(deployment.request.as_str())
                .bind(!waits)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err($crate::StoreError::from);
                match inserted {
                    Ok(_) => {}
                    // Another replica started one for the same composer and environment at
                    // this moment; the client may simply try again.
                    Err(e) if $crate::is_unique_violation(&e) => {
                        return Err($crate::StoreError::Conflict(format!(
                            "another deployment for composer `{}` in environment `{}` started at the same moment: try again",
                            deployment.composer, deployment.environment
                        )));
                    }
                    Err(e) => return Err(e),
                }
                self.commit(tx).await?;
                self.get_deployment(&deployment.id).await
            }

            async fn get_deployment(&self, id: &str) -> Result<orchion_domain::Deployment, $crate::StoreError> {
                let sql = format!("SELECT {} FROM deployments WHERE id = $1", $crate::runs::DEPLOYMENT_COLUMNS);
                sqlx::query_as::<_, $crate::runs::DeploymentRow>(&sql)
                    .bind(id)
                    .fetch_optional(self.read_pool())
                    .await?
                    .map(Into::into)
                    .ok_or_else(|| $crate::StoreError::NotFound { kind: "deployment", id: id.to_owned() })
            }

            async fn list_deployments(
                &self,
                filter: &orchion_domain::DeploymentFilter,
                page: orchion_domain::PageRequest,
            ) -> Result<orchion_domain::Page<orchion_domain::Deployment>, $crate::StoreError> {
                let sql = format!(
                    "SELECT {} FROM deployments WHERE ($1 IS NULL OR composer = $1) AND ($2 IS NULL OR environment = $2) \
                     AND ($3 IS NULL OR run_id > $3) ORDER BY run_id LIMIT $4",
                    $crate::runs::DEPLOYMENT_COLUMNS
                );
                let rows = sqlx::query_as::<_, $crate::runs::DeploymentRow>(&sql)
                    .bind(filter.composer.as_deref())
                    .bind(filter.environment.as_deref())
                    .bind(page.after.map(|c| c.0))
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(self.read_pool())
                    .await?;
$crate::rows::page_of(rows, page, |d: &orchion_domain::Deployment| d.run_id.as_uuid())
            }

            async fn undo_workflow_run(&self, id: orchion_domain::RunId) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                let (from, project) = locked_run(&mut tx, id).await?;
                if from == orchion_domain::RunStatus::Cancelled {
                    tx.rollback().await?;
                    return Ok(());
                }
                reopen(&mut tx, id, from, project, true).await?;
                cancel_active_tasks(&mut tx, id).await?;
                self.commit(tx).await?;
                Ok(())
            }

            async fn retry_workflow_run(&self, id: orchion_domain::RunId) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                let (from, project) = locked_run(&mut tx, id).await?;
                if !matches!(from, orchion_domain::RunStatus::Failed | orchion_domain::RunStatus::Cancelled) {
                    tx.rollback().await?;
                    return Err($crate::StoreError::Conflict(format!(
                        "workflow run {id} is {from}: only a failed or cancelled run can be retried"
                    )));
                }
                let (rolled_back,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM tasks WHERE run_id = $1 AND step LIKE '%:rollback'",
                )
                .bind(id.as_uuid())
                .fetch_one(&mut *tx)
                .await?;
                if rolled_back > 0 {
                    tx.rollback().await?;
                    return Err($crate::StoreError::Conflict(format!(
                        "workflow run {id} was rolled back: start a new run instead"
                    )));
                }
                // Steps that never ran (they could not be rendered, or were cancelled before
                // starting) are planned afresh; the others are tried again under their policy,
                // keeping their attempts.
                sqlx::query("DELETE FROM tasks WHERE run_id = $1 AND status IN ('failed', 'cancelled') AND attempts = 0")
                    .bind(id.as_uuid())
                    .execute(&mut *tx)
                    .await?;
                let sql = format!(
                    "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id \
                     WHERE t.run_id = $1 AND t.status IN ('failed', 'cancelled') ORDER BY t.id{TASK_LOCK}",
                    $crate::jobs::TASK_COLUMNS
                );
                let ended = sqlx::query_as::<_, $crate::jobs::TaskRow>(&sql)
                    .bind(id.as_uuid())
                    .fetch_all(&mut *tx)
                    .await?;
                for task in &ended {
                    apply_to_task(&mut tx, task, orchion_domain::TaskEvent::Retry).await?;
                }
                reopen(&mut tx, id, from, project, false).await?;
                self.commit(tx).await?;
                Ok(())
            }
        }

        /// A run's status (and project), its row locked for a change where the backend locks.
        async fn locked_run(
            conn: &mut $conn,
            id: orchion_domain::RunId,
        ) -> Result<(orchion_domain::RunStatus, Option<uuid::Uuid>), $crate::StoreError> {
            let (status, project): (String, Option<uuid::Uuid>) = sqlx::query_as(&format!(
                "SELECT w.status, r.project_id FROM workflow_runs w JOIN runs r ON r.id = w.run_id WHERE w.run_id = $1{ROW_LOCK}"
            ))
            .bind(id.as_uuid())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| $crate::StoreError::NotFound { kind: "workflow run", id: id.to_string() })?;
            Ok((status.parse().map_err($crate::StoreError::Corrupt)?, project))
        }

        /// Sets a run running again (`cancel_requested` as given) and, if it had ended,
        /// records the change of status.
        async fn reopen(
            conn: &mut $conn,
            id: orchion_domain::RunId,
            from: orchion_domain::RunStatus,
            project: Option<uuid::Uuid>,
            cancel_requested: bool,
        ) -> Result<(), $crate::StoreError> {
            sqlx::query("UPDATE workflow_runs SET status = 'running', cancel_requested = $2, finished_at = NULL WHERE run_id = $1")
                .bind(id.as_uuid())
                .bind(cancel_requested)
                .execute(&mut *conn)
                .await?;
            if from == orchion_domain::RunStatus::Running {
                return Ok(());
            }
            append_event(
                conn,
                $crate::kind::WORKFLOW_RUN_STATUS_CHANGED,
                id.to_string(),
                project.map(orchion_domain::ProjectId::from_uuid),
                $crate::runs::status_event(id, from, orchion_domain::RunStatus::Running),
            )
            .await
        }

        /// Asks a run's queued and running tasks to stop.
        async fn cancel_active_tasks(
            conn: &mut $conn,
            id: orchion_domain::RunId,
        ) -> Result<(), $crate::StoreError> {
            let sql = format!(
                "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id \
                 WHERE t.run_id = $1 AND t.status IN ('queued', 'running') ORDER BY t.id{TASK_LOCK}",
                $crate::jobs::TASK_COLUMNS
            );
            let active = sqlx::query_as::<_, $crate::jobs::TaskRow>(&sql)
                .bind(id.as_uuid())
                .fetch_all(&mut *conn)
                .await?;
            for task in &active {
                apply_to_task(conn, task, orchion_domain::TaskEvent::CancelRequested).await?;
            }
            Ok(())
        }

        /// Writes a new workflow run with its first steps, and its event.
        async fn insert_run(
            conn: &mut $conn,
            id: orchion_domain::RunId,
            run: &$crate::NewWorkflowRun,
            steps: &[$crate::NewStep],
            now: time::OffsetDateTime,
        ) -> Result<(), $crate::StoreError> {
            sqlx::query("INSERT INTO runs (id, project_id, kind, name, created_at) VALUES ($1, $2, 'workflow', $3, $4)")
                .bind(id.as_uuid())
                .bind(run.project_id.map(|p| p.as_uuid()))
                .bind(run.name.as_str())
                .bind(now)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
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
            .bind(run.trace_parent.as_deref())
            .execute(&mut *conn)
            .await?;
            insert_steps(conn, id, steps, now).await?;
            append_event(
                conn,
                $crate::kind::WORKFLOW_RUN_CREATED,
                id.to_string(),
                run.project_id,
                serde_json::json!({ "run_id": id.to_string(), "workflow": run.workflow, "version": run.version }),
            )
            .await
        }

        /// Writes a run's steps as tasks; steps already written are left alone.
        async fn insert_steps(
            conn: &mut $conn,
            run: orchion_domain::RunId,
            steps: &[$crate::NewStep],
            now: time::OffsetDateTime,
        ) -> Result<(), $crate::StoreError> {
            let rows: Vec<$crate::jobs::TaskInsert<'_>> = steps
                .iter()
                .map(|step| $crate::jobs::TaskInsert {
                    id: orchion_domain::TaskId::new().as_uuid(),
                    run_id: run.as_uuid(),
                    step: step.step.as_str(),
                    job: &step.job,
                    status: step.status,
                    outputs: step.outputs.as_deref(),
                    error: step.error.as_deref(),
                })
                .collect();
            insert_tasks(conn, &rows, now).await
        }
    };
}
pub(crate) use impl_run_store;

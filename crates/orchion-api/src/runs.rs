//! `/api/v1/workflows`: runs of stored workflow types, in the workflow service's shapes — start,
//! get (with each step's state, tasks, attempts and outputs), list, cancel, metrics — plus retry
//! from the failed steps.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use orchion_control::{StartRequest, StepState, WorkflowError};
use orchion_domain::{
    Phase, ProjectId, RunId, RunStatus, WorkflowRun, WorkflowRunFilter, WorkflowRunRecord,
};
use orchion_rest::{
    RunLogs, StartWorkflow, StepBody, StepMetrics, StepTaskBody, TaskLogs, WorkflowMetrics,
    WorkflowRunBody, WorkflowRunList,
};
use orchion_store::IdempotencyKey;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::respond::{Created, paged};
use crate::{
    AppState,
    extract::{JsonBody, PathId, QueryParams, idempotency_key, page_request, query_value},
    jobs::{attempt_body, line_body},
    problem::{ApiError, Problem},
};

fn run_body(run: WorkflowRun, steps: Option<Vec<StepBody>>) -> WorkflowRunBody {
    WorkflowRunBody {
        id: run.id.to_string(),
        name: run.name,
        workflow_type: run.workflow,
        version: run.version,
        project_id: run.project_id.map(|p| p.to_string()),
        status: run.status.as_str().to_owned(),
        cancel_requested: run.cancel_requested,
        input: serde_json::from_str(&run.input).unwrap_or(serde_json::Value::Null),
        created_at: run.created_at,
        finished_at: run.finished_at,
        steps,
    }
}

/// Each step with its state (from the engine's plan) and its tasks, in definition order.
async fn steps_of(
    state: &AppState,
    record: &WorkflowRunRecord,
) -> Result<Vec<(String, Vec<String>, StepState)>, ApiError> {
    let workflow = state
        .workflows
        .definition_of(&record.run)
        .await
        .map_err(workflow_error)?;
    let plan = orchion_control::plan(&workflow, record);
    Ok(plan
        .steps
        .into_iter()
        .map(|(name, step_state)| {
            let needs = workflow
                .step(&name)
                .map(|s| s.needs.clone())
                .unwrap_or_default();
            (name, needs, step_state)
        })
        .collect())
}

async fn full_body(
    state: &AppState,
    record: WorkflowRunRecord,
) -> Result<WorkflowRunBody, ApiError> {
    let steps = steps_of(state, &record).await?;
    let mut tasks: BTreeMap<String, Vec<StepTaskBody>> = BTreeMap::new();
    for task in record.tasks {
        // A fan-out's elements are listed under their step; a rollback under its own name.
        let group = match task.step.phase {
            Phase::Run => task.step.name.clone(),
            Phase::Rollback => task.step.text(),
        };
        let job = task.task;
        tasks.entry(group).or_default().push(StepTaskBody {
            id: job.task_id.to_string(),
            name: task.step.text(),
            status: job.state.status.as_str().to_owned(),
            spec: orchion_spec::secret::shown_spec(&job.executor, &job.spec),
            executor: job.executor,
            attempts: job.attempts.into_iter().map(attempt_body).collect(),
            outputs: job
                .outputs
                .as_deref()
                .and_then(|o| serde_json::from_str(o).ok()),
            output: job.output,
            error: job.error,
            exit_code: job.exit_code,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
        });
    }
    let steps = steps
        .into_iter()
        .map(|(name, needs, step_state)| StepBody {
            tasks: tasks.remove(&name).unwrap_or_default(),
            name,
            needs,
            status: step_state.as_str().to_owned(),
        })
        .collect();
    Ok(run_body(record.run, Some(steps)))
}

/// The run with this id, if the caller may see it; a 404 otherwise.
pub(crate) async fn visible_run(
    state: &AppState,
    caller: &Caller,
    id: RunId,
) -> Result<WorkflowRunRecord, ApiError> {
    let record = state.store.get_workflow_run(id).await?;
    caller.visible(record.run.project_id, "workflow run", id, record)
}

/// The one mapping from engine errors to API errors.
pub(crate) fn workflow_error(error: WorkflowError) -> ApiError {
    match error {
        WorkflowError::Store(e) => e.into(),
        WorkflowError::Invalid(errors) => ApiError::Validation(errors),
        WorkflowError::Corrupt { .. } => {
            tracing::error!(error = %error, "a stored workflow type does not compile");
            ApiError::Internal
        }
    }
}

/// Starts a run of a stored workflow type. With an `Idempotency-Key`, repeating the request
/// returns the same run.
#[utoipa::path(post, path = "/api/v1/workflows", tag = "runs", request_body = StartWorkflow,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the request safe to repeat")),
    responses((status = 201, body = WorkflowRunBody), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem)))]
pub async fn start_workflow(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody<StartWorkflow>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let request = body.value;
    // A malformed project id is reported with the request's other problems, below.
    let project_id = match request.project_id.as_deref().map(str::parse::<ProjectId>) {
        Some(Err(_)) => request.project_id.clone(),
        named => Some(caller.project_for(named.and_then(Result::ok))?.to_string()),
    };
    let created = state
        .workflows
        .start_request(
            StartRequest {
                name: request.name,
                workflow: request.workflow_type,
                version: request.version,
                project_id,
                input: request.input,
                trace_parent: orchion_otel::traceparent(),
                confined_to: caller.0.project,
            },
            key.map(|key| IdempotencyKey {
                key,
                request_hash: body.digest,
            }),
        )
        .await
        .map_err(workflow_error)?;
    let id = created.value.id;
    let record = state.store.get_workflow_run(id).await?;
    let body = full_body(&state, record).await?;
    let location = format!("/api/v1/workflows/{id}");
    Ok(Created::or_replayed(body, location, created.created).into_response())
}

/// Gets a run with each step's state, tasks, attempts and outputs.
#[utoipa::path(get, path = "/api/v1/workflows/{id}", tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, body = WorkflowRunBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get_workflow(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<RunId>,
) -> Result<Json<WorkflowRunBody>, ApiError> {
    let record = visible_run(&state, &caller, id).await?;
    Ok(Json(full_body(&state, record).await?))
}

/// Filters for listing runs.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListWorkflows {
    pub project_id: Option<String>,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: Option<String>,
    /// The workflow type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub workflow_type: Option<String>,
    /// Runs whose name contains this, ignoring case.
    pub name: Option<String>,
    /// `oldest` first (the default) or `newest` first.
    pub order: Option<crate::extract::Order>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Lists runs, oldest first unless `order=newest`.
#[utoipa::path(get, path = "/api/v1/workflows", tag = "runs", params(ListWorkflows),
    responses((status = 200, body = WorkflowRunList), (status = 400, body = Problem)))]
pub async fn list_workflows(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListWorkflows>,
) -> Result<Json<WorkflowRunList>, ApiError> {
    let named = query_value::<ProjectId>("project_id", query.project_id)?;
    let Ok(project_id) = caller.scope(named) else {
        return Ok(Json(WorkflowRunList {
            items: Vec::new(),
            next_cursor: None,
        }));
    };
    let filter = WorkflowRunFilter {
        project_id,
        status: query_value::<RunStatus>("status", query.status)?,
        workflow: query.workflow_type,
        name: query.name.filter(|n| !n.is_empty()),
        newest_first: query.order == Some(crate::extract::Order::Newest),
    };
    let page = page_request(query.limit, query.cursor)?;
    let page = state.store.list_workflow_runs(&filter, page).await?;
    let (items, next_cursor) = paged(page, |r| run_body(r, None));
    Ok(Json(WorkflowRunList { items, next_cursor }))
}

/// Cancels a running run: its queued and running steps are cancelled, and no new step starts.
#[utoipa::path(post, path = "/api/v1/workflows/{id}/cancel", tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, body = WorkflowRunBody), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn cancel_workflow(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<RunId>,
) -> Result<Json<WorkflowRunBody>, ApiError> {
    visible_run(&state, &caller, id).await?;
    state.workflows.cancel(id).await.map_err(workflow_error)?;
    let record = state.store.get_workflow_run(id).await?;
    Ok(Json(full_body(&state, record).await?))
}

/// Runs a failed or cancelled run again from its failed steps: those steps are tried again
/// (keeping their earlier attempts), then the steps that were skipped because of them.
/// Succeeded steps are not run again.
#[utoipa::path(post, path = "/api/v1/workflows/{id}/retry", tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, body = WorkflowRunBody), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn retry_workflow(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<RunId>,
) -> Result<Json<WorkflowRunBody>, ApiError> {
    visible_run(&state, &caller, id).await?;
    state.workflows.retry(id).await.map_err(workflow_error)?;
    let record = state.store.get_workflow_run(id).await?;
    Ok(Json(full_body(&state, record).await?))
}

fn millis(d: time::Duration) -> f64 {
    d.as_seconds_f64() * 1e3
}

/// Durations per step, queue wait, attempts.
#[utoipa::path(get, path = "/api/v1/workflows/{id}/metrics", tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, body = WorkflowMetrics), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn workflow_metrics(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<RunId>,
) -> Result<Json<WorkflowMetrics>, ApiError> {
    let record = visible_run(&state, &caller, id).await?;
    let steps = steps_of(&state, &record).await?;
    let now = orchion_store::now();
    let mut metrics = Vec::with_capacity(steps.len());
    for (name, _, step_state) in steps {
        let tasks: Vec<_> = record
            .tasks
            .iter()
            .filter(|t| t.step.phase == Phase::Run && t.step.name == name)
            .map(|t| &t.task)
            .collect();
        let first_created = tasks.iter().map(|t| t.created_at).min();
        let first_start = tasks.iter().filter_map(|t| t.started_at).min();
        let last_finish = tasks.iter().filter_map(|t| t.finished_at).max();
        metrics.push(StepMetrics {
            status: step_state.as_str().to_owned(),
            attempts: tasks.iter().map(|t| t.state.attempts).sum(),
            tasks: tasks.len(),
            queue_wait_ms: first_created.zip(first_start).map(|(c, s)| millis(s - c)),
            duration_ms: first_start.zip(last_finish).map(|(s, f)| millis(f - s)),
            name,
        });
    }
    let run = record.run;
    Ok(Json(WorkflowMetrics {
        id: run.id.to_string(),
        status: run.status.as_str().to_owned(),
        duration_ms: millis(run.finished_at.unwrap_or(now) - run.created_at),
        attempts: metrics.iter().map(|m| m.attempts).sum(),
        steps: metrics,
    }))
}

/// Which step's logs to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunLogQuery {
    /// A step (`build`) or one task of a fan-out (`build[2]`); every task when absent.
    pub step: Option<String>,
    /// Lines per task, at most 5000 (default 1000).
    pub limit: Option<u32>,
}

/// Reads the log lines of a run's tasks, or of one step's.
#[utoipa::path(get, path = "/api/v1/workflows/{id}/logs", tag = "runs",
    params(("id" = String, Path, description = "The run's id"), RunLogQuery),
    responses((status = 200, body = RunLogs), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn workflow_logs(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<RunId>,
    QueryParams(query): QueryParams<RunLogQuery>,
) -> Result<Json<RunLogs>, ApiError> {
    let record = visible_run(&state, &caller, id).await?;
    let limit = query.limit.unwrap_or(1000);
    if !(1..=5000).contains(&limit) {
        return Err(crate::extract::invalid_query(
            "limit",
            format!("limit must be between 1 and 5000, got {limit}"),
        ));
    }
    let chosen: Vec<_> = record
        .tasks
        .iter()
        .filter(|t| {
            query.step.as_deref().is_none_or(|s| {
                t.step.to_string() == s || (t.step.phase == Phase::Run && t.step.name == s)
            })
        })
        .collect();
    if let Some(step) = &query.step {
        if chosen.is_empty() {
            return Err(ApiError::NotFound(format!(
                "run {} has no task for step `{step}`",
                record.run.id
            )));
        }
    }
    let mut tasks = Vec::with_capacity(chosen.len());
    for task in chosen {
        let lines = state.store.read_logs(task.task.task_id, 0, limit).await?;
        tasks.push(TaskLogs {
            step: task.step.text(),
            lines: lines.into_iter().map(line_body).collect(),
        });
    }
    Ok(Json(RunLogs { tasks }))
}

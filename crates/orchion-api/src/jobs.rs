//! `/api/v1/jobs`: enqueue a job (a run of one task), read it with its attempts, list, cancel,
//! retry, and read or follow its logs.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    time::Duration,
};

use axum::{
    Json,
    extract::State,
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use orchion_domain::{
    Attempt, FieldError, Job, JobFilter, NewJob, ProjectId, RunId, TaskStatus, ValidationErrors,
};
use orchion_rest::{AttemptBody, BatchBody, BatchItem, JobBody, JobList, LogLineBody, LogPage};
use orchion_spec::CreateJob;
use orchion_store::IdempotencyKey;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::respond::{Created, paged};
use crate::{
    AppState,
    extract::{
        JsonBody, PathId, QueryParams, decode, idempotency_key, invalid_query, page_request,
        query_value,
    },
    problem::{ApiError, Problem},
};

pub(crate) fn attempt_body(a: Attempt) -> AttemptBody {
    AttemptBody {
        number: a.number,
        node_id: a.node_id.map(|n| n.to_string()),
        status: a.status.as_str().to_owned(),
        started_at: a.started_at,
        finished_at: a.finished_at,
        exit_code: a.exit_code,
        error: a.error,
    }
}

fn job_body(job: Job, with_attempts: bool) -> JobBody {
    JobBody {
        id: job.id.to_string(),
        name: job.name,
        project_id: job.project_id.map(|p| p.to_string()),
        spec: orchion_spec::secret::shown_spec(&job.executor, &job.spec),
        executor: job.executor,
        status: job.state.status.as_str().to_owned(),
        cancel_requested: job.state.cancel_requested,
        priority: job.priority,
        attempt_count: job.state.attempts,
        max_attempts: job.state.attempt_budget,
        attempts: with_attempts.then(|| job.attempts.into_iter().map(attempt_body).collect()),
        node_id: job.node_id.map(|n| n.to_string()),
        run_after: job.run_after,
        exit_code: job.exit_code,
        output: job.output,
        error: job.error,
        created_at: job.created_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
    }
}

/// A problem for each name a `kubernetes` job of `jobs` may not use in its project, and for
/// each secret reference (`{"secret": "NAME"}`) whose project has no such secret, at
/// `{prefix}/spec/…` for each `(prefix, job)`: a job that could never run is refused when it is
/// made, not when it is claimed (which checks again).
pub(crate) async fn refusals(
    state: &AppState,
    jobs: &[(String, &NewJob)],
) -> Result<Vec<FieldError>, ApiError> {
    let mut uses: BTreeMap<ProjectId, Vec<(&str, orchion_spec::secret::SecretUse)>> =
        BTreeMap::new();
    for (prefix, job) in jobs {
        let (Some(project), true) = (job.project_id, job.spec.contains("\"secret\"")) else {
            continue;
        };
        let spec = serde_json::from_str(&job.spec).unwrap_or_default();
        for used in orchion_spec::secret_uses(&job.executor, &spec).unwrap_or_default() {
            uses.entry(project).or_default().push((prefix, used));
        }
    }
    let mut problems: Vec<FieldError> = jobs
        .iter()
        .filter(|(_, job)| job.executor == "kubernetes")
        .flat_map(|(prefix, job)| {
            state
                .kubernetes
                .refusals_of(job.project_id, &job.spec)
                .into_iter()
                .map(move |mut refusal| {
                    refusal.pointer = format!("{prefix}{}", refusal.pointer);
                    refusal
                })
        })
        .collect();
    for (project, uses) in uses {
        let names: Vec<String> = uses
            .iter()
            .map(|(_, u)| u.name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let missing = state.secrets.missing(project, &names).await?;
        problems.extend(
            uses.into_iter()
                .filter(|(_, u)| missing.contains(&u.name))
                .map(|(prefix, u)| FieldError {
                    pointer: format!("{prefix}{}/secret", u.pointer),
                    message: format!(
                        "secret `{}` does not exist in project `{project}`: set it first (`orchion secret set {}`, or PUT /api/v1/projects/{project}/secrets/{})",
                        u.name, u.name, u.name
                    ),
                }),
        );
    }
    Ok(problems)
}

/// `job` in the trace of the request that creates it (the current span's), unless it names one.
fn traced(job: NewJob) -> NewJob {
    NewJob {
        trace_parent: job.trace_parent.or_else(orchion_otel::traceparent),
        ..job
    }
}

/// Enqueues a job. With an `Idempotency-Key` (header or field), repeating the request returns
/// the same job.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = CreateJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the request safe to repeat")),
    responses((status = 201, body = JobBody), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
pub async fn create_job(
    State(state): State<AppState>,
    caller: Caller,
    draft: Option<axum::Extension<crate::auth::AuditDraft>>,
    headers: HeaderMap,
    body: JsonBody<CreateJob>,
) -> Result<Response, ApiError> {
    let header_key = idempotency_key(&headers)?;
    let (mut job, field_key) = body.value.into_new_job()?;
    job.project_id = Some(caller.project_for(job.project_id)?);
    let refused = refusals(&state, &[(String::new(), &job)]).await?;
    if !refused.is_empty() {
        return Err(ApiError::Validation(ValidationErrors(refused)));
    }
    let key = match (header_key, field_key) {
        (Some(h), Some(f)) if h != f => {
            return Err(ApiError::Validation(ValidationErrors(vec![
                FieldError::new(
                    "idempotency_key",
                    "idempotency_key differs from the Idempotency-Key header",
                ),
            ])));
        }
        (h, f) => h.or(f),
    };
    let idempotency = key.map(|key| IdempotencyKey {
        key,
        request_hash: body.digest,
    });
    let job = traced(job);
    let audit = draft.as_ref().map(|d| d.entry());
    let created = state.work.enqueue_audited(job, idempotency, audit).await?;
    if created.created
        && let Some(draft) = &draft
    {
        draft.mark_written();
    }
    let location = format!("/api/v1/jobs/{}", created.value.id);
    Ok(
        Created::or_replayed(job_body(created.value, true), location, created.created)
            .into_response(),
    )
}

/// The most jobs one batch may carry.
pub const MAX_BATCH: usize = 1000;

/// Jobs to enqueue in one request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJobs {
    /// Up to 1000 jobs, each as `POST /api/v1/jobs` takes it (`idempotency_key` per job).
    #[schema(value_type = Vec<CreateJob>)]
    pub jobs: Vec<serde_json::Value>,
}

/// Orders errors by the job they are about (`/jobs/<n>/…`), then as found.
fn pointer_order(pointer: &str) -> usize {
    pointer
        .strip_prefix("/jobs/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Enqueues up to 1000 jobs in one request. The batch is validated as a whole: if any job is
/// invalid, the answer is 422 listing every problem (pointers like `/jobs/3/executor`) and
/// nothing is enqueued. A valid batch is then written job by job in shared transactions: a
/// job refused by the store (its idempotency key reused with another body) carries its own
/// `error`, and the others are enqueued.
#[utoipa::path(post, path = "/api/v1/jobs/batch", tag = "jobs", request_body = CreateJobs,
    responses((status = 200, body = BatchBody), (status = 400, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
pub async fn create_jobs(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateJobs>,
) -> Result<Json<BatchBody>, ApiError> {
    let items = body.value.jobs;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::Validation(ValidationErrors(vec![
            FieldError::new(
                "jobs",
                format!(
                    "jobs holds {} jobs; a batch holds 1 to {MAX_BATCH}",
                    items.len()
                ),
            ),
        ])));
    }
    let mut errors = ValidationErrors::default();
    let mut jobs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let prefix = format!("/jobs/{i}");
        let decoded = match decode::<CreateJob>(item, &prefix) {
            Ok(decoded) => decoded,
            Err(e) => {
                errors
                    .0
                    .extend(e.problem().errors.into_iter().map(|f| FieldError {
                        pointer: f.pointer,
                        message: f.detail,
                    }));
                continue;
            }
        };
        match decoded.value.into_new_job() {
            Ok((mut job, key)) => jobs.push((
                i,
                match caller.project_for(job.project_id) {
                    Ok(project) => {
                        job.project_id = Some(project);
                        job
                    }
                    Err(_) => {
                        errors.push(FieldError {
                            pointer: format!("{prefix}/project_id"),
                            message: format!(
                                "project `{}` does not exist",
                                job.project_id.map(|p| p.to_string()).unwrap_or_default()
                            ),
                        });
                        continue;
                    }
                },
                key.map(|key| IdempotencyKey {
                    key,
                    request_hash: decoded.digest,
                }),
            )),
            Err(e) => errors.0.extend(e.0.into_iter().map(|mut f| {
                f.pointer = format!("{prefix}{}", f.pointer);
                f
            })),
        }
    }
    // A batch is refused as a whole when a job names a project that does not exist, every such
    // job named. (One deleted meanwhile is refused alone, as the store reports it.)
    let projects: BTreeSet<ProjectId> = jobs.iter().filter_map(|(_, j, _)| j.project_id).collect();
    for project in projects {
        if let Err(orchion_store::StoreError::NotFound { .. }) =
            state.store.get_project(project).await
        {
            for (i, job, _) in &jobs {
                if job.project_id == Some(project) {
                    errors.push(FieldError {
                        pointer: format!("/jobs/{i}/project_id"),
                        message: format!("project `{project}` does not exist"),
                    });
                }
            }
        }
    }
    let prefixed: Vec<(String, &NewJob)> = jobs
        .iter()
        .map(|(i, job, _)| (format!("/jobs/{i}"), job))
        .collect();
    errors.0.extend(refusals(&state, &prefixed).await?);
    errors.0.sort_by_key(|e| pointer_order(&e.pointer));
    errors.into_result(())?;
    let jobs = jobs
        .into_iter()
        .map(|(_, job, key)| (traced(job), key))
        .collect();
    let results = state.work.enqueue_all(jobs).await;
    let jobs: Vec<BatchItem> = results
        .into_iter()
        .map(|result| match result {
            Ok(created) => BatchItem {
                id: Some(created.value.id.to_string()),
                status: Some(created.value.state.status.as_str().to_owned()),
                created: Some(created.created),
                error: None,
            },
            Err(e) => BatchItem {
                id: None,
                status: None,
                created: None,
                error: Some(ApiError::from(e).problem()),
            },
        })
        .collect();
    Ok(Json(BatchBody {
        errors: jobs.iter().any(|j| j.error.is_some()),
        jobs,
    }))
}

/// Gets a job with its attempts.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = JobBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<RunId>,
) -> Result<Json<JobBody>, ApiError> {
    Ok(Json(job_body(
        visible_job(&state, &caller, id).await?,
        true,
    )))
}

/// The job with this id, if the caller may see it; a 404 otherwise.
async fn visible_job(state: &AppState, caller: &Caller, id: RunId) -> Result<Job, ApiError> {
    let job = state.store.get_job(id).await?;
    caller.visible(job.project_id, "job", id, job)
}

/// Filters and paging for listing jobs.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListJobs {
    pub status: Option<String>,
    pub executor: Option<String>,
    pub project_id: Option<String>,
    /// Jobs whose name contains this, ignoring case.
    pub name: Option<String>,
    /// `oldest` first (the default) or `newest` first.
    pub order: Option<crate::extract::Order>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Lists jobs, oldest first unless `order=newest`, a page at a time.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListJobs),
    responses((status = 200, body = JobList), (status = 400, body = Problem)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListJobs>,
) -> Result<Json<JobList>, ApiError> {
    let status = query_value::<TaskStatus>("status", query.status)?;
    let project_id = query_value::<ProjectId>("project_id", query.project_id)?;
    let page = page_request(query.limit, query.cursor)?;
    let Ok(project_id) = caller.scope(project_id) else {
        return Ok(Json(JobList {
            items: Vec::new(),
            next_cursor: None,
        }));
    };
    let filter = JobFilter {
        status,
        project_id,
        executor: query.executor,
        name: query.name.filter(|n| !n.is_empty()),
        newest_first: query.order == Some(crate::extract::Order::Newest),
    };
    let page = state.store.list_jobs(&filter, page).await?;
    let (items, next_cursor) = paged(page, |j| job_body(j, false));
    Ok(Json(JobList { items, next_cursor }))
}

/// Cancels a job: at once when queued; a running attempt is stopped (its process group gets
/// SIGTERM, then SIGKILL after a grace period).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = JobBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<RunId>,
) -> Result<Json<JobBody>, ApiError> {
    visible_job(&state, &caller, id).await?;
    Ok(Json(job_body(state.work.cancel(id).await?, true)))
}

/// Runs a failed or cancelled job again, with a fresh attempt budget.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = JobBody), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn retry_job(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<RunId>,
) -> Result<Json<JobBody>, ApiError> {
    visible_job(&state, &caller, id).await?;
    let job = state.work.retry(id).await?;
    Ok(Json(job_body(job, true)))
}

/// Which log lines to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Lines after this sequence number (default 0: from the start).
    pub after: Option<i64>,
    /// At most this many (1 to 5000, default 1000).
    pub limit: Option<u32>,
    /// Keep the connection open and stream new lines as Server-Sent Events until the job ends.
    pub follow: Option<bool>,
}

pub(crate) fn line_body(l: orchion_store::LogLine) -> LogLineBody {
    LogLineBody {
        seq: l.seq,
        attempt: l.attempt,
        stream: l.stream,
        line: l.line,
        at: l.at,
    }
}

/// Reads a job's log, or follows it as Server-Sent Events (`follow=true`; each event's id is
/// the line's sequence number, so `Last-Event-ID` resumes).
#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs", tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), LogQuery),
    responses((status = 200, body = LogPage), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn job_logs(
    State(state): State<AppState>,
    caller: Caller,
    client: crate::auth::ClientAddr,
    PathId(id): PathId<RunId>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<LogQuery>,
) -> Result<Response, ApiError> {
    let job = visible_job(&state, &caller, id).await?;
    let limit = query.limit.unwrap_or(1000);
    if !(1..=5000).contains(&limit) {
        return Err(invalid_query(
            "limit",
            format!("limit must be between 1 and 5000, got {limit}"),
        ));
    }
    let resume = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| ApiError::InvalidParameter {
                    name: "Last-Event-ID".into(),
                    detail: "header `Last-Event-ID` must be a log sequence number".into(),
                })
        })
        .transpose()?;
    let after = resume.or(query.after).unwrap_or(0);
    if !query.follow.unwrap_or(false) {
        let lines = state.store.read_logs(job.task_id, after, limit).await?;
        let next_after = lines.last().map_or(after, |l| l.seq);
        return Ok(Json(LogPage {
            lines: lines.into_iter().map(line_body).collect(),
            next_after,
        })
        .into_response());
    }
    let slot = state.events.slot(client.ip())?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(follow_logs(
        state.clone(),
        job.id,
        job.task_id,
        after,
        tx,
        slot,
    ));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let events = rx.recv().await?;
        Some((futures::stream::iter(events), rx))
    });
    use futures::StreamExt as _;
    Ok(Sse::new(stream.flatten())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// How often a followed log is read again on PostgreSQL, where another replica may append to
/// it unannounced; on SQLite every append is this server's own and wakes the follower.
const FOLLOW_SAFETY_READ: Duration = Duration::from_secs(2);

/// Sends a followed job's new log lines (as SSE events) to `out`, then `end` with its status
/// once it has finished. It reads the log when this replica appends to it, when the event hub
/// tells of a change to the job, and (on PostgreSQL only) every [`FOLLOW_SAFETY_READ`]: never
/// on a timer of its own otherwise. Ends when the client goes away or the server drains.
async fn follow_logs(
    state: AppState,
    run: RunId,
    task: orchion_domain::TaskId,
    mut after: i64,
    out: tokio::sync::mpsc::Sender<Vec<Result<Event, Infallible>>>,
    _slot: crate::events::StreamSlot,
) {
    let mut appended = state.work.logs_appended();
    let mut events = state.events.subscribe();
    let subject = run.to_string();
    let safety = match state.store.backend() {
        orchion_store::Backend::Postgres => Some(FOLLOW_SAFETY_READ),
        orchion_store::Backend::Sqlite => None,
    };
    loop {
        if state.lifecycle.is_draining() {
            return;
        }
        let Ok(lines) = state.store.read_logs(task, after, 500).await else {
            return;
        };
        let full = lines.len() == 500;
        if let Some(last) = lines.last() {
            after = last.seq;
            let batch = lines
                .into_iter()
                .map(|l| {
                    Ok(Event::default()
                        .id(l.seq.to_string())
                        .event("log")
                        .json_data(line_body(l))
                        .unwrap_or_default())
                })
                .collect();
            if out.send(batch).await.is_err() {
                return;
            }
            if full {
                continue;
            }
        }
        // Every line is written before the attempt's end is recorded, so once the job has
        // finished and the log read after that is empty, nothing more comes.
        match state.store.get_job(run).await {
            Ok(job) if job.state.status.is_terminal() => {
                let lines = state
                    .store
                    .read_logs(task, after, 1)
                    .await
                    .unwrap_or_default();
                if lines.is_empty() {
                    let end = Event::default()
                        .event("end")
                        .data(job.state.status.as_str());
                    let _ = out.send(vec![Ok(end)]).await;
                    return;
                }
                continue;
            }
            Ok(_) => {}
            Err(_) => return,
        }
        // Wait for something that may have changed the log or the job.
        let woken = async {
            match safety {
                Some(period) => tokio::time::sleep(period).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(woken);
        loop {
            tokio::select! {
                appended_to = appended.recv() => match appended_to {
                    Ok(id) if id == task => break,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                event = events.recv() => match event {
                    Ok(event) if event.subject == subject => break,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                () = &mut woken => break,
                () = out.closed() => return,
                () = state.lifecycle.draining() => return,
            }
        }
    }
}

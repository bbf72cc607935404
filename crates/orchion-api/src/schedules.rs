//! `/api/v1/schedules`: cron schedules that start a job at each instant.

use axum::{Json, extract::State, http::StatusCode};
use orchion_domain::{
    CronSchedule, FieldError, MisfirePolicy, OverlapPolicy, Schedule, ScheduleId, ValidationErrors,
};
use orchion_rest::{ScheduleBody, ScheduleList};
use orchion_spec::CreateJob;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::respond::paged;
use crate::{
    AppState,
    extract::{JsonBody, PathId, QueryParams, page_request},
    problem::{ApiError, Problem},
};

/// A request to create a schedule.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    pub name: String,
    /// 5 fields (`minute hour day month weekday`), 6 with seconds first, or `@hourly`-style.
    #[schema(example = "*/5 * * * *")]
    pub cron: String,
    /// An IANA time zone (default `UTC`).
    #[schema(example = "Europe/Berlin")]
    pub timezone: Option<String>,
    /// `allow` (default) or `skip`: skip an instant while the previous run is still going.
    pub overlap: Option<String>,
    /// `fire_once` (default: one run for instants missed while no server ran) or `skip`.
    pub misfire: Option<String>,
    /// The job each instant starts, as `POST /api/v1/jobs` takes it (without `run_at`).
    pub job: CreateJob,
}

/// A schedule as the API shows it.
fn schedule_body(s: Schedule) -> ScheduleBody {
    ScheduleBody {
        id: s.id.to_string(),
        name: s.name,
        cron: s.cron.expression().to_owned(),
        timezone: s.cron.timezone().to_owned(),
        overlap: s.overlap.as_str().to_owned(),
        misfire: s.misfire.as_str().to_owned(),
        spec: orchion_spec::secret::shown_spec(&s.job.executor, &s.job.spec),
        executor: s.job.executor,
        next_fire_at: s.next_fire_at,
        last_fire_at: s.last_fire_at,
        last_job_id: s.last_run_id.map(|r| r.to_string()),
        created_at: s.created_at,
    }
}

/// Paging for listing schedules.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListSchedules {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn prefixed(errors: ValidationErrors, prefix: &str) -> impl Iterator<Item = FieldError> {
    let prefix = prefix.to_owned();
    errors.0.into_iter().map(move |mut e| {
        e.pointer = format!("{prefix}{}", e.pointer);
        e
    })
}

/// Creates a schedule. Every problem with it, or with its job, is listed at once.
#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules", request_body = CreateSchedule,
    responses((status = 201, body = ScheduleBody), (status = 400, body = Problem), (status = 422, body = Problem)))]
pub async fn create_schedule(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateSchedule>,
) -> Result<(StatusCode, Json<ScheduleBody>), ApiError> {
    let request = body.value;
    let mut errors = ValidationErrors::default();
    if request.name.trim().is_empty() || request.name.len() > 200 {
        errors.push(FieldError::new("name", "name must be 1 to 200 characters"));
    }
    let cron = CronSchedule::parse(&request.cron, request.timezone.as_deref().unwrap_or("UTC"))
        .map_err(|e| errors.0.extend(e.0))
        .ok();
    let overlap = request
        .overlap
        .as_deref()
        .map_or(Ok(OverlapPolicy::Allow), str::parse)
        .map_err(|e| errors.push(FieldError::new("overlap", e)))
        .ok();
    let misfire = request
        .misfire
        .as_deref()
        .map_or(Ok(MisfirePolicy::FireOnce), str::parse)
        .map_err(|e| errors.push(FieldError::new("misfire", e)))
        .ok();
    if request.job.run_at.is_some() {
        errors.push(FieldError {
            pointer: "/job/run_at".into(),
            message: "a scheduled job starts at its instants: leave job.run_at out".into(),
        });
    }
    let job = match request.job.into_new_job() {
        Ok((mut job, _)) => match caller.project_for(job.project_id) {
            Ok(project) => {
                job.project_id = Some(project);
                Some(job)
            }
            Err(_) => {
                errors.push(FieldError {
                    pointer: "/job/project_id".into(),
                    message: "the job's project does not exist".into(),
                });
                None
            }
        },
        Err(e) => {
            errors.0.extend(prefixed(e, "/job"));
            None
        }
    };
    let (Some(cron), Some(overlap), Some(misfire), Some(job), true) =
        (cron, overlap, misfire, job, errors.0.is_empty())
    else {
        return Err(ApiError::Validation(errors));
    };
    let now = orchion_store::now();
    let schedule = Schedule {
        id: ScheduleId::new(),
        name: request.name.trim().to_owned(),
        next_fire_at: cron.next_after(now),
        cron,
        overlap,
        misfire,
        job,
        last_fire_at: None,
        last_run_id: None,
        created_at: now,
    };
    state.scheduler.create(&schedule).await?;
    Ok((StatusCode::CREATED, Json(schedule_body(schedule))))
}

/// Lists schedules, oldest first.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", params(ListSchedules),
    responses((status = 200, body = ScheduleList), (status = 400, body = Problem)))]
pub async fn list_schedules(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListSchedules>,
) -> Result<Json<ScheduleList>, ApiError> {
    let page = page_request(query.limit, query.cursor)?;
    let page = state.store.list_schedules(caller.0.project, page).await?;
    let (items, next_cursor) = paged(page, schedule_body);
    Ok(Json(ScheduleList { items, next_cursor }))
}

/// Gets a schedule.
#[utoipa::path(get, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    responses((status = 200, body = ScheduleBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get_schedule(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<ScheduleId>,
) -> Result<Json<ScheduleBody>, ApiError> {
    Ok(Json(schedule_body(
        visible_schedule(&state, &caller, id).await?,
    )))
}

/// The schedule with this id, if the caller may see it; a 404 otherwise.
async fn visible_schedule(
    state: &AppState,
    caller: &Caller,
    id: ScheduleId,
) -> Result<Schedule, ApiError> {
    let schedule = state.store.get_schedule(id).await?;
    caller.visible(schedule.job.project_id, "schedule", id, schedule)
}

/// Deletes a schedule; jobs it started are kept.
#[utoipa::path(delete, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_schedule(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<ScheduleId>,
) -> Result<StatusCode, ApiError> {
    visible_schedule(&state, &caller, id).await?;
    state.store.delete_schedule(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

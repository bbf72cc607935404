//! `/api/v1/projects`: the workflow service's projects API.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use orchion_domain::{NewProject, Project, ProjectFilter, ProjectId, ProjectStatus, ProjectUpdate};
use orchion_rest::{CreateProject, ProjectBody, ProjectList, UpdateProject};
use orchion_store::IdempotencyKey;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::respond::{Created, paged};
use crate::{
    AppState,
    extract::{JsonBody, PathId, QueryParams, idempotency_key, page_request, query_value},
    problem::{ApiError, Problem},
};

/// A project as the API shows it.
fn project_body(p: Project) -> ProjectBody {
    ProjectBody {
        id: p.id.to_string(),
        name: p.name,
        description: p.description,
        kind: p.kind,
        status: p.status.as_str().to_owned(),
        created_at: p.created_at,
        updated_at: p.updated_at,
    }
}

/// Filters and paging for listing projects.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListProjects {
    /// Only projects with this status (`active` or `archived`).
    pub status: Option<String>,
    /// At most this many (1 to 500, default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Creates a project. With an `Idempotency-Key` header, repeating the request returns the same
/// project (with `Idempotent-Replayed: true`) instead of creating another.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects",
    request_body = CreateProject,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the request safe to repeat")),
    responses(
        (status = 201, body = ProjectBody, description = "Created, or replayed for a repeated key"),
        (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
pub async fn create_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<CreateProject>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let CreateProject {
        name,
        description,
        kind,
    } = body.value;
    let new = NewProject::new(name, description, kind)?;
    let project = Project::create(new, orchion_store::now());
    let idempotency = key.map(|key| IdempotencyKey {
        key,
        request_hash: body.digest,
    });
    let created = state.store.create_project(project, idempotency).await?;
    let location = format!("/api/v1/projects/{}", created.value.id);
    Ok(
        Created::or_replayed(project_body(created.value), location, created.created)
            .into_response(),
    )
}

/// Gets a project.
#[utoipa::path(get, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "The project's id")),
    responses((status = 200, body = ProjectBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<ProjectId>,
) -> Result<Json<ProjectBody>, ApiError> {
    let project = state.store.get_project(id).await?;
    Ok(Json(project_body(caller.visible(
        Some(id),
        "project",
        id,
        project,
    )?)))
}

/// Lists projects, oldest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", params(ListProjects),
    responses((status = 200, body = ProjectList), (status = 400, body = Problem)))]
pub async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListProjects>,
) -> Result<Json<ProjectList>, ApiError> {
    let status = query_value::<ProjectStatus>("status", query.status)?;
    let page = page_request(query.limit, query.cursor)?;
    if let Some(own) = caller.0.project {
        // A confined caller's list is its own project, on one page.
        let project = state.store.get_project(own).await?;
        let first_page = page.after.is_none_or(|c| c.0 < own.as_uuid());
        let shown = (first_page && status.is_none_or(|s| s == project.status)).then_some(project);
        return Ok(Json(ProjectList {
            items: shown.into_iter().map(project_body).collect(),
            next_cursor: None,
        }));
    }
    let page = state
        .store
        .list_projects(ProjectFilter { status }, page)
        .await?;
    let (items, next_cursor) = paged(page, project_body);
    Ok(Json(ProjectList { items, next_cursor }))
}

/// Updates a project: the fields given change, the rest keep their value.
#[utoipa::path(put, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "The project's id")),
    request_body = UpdateProject,
    responses((status = 200, body = ProjectBody), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update_project(
    State(state): State<AppState>,
    PathId(id): PathId<ProjectId>,
    body: JsonBody<UpdateProject>,
) -> Result<Json<ProjectBody>, ApiError> {
    let UpdateProject {
        name,
        description,
        kind,
        status,
    } = body.value;
    let update = ProjectUpdate::new(name, description, kind, status)?;
    Ok(Json(project_body(
        state.store.update_project(id, update).await?,
    )))
}

/// Deletes a project.
#[utoipa::path(delete, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "The project's id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_project(
    State(state): State<AppState>,
    PathId(id): PathId<ProjectId>,
) -> Result<StatusCode, ApiError> {
    if id == ProjectId::DEFAULT {
        return Err(ApiError::Conflict(
            "the default project holds the work no project was named for; it cannot be deleted"
                .into(),
        ));
    }
    state.store.delete_project(id).await?;
    // Its tokens went with it.
    state.access.tokens_changed().await;
    Ok(StatusCode::NO_CONTENT)
}

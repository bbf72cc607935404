//! `/api/v1/projects`: the workflow service's projects API.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use orchion_domain::{NewProject, Project, ProjectFilter, ProjectId, ProjectStatus, ProjectUpdate};
use orchion_store::IdempotencyKey;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::respond::{Created, paged};
use crate::{
    AppState,
    extract::{JsonBody, PathId, QueryParams, idempotency_key, page_request, query_value},
    problem::{ApiError, Problem},
};

/// A request to create a project.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// 1 to 200 characters.
    #[schema(example = "My Project")]
    pub name: String,
    /// Up to 4000 characters; empty when absent.
    #[schema(example = "Project description")]
    pub description: Option<String>,
    /// Lowercase letters, digits, `_` and `-`; `standard` when absent.
    #[serde(rename = "type")]
    #[schema(example = "standard")]
    pub kind: Option<String>,
}

/// A partial update: fields left out keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `active` or `archived`.
    pub status: Option<String>,
}

/// A project.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectBody {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `active` or `archived`.
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<Project> for ProjectBody {
    fn from(p: Project) -> Self {
        ProjectBody {
            id: p.id.to_string(),
            name: p.name,
            description: p.description,
            kind: p.kind,
            status: p.status.as_str(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// A page of projects.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectList {
    pub items: Vec<ProjectBody>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
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
        Created::or_replayed(ProjectBody::from(created.value), location, created.created)
            .into_response(),
    )
}

/// Gets a project.
#[utoipa::path(get, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "The project's id")),
    responses((status = 200, body = ProjectBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get_project(
    State(state): State<AppState>,
    PathId(id): PathId<ProjectId>,
) -> Result<Json<ProjectBody>, ApiError> {
    Ok(Json(state.store.get_project(id).await?.into()))
}

/// Lists projects, oldest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", params(ListProjects),
    responses((status = 200, body = ProjectList), (status = 400, body = Problem)))]
pub async fn list_projects(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<ListProjects>,
) -> Result<Json<ProjectList>, ApiError> {
    let status = query_value::<ProjectStatus>("status", query.status)?;
    let page = page_request(query.limit, query.cursor)?;
    let page = state
        .store
        .list_projects(ProjectFilter { status }, page)
        .await?;
    let (items, next_cursor) = paged(page, ProjectBody::from);
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
    Ok(Json(state.store.update_project(id, update).await?.into()))
}

/// Deletes a project.
#[utoipa::path(delete, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "The project's id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_project(
    State(state): State<AppState>,
    PathId(id): PathId<ProjectId>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_project(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

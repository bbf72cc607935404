//! `/api/v1/projects/{id}/secrets`: a project's secrets, set and deleted by its admins, listed
//! by its operators. An answer holds names, versions and times; a value goes in and never
//! comes out (docs/secrets.md).

use axum::{
    Json,
    extract::{FromRequestParts, State},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use orchion_control::SecretError;
use orchion_domain::ProjectId;
use orchion_rest::{SecretBody, SecretList, SetSecret};
use orchion_store::{SecretInfo, StoreError};

use crate::{
    AppState,
    auth::{Caller, hidden},
    extract::{JsonBody, PathId, parse_id},
    problem::{ApiError, Problem},
    respond::Created,
};

/// A secret as the API shows it: never its value.
fn secret_body(secret: SecretInfo) -> SecretBody {
    SecretBody {
        name: secret.name,
        project_id: secret.project.to_string(),
        version: secret.version,
        created_by: secret.created_by,
        created_at: secret.created_at,
        updated_by: secret.updated_by,
        updated_at: secret.updated_at,
    }
}

/// The project of the path's `{id}`, which the caller must see: a project it may not see is
/// answered as one that does not exist.
async fn project(state: &AppState, caller: &Caller, id: ProjectId) -> Result<ProjectId, ApiError> {
    if !caller.sees(Some(id)) {
        return Err(hidden("project", id));
    }
    state.store.get_project(id).await?;
    Ok(id)
}

/// `{id}` and `{name}` of a secret's path.
pub struct SecretPath {
    project: ProjectId,
    name: String,
}

impl<S: Send + Sync> FromRequestParts<S> for SecretPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path((project, name)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::InvalidParameter {
                    name: "name".into(),
                    detail: format!("path parameters: {}", e.body_text()),
                })?;
        if let Err(why) = orchion_spec::check_secret_name(&name) {
            return Err(ApiError::InvalidParameter {
                name: "name".into(),
                detail: format!("path parameter `name`: {why}"),
            });
        }
        Ok(Self {
            project: parse_id("id", &project)?,
            name,
        })
    }
}

fn secret_error(error: SecretError) -> ApiError {
    match error {
        SecretError::Invalid(errors) => ApiError::Validation(errors),
        SecretError::OtherKey(why) => ApiError::Conflict(why),
        SecretError::Store(e) => e.into(),
    }
}

/// Sets a secret's value: made (201) at version 1, or changed (200) to its next version. The
/// value is sealed before it is stored and never shown again; the answer holds the rest.
#[utoipa::path(put, path = "/api/v1/projects/{id}/secrets/{name}", tag = "projects",
    params(("id" = String, Path, description = "The project's id"),
        ("name" = String, Path, description = "The secret's name: letters, digits, `_` and `-`")),
    request_body = SetSecret,
    responses((status = 200, body = SecretBody), (status = 201, body = SecretBody),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn put_secret(
    State(state): State<AppState>,
    caller: Caller,
    path: SecretPath,
    body: JsonBody<SetSecret>,
) -> Result<Response, ApiError> {
    let project = project(&state, &caller, path.project).await?;
    let secret = match state
        .secrets
        .put(project, &path.name, &body.value.value, &caller.0.actor)
        .await
    {
        Ok(secret) => secret,
        Err(SecretError::Store(StoreError::MissingReference { .. })) => {
            return Err(hidden("project", project));
        }
        Err(e) => return Err(secret_error(e)),
    };
    let location = format!("/api/v1/projects/{project}/secrets/{}", secret.name);
    Ok(if secret.version == 1 {
        Created::new(secret_body(secret), location).into_response()
    } else {
        Json(secret_body(secret)).into_response()
    })
}

/// Describes a secret: its name, version and times, never its value.
#[utoipa::path(get, path = "/api/v1/projects/{id}/secrets/{name}", tag = "projects",
    params(("id" = String, Path, description = "The project's id"),
        ("name" = String, Path, description = "The secret's name")),
    responses((status = 200, body = SecretBody), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_secret(
    State(state): State<AppState>,
    caller: Caller,
    path: SecretPath,
) -> Result<Json<SecretBody>, ApiError> {
    let project = project(&state, &caller, path.project).await?;
    match state.secrets.get(project, &path.name).await? {
        Some(secret) => Ok(Json(secret_body(secret))),
        None => Err(hidden("secret", &path.name)),
    }
}

/// Deletes a secret. Jobs that refer to it and have not run yet fail when they are claimed,
/// naming it.
#[utoipa::path(delete, path = "/api/v1/projects/{id}/secrets/{name}", tag = "projects",
    params(("id" = String, Path, description = "The project's id"),
        ("name" = String, Path, description = "The secret's name")),
    responses((status = 204, description = "Deleted"), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_secret(
    State(state): State<AppState>,
    caller: Caller,
    path: SecretPath,
) -> Result<StatusCode, ApiError> {
    let project = project(&state, &caller, path.project).await?;
    if state.secrets.delete(project, &path.name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(hidden("secret", &path.name))
    }
}

/// Lists a project's secrets by name, without their values.
#[utoipa::path(get, path = "/api/v1/projects/{id}/secrets", tag = "projects",
    params(("id" = String, Path, description = "The project's id")),
    responses((status = 200, body = SecretList), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list_secrets(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<ProjectId>,
) -> Result<Json<SecretList>, ApiError> {
    let project = project(&state, &caller, id).await?;
    let items = state.secrets.list(project).await?;
    Ok(Json(SecretList {
        items: items.into_iter().map(secret_body).collect(),
    }))
}

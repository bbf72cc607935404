//! `/api/v1/join-tokens`: the secrets agents join the cluster with, made, listed and revoked
//! by cluster admins. The cluster's configured join token (`cluster.join_token`) is not among
//! them: it is changed in the configuration.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use orchion_control::JoinTokenRequest;
use orchion_domain::{
    Capacity, FieldError, JoinLimits, JoinToken, JoinTokenId, Labels, ValidationErrors,
};
use orchion_rest::{CreateJoinToken, CreatedJoinToken, JoinTokenBody, JoinTokenList};

use crate::{
    AppState,
    auth::{Caller, hidden},
    extract::{JsonBody, PathId, QueryParams, page_request},
    nodes::capacity_body,
    problem::{ApiError, Problem},
    respond::{Created, paged},
    tokens::{ListTokens, name_and_ttl},
};

/// A join token as the API shows it: never its digest.
pub fn join_token_body(t: JoinToken) -> JoinTokenBody {
    JoinTokenBody {
        id: t.id.to_string(),
        name: t.name,
        labels: t.limits.labels,
        max_capacity: t.limits.max_capacity.map(capacity_body),
        created_by: t.created_by,
        created_at: t.created_at,
        expires_at: t.expires_at,
        last_used_at: t.last_used_at,
        revoked_at: t.revoked_at,
    }
}

/// The join token a valid request describes, every problem named at once.
fn join_token_request(body: CreateJoinToken) -> Result<JoinTokenRequest, ApiError> {
    let mut errors = ValidationErrors::default();
    let (name, ttl) = name_and_ttl(&body.name, body.ttl.as_deref(), &mut errors);
    let labels = body.labels.inspect(|labels| {
        // A label limit is checked as a node's labels are; `*` stands for any value.
        let checked: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.clone(), if v == "*" { String::new() } else { v.clone() }))
            .collect();
        if let Err(e) = Labels::new(checked) {
            errors.0.extend(e.0);
        }
    });
    let max_capacity = body.max_capacity.and_then(|c| {
        Capacity::new(c.cpu_millis, c.memory_bytes, c.gpus)
            .map_err(|e| {
                for problem in e.0 {
                    errors.push(FieldError::new("max_capacity", problem.message));
                }
            })
            .ok()
    });
    errors.into_result(())?;
    Ok(JoinTokenRequest {
        name,
        limits: JoinLimits {
            labels,
            max_capacity,
        },
        ttl,
    })
}

/// Makes a join token. Its text is in this answer and nowhere else: it is stored only as a
/// digest.
#[utoipa::path(post, path = "/api/v1/join-tokens", tag = "nodes",
    request_body = CreateJoinToken,
    responses((status = 201, body = CreatedJoinToken), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_join_token(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateJoinToken>,
) -> Result<Response, ApiError> {
    let request = join_token_request(body.value)?;
    let (token, secret) = state.join_tokens.create(request, &caller.0.actor).await?;
    let location = format!("/api/v1/join-tokens/{}", token.id);
    let body = CreatedJoinToken {
        token: join_token_body(token),
        token_text: secret,
    };
    Ok(Created::new(body, location).into_response())
}

/// Lists join tokens (expired and revoked ones too), oldest first.
#[utoipa::path(get, path = "/api/v1/join-tokens", tag = "nodes", params(ListTokens),
    responses((status = 200, body = JoinTokenList), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_join_tokens(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<ListTokens>,
) -> Result<Json<JoinTokenList>, ApiError> {
    let page = page_request(query.limit, query.cursor)?;
    let (items, next_cursor) = paged(state.join_tokens.list(page).await?, join_token_body);
    Ok(Json(JoinTokenList { items, next_cursor }))
}

/// Revokes a join token: it admits no new node from now on, on every replica. Nodes it
/// admitted stay; delete them to remove them.
#[utoipa::path(delete, path = "/api/v1/join-tokens/{id}", tag = "nodes",
    params(("id" = String, Path, description = "The join token's id")),
    responses((status = 200, body = JoinTokenBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_join_token(
    State(state): State<AppState>,
    PathId(id): PathId<JoinTokenId>,
) -> Result<Json<JoinTokenBody>, ApiError> {
    match state.join_tokens.revoke(id).await {
        Ok(token) => Ok(Json(join_token_body(token))),
        Err(orchion_store::StoreError::NotFound { .. }) => Err(hidden("join token", id)),
        Err(e) => Err(e.into()),
    }
}

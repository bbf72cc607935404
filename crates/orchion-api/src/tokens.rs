//! `/api/v1/tokens`: API tokens, made, listed and revoked by admins. A confined admin manages
//! the tokens of its own project only.

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use orchion_control::TokenRequest;
use orchion_domain::{FieldError, ProjectId, Role, Token, TokenId, TokenKind, ValidationErrors};
use orchion_rest::{CreateToken, CreatedToken, TokenBody, TokenList};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{
    AppState,
    auth::{Caller, hidden},
    extract::{JsonBody, PathId, QueryParams, page_request},
    problem::{ApiError, Problem},
    respond::{Created, paged},
};

/// The longest token name accepted, in characters.
const MAX_NAME_CHARS: usize = 200;

/// A token as the API shows it: never its digest.
pub fn token_body(t: Token) -> TokenBody {
    TokenBody {
        id: t.id.to_string(),
        name: t.name,
        role: t.role.as_str().to_owned(),
        project_id: t.project.map(|p| p.to_string()),
        created_by: t.created_by,
        created_at: t.created_at,
        expires_at: t.expires_at,
        last_used_at: t.last_used_at,
        revoked_at: t.revoked_at,
    }
}

/// A token's name (trimmed) and lifetime, with what is wrong with them added to `errors`.
pub(crate) fn name_and_ttl(
    name: &str,
    ttl: Option<&str>,
    errors: &mut ValidationErrors,
) -> (String, Option<std::time::Duration>) {
    let name = name.trim().to_owned();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        errors.push(FieldError::new(
            "name",
            format!(
                "name must be 1 to {MAX_NAME_CHARS} characters, none of them control characters"
            ),
        ));
    }
    let ttl = match ttl.map(humantime::parse_duration) {
        None => None,
        Some(Ok(ttl)) if !ttl.is_zero() => Some(ttl),
        Some(Ok(_)) => {
            errors.push(FieldError::new("ttl", "ttl must be longer than zero"));
            None
        }
        Some(Err(e)) => {
            errors.push(FieldError::new(
                "ttl",
                format!("ttl is not a duration such as `30d` or `12h`: {e}"),
            ));
            None
        }
    };
    (name, ttl)
}

/// The token a valid request describes, every problem named at once.
fn token_request(caller: &Caller, body: CreateToken) -> Result<TokenRequest, ApiError> {
    let mut errors = ValidationErrors::default();
    let (name, ttl) = name_and_ttl(&body.name, body.ttl.as_deref(), &mut errors);
    let role = body
        .role
        .parse::<Role>()
        .map_err(|e| errors.push(FieldError::new("role", e)))
        .ok();
    let project = match body.project_id.as_deref().map(str::parse::<ProjectId>) {
        None => caller.0.project,
        Some(Ok(p)) if caller.sees(Some(p)) => Some(p),
        Some(Ok(p)) => {
            errors.push(FieldError::new(
                "project_id",
                format!("project `{p}` does not exist"),
            ));
            None
        }
        Some(Err(e)) => {
            errors.push(FieldError::new("project_id", e.to_string()));
            None
        }
    };
    if let Some(role) = role
        && !caller.0.may(role)
    {
        errors.push(FieldError::new(
            "role",
            format!(
                "a {} cannot make a token with the stronger role {role}",
                caller.0.role
            ),
        ));
    }
    errors.into_result(())?;
    Ok(TokenRequest {
        kind: TokenKind::Api,
        name,
        role: role.unwrap_or(Role::Viewer),
        project,
        ttl,
    })
}

/// Makes an API token. Its text is in this answer and nowhere else: it is stored only as a
/// digest.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "access",
    request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateToken>,
) -> Result<Response, ApiError> {
    let request = token_request(&caller, body.value)?;
    let issued = state.access.create(request, &caller.0.actor).await?;
    let location = format!("/api/v1/tokens/{}", issued.token.id);
    let body = CreatedToken {
        token: token_body(issued.token),
        token_text: issued.secret,
    };
    Ok(Created::new(body, location).into_response())
}

/// Paging for listing tokens.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTokens {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Lists API tokens (revoked ones too), oldest first.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "access", params(ListTokens),
    responses((status = 200, body = TokenList), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListTokens>,
) -> Result<Json<TokenList>, ApiError> {
    let page = page_request(query.limit, query.cursor)?;
    let page = state
        .store
        .list_tokens(TokenKind::Api, caller.0.project, page)
        .await?;
    let (items, next_cursor) = paged(page, token_body);
    Ok(Json(TokenList { items, next_cursor }))
}

/// Revokes a token: refused from the next request on, on every replica.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "access",
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 200, body = TokenBody), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<TokenId>,
) -> Result<Json<TokenBody>, ApiError> {
    state
        .store
        .get_token(id)
        .await?
        .filter(|t| t.kind == TokenKind::Api && caller.sees(t.project))
        .ok_or_else(|| hidden("token", id))?;
    Ok(Json(token_body(state.access.revoke(id).await?)))
}

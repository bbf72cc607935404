//! `/api/v1/session`: signing in to the dashboard with a token. The answer sets an HttpOnly,
//! `SameSite=Strict`, `Secure` cookie holding a session (a token of its own, with the signing
//! token's role and project, for [`orchion_control::access::SESSION_TTL`]); the page keeps the
//! session's CSRF token, which every state-changing request carries in `X-CSRF-Token`.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use orchion_control::{TokenRequest, access::SESSION_TTL, access::csrf_token};
use orchion_domain::TokenKind;
use orchion_rest::{CreateSession, SessionBody};

use crate::{
    AppState,
    auth::{Caller, ClientAddr, SESSION_COOKIE, session_cookie},
    extract::JsonBody,
    problem::{ApiError, Problem},
};

/// The session cookie holding `value` for `max_age` seconds (0: cleared).
pub(crate) fn cookie(value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("orchion_session=; Path=/; Max-Age=0"))
}

/// Signs in with an API token: starts a dashboard session in a cookie.
#[utoipa::path(post, path = "/api/v1/session", tag = "access",
    request_body = CreateSession,
    responses((status = 201, body = SessionBody), (status = 401, body = Problem), (status = 429, body = Problem)))]
pub async fn create_session(
    State(state): State<AppState>,
    client: ClientAddr,
    body: JsonBody<CreateSession>,
) -> Result<Response, ApiError> {
    let client = client.ip();
    if state.throttle.blocked(client) {
        return Err(ApiError::TooManyFailures(
            "too many failed sign-ins from this address; try again in a minute".into(),
        ));
    }
    let refused = match state.access.authenticate(body.value.token.trim()).await? {
        Ok(token) if token.kind == TokenKind::Api => Ok(token),
        Ok(_) => Err("sign in with an API token, not a session".to_owned()),
        Err(refusal) => Err(refusal.to_string()),
    };
    let token = refused.map_err(|why| {
        state.throttle.failed(client);
        ApiError::InvalidToken(why)
    })?;
    let session = state
        .access
        .create(
            TokenRequest {
                kind: TokenKind::Session,
                name: format!("dashboard session of {}", token.name),
                role: token.role,
                project: token.project,
                ttl: Some(SESSION_TTL),
            },
            &token.principal().actor,
        )
        .await?;
    let principal = session.token.principal();
    let body = SessionBody {
        actor: principal.actor,
        role: principal.role.as_str().to_owned(),
        project_id: principal.project.map(|p| p.to_string()),
        csrf_token: Some(csrf_token(&session.secret)),
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&session.secret, SESSION_TTL.as_secs()),
    );
    Ok(response)
}

/// Who the request acts for, and (for a session) its CSRF token.
#[utoipa::path(get, path = "/api/v1/session", tag = "access",
    responses((status = 200, body = SessionBody), (status = 401, body = Problem)))]
pub async fn get_session(caller: Caller, headers: HeaderMap) -> Json<SessionBody> {
    let session = session_cookie(&headers).filter(|_| caller.0.session.is_some());
    Json(SessionBody {
        actor: caller.0.actor,
        role: caller.0.role.as_str().to_owned(),
        project_id: caller.0.project.map(|p| p.to_string()),
        csrf_token: session.map(|s| csrf_token(&s)),
    })
}

/// Signs out: revokes the session and clears its cookie.
#[utoipa::path(delete, path = "/api/v1/session", tag = "access",
    responses((status = 204), (status = 401, body = Problem)))]
pub async fn delete_session(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if let Some(id) = caller.0.session {
        state.access.revoke(id).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0));
    Ok(response)
}

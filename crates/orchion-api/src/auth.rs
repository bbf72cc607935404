//! Who may call what: the one table of every route's policy ([`policy`]), the middleware that
//! authenticates a request and enforces it ([`guard`]), and the audit entry every
//! state-changing request leaves.
//!
//! A request carries an API token (`Authorization: Bearer …`) or a dashboard session (the
//! `orchion_session` cookie, whose state-changing requests must also carry the session's CSRF
//! token in `X-CSRF-Token`). Tokens in the query string are refused: they end up in logs.
//! Failed attempts are counted per client address; past the configured number a minute, the
//! client is refused (429) until the minute is over.
//!
//! Project confinement is enforced where resources are read: handlers ask
//! [`Caller::sees`]/[`Caller::scope`] and answer 404 for what another project owns, exactly as
//! for what does not exist.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State},
    http::{HeaderMap, Method, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use orchion_domain::{AuditEntry, AuditOutcome, Principal, ProjectId, Role};

use crate::{AppState, REQUEST_ID_HEADER, problem::ApiError};

/// The cookie a dashboard session travels in.
pub const SESSION_COOKIE: &str = "orchion_session";
/// The header a session's state-changing requests carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Nobody in particular: health checks, the dashboard's own files, signing in, and the
    /// seeds' endpoints that verify their callers themselves (GitHub's signature) or act as
    /// their configured identity (`/enqueue`).
    Open,
    /// A principal with at least this role. A confined one sees only its project.
    Role(Role),
    /// A principal with at least this role that sees every project: cluster-wide resources.
    Cluster(Role),
}

/// The policy of every route, by method and route template. `None`: a route nobody gave a
/// policy, which [`guard`] treats as admin-only and the route test refuses.
pub fn policy(method: &Method, route: &str) -> Option<Policy> {
    use Policy::{Cluster, Open};
    const VIEWER: Policy = Policy::Role(Role::Viewer);
    const OPERATOR: Policy = Policy::Role(Role::Operator);
    const ADMIN: Policy = Policy::Role(Role::Admin);
    let read = *method == Method::GET || *method == Method::HEAD;
    Some(match route {
        "/livez" | "/readyz" | "/health" | "/ready" | "/" | "/ui/app.js" | "/ui/app.css"
            if read =>
        {
            Open
        }
        "/webhook/github" | "/enqueue" if *method == Method::POST => Open,
        "/api/v1/session" if *method == Method::POST => Open,
        "/api/v1/session/methods" | "/auth/oidc/login" | "/auth/oidc/callback" if read => Open,
        "/api/v1/session" => VIEWER,
        "/openapi.json" | "/docs" | "/docs/" | "/docs/{*rest}" if read => VIEWER,
        "/api/v1/projects" | "/api/v1/projects/{id}" if read => VIEWER,
        "/api/v1/projects" | "/api/v1/projects/{id}" => Cluster(Role::Admin),
        // Names and versions only: whoever may run the project's work may know what it can use.
        "/api/v1/projects/{id}/secrets" | "/api/v1/projects/{id}/secrets/{name}" if read => {
            OPERATOR
        }
        "/api/v1/projects/{id}/secrets/{name}" => ADMIN,
        "/api/v1/jobs"
        | "/api/v1/jobs/{id}"
        | "/api/v1/jobs/{id}/logs"
        | "/api/v1/workflows"
        | "/api/v1/workflows/{id}"
        | "/api/v1/workflows/{id}/metrics"
        | "/api/v1/workflows/{id}/logs"
        | "/api/v1/workflow-types/{name}"
        | "/api/v1/deployments"
        | "/api/v1/deployments/{id}"
        | "/api/v1/engines"
        | "/api/v1/executors"
        | "/api/v1/events"
        | "/api/v1/ws"
        | "/api/v1/schedules"
        | "/api/v1/schedules/{id}"
        | "/api/v1/nodes"
        | "/api/nodes"
        | "/api/v1/nodes/{id}"
        | "/api/v1/agents"
        | "/api/v1/agents/{id}"
        | "/api/v1/status"
            if read =>
        {
            VIEWER
        }
        "/api/v1/jobs"
        | "/api/v1/jobs/batch"
        | "/api/v1/jobs/{id}/cancel"
        | "/api/v1/jobs/{id}/retry"
        | "/api/v1/workflow-types"
        | "/api/v1/workflows"
        | "/api/v1/workflows/{id}/cancel"
        | "/api/v1/workflows/{id}/retry"
        | "/api/v1/deployments"
        | "/api/v1/deployments/{id}" => OPERATOR,
        "/api/v1/schedules" | "/api/v1/schedules/{id}" => ADMIN,
        "/api/v1/tokens" | "/api/v1/tokens/{id}" => ADMIN,
        "/api/v1/nodes/{id}"
        | "/api/v1/nodes/{id}/drain"
        | "/api/v1/agents/{id}/restart"
        | "/api/v1/webhook-deliveries"
        | "/api/v1/join-tokens"
        | "/api/v1/join-tokens/{id}"
        | "/api/v1/audit" => Cluster(Role::Admin),
        _ => return None,
    })
}

/// The principal a request acts for, as handlers take it.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// Whether the caller may see a resource of `project`.
    pub fn sees(&self, project: Option<ProjectId>) -> bool {
        self.0.sees(project)
    }

    /// `value` when the caller may see `project`'s resources; otherwise the 404 a missing
    /// `kind` `id` gets, word for word, so nothing tells the two apart.
    pub fn visible<T>(
        &self,
        project: Option<ProjectId>,
        kind: &'static str,
        id: impl std::fmt::Display,
        value: T,
    ) -> Result<T, ApiError> {
        if self.sees(project) {
            Ok(value)
        } else {
            Err(hidden(kind, id))
        }
    }

    /// The project filter of a list: the caller's own project when confined (`None` inside:
    /// every project). `Err(())`: the caller asked for another project, which shows nothing.
    #[allow(clippy::result_unit_err)]
    pub fn scope(&self, named: Option<ProjectId>) -> Result<Option<ProjectId>, ()> {
        match (self.0.project, named) {
            (Some(mine), Some(named)) if mine != named => Err(()),
            (Some(mine), _) => Ok(Some(mine)),
            (None, named) => Ok(named),
        }
    }

    /// The project a new resource goes to: the one named (which the caller must see: another
    /// is answered as a missing project), else the caller's own, else `default`.
    pub fn project_for(&self, named: Option<ProjectId>) -> Result<ProjectId, ApiError> {
        if let Some(named) = named
            && !self.sees(Some(named))
        {
            return Err(ApiError::Validation(orchion_domain::ValidationErrors(
                vec![orchion_domain::FieldError::new(
                    "project_id",
                    format!("project `{named}` does not exist"),
                )],
            )));
        }
        Ok(self.0.project_or_default(named))
    }
}

/// The 404 of a resource that does not exist (or that the caller may not see).
pub fn hidden(kind: &'static str, id: impl std::fmt::Display) -> ApiError {
    ApiError::from(orchion_store::StoreError::NotFound {
        kind,
        id: id.to_string(),
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::Unauthenticated(NO_CREDENTIALS.into()))
    }
}

/// The client's address, when the server knows it (it always does over a socket).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    fn of(extensions: &axum::http::Extensions) -> Self {
        ClientAddr(
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        )
    }

    /// The address a throttle counts under (unknown clients share one).
    pub(crate) fn ip(self) -> IpAddr {
        self.0.unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr::of(&parts.extensions))
    }
}

const NO_CREDENTIALS: &str =
    "this needs an API token: send `Authorization: Bearer <token>` (see `orchion token create`)";

/// Failed authentications per client address, for the brute-force limit.
#[derive(Debug)]
pub struct Throttle {
    max_per_minute: u32,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Throttle {
    /// A limit of `max_per_minute` failures (0: no limit).
    pub fn new(max_per_minute: u32) -> Self {
        Self {
            max_per_minute,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `client` is refused for now.
    pub(crate) fn blocked(&self, client: IpAddr) -> bool {
        if self.max_per_minute == 0 {
            return false;
        }
        let mut failures = self.window();
        match failures.get(&client) {
            Some((since, _)) if since.elapsed() >= Duration::from_secs(60) => {
                failures.remove(&client);
                false
            }
            Some((_, count)) => *count >= self.max_per_minute,
            None => false,
        }
    }

    pub(crate) fn failed(&self, client: IpAddr) {
        let mut failures = self.window();
        // Bounded: forget the oldest windows before the map grows past what an attack fills.
        if failures.len() >= 100_000 {
            failures.retain(|_, (since, _)| since.elapsed() < Duration::from_secs(60));
        }
        let entry = failures.entry(client).or_insert((Instant::now(), 0));
        entry.1 = entry.1.saturating_add(1);
    }
}

/// The credentials a request presents: a bearer token, or a session cookie.
enum Credentials {
    Bearer(String),
    Session(String),
}

fn credentials(headers: &HeaderMap) -> Result<Option<Credentials>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::InvalidToken("the Authorization header is not text".into()))?;
        let Some((scheme, token)) = value.split_once(' ') else {
            return Err(ApiError::InvalidToken(
                "the Authorization header must be `Bearer <token>`".into(),
            ));
        };
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::InvalidToken(format!(
                "the Authorization header must be `Bearer <token>`, not `{}`",
                scheme.chars().take(16).collect::<String>()
            )));
        }
        return Ok(Some(Credentials::Bearer(token.trim().to_owned())));
    }
    Ok(session_cookie(headers).map(Credentials::Session))
}

/// The dashboard session cookie a request carries, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, SESSION_COOKIE)
}

/// The value of the cookie `name` a request carries, if it carries one that is not empty.
pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// A query string that carries a token (`access_token=`, `token=`).
fn token_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .filter_map(|pair| pair.split('=').next())
            .any(|name| matches!(name, "access_token" | "token" | "api_key"))
    })
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Authenticates the request, enforces its route's policy, and audits it when it changes state.
pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let client = ClientAddr::of(request.extensions());
    let Some(route) = route else {
        // No route: the fallback answers 404 and reveals nothing.
        return next.run(request).await;
    };
    if let Some(refused) = crate::extract::nul_in_uri(request.uri()) {
        return refused.into_response();
    }
    let path = request.uri().path().to_owned();
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let decided = decide(&state, &method, &route, client, &mut request).await;
    let principal = request.extensions().get::<Principal>().cloned();
    if !is_state_changing(&method) {
        return match decided {
            Ok(()) => next.run(request).await,
            Err(e) => e.into_response(),
        };
    }
    let resource = path_ids(&route, &path).join(" ");
    let entry = AuditEntry {
        seq: 0,
        at: orchion_store::now(),
        actor: principal.as_ref().map_or_else(
            || open_identity(&route).unwrap_or("anonymous").to_owned(),
            |p| p.actor.clone(),
        ),
        role: principal.as_ref().map(|p| p.role),
        project: principal.as_ref().and_then(|p| p.project),
        client: client
            .0
            .map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
        method: method.as_str().to_owned(),
        route,
        resource,
        status: None,
        request_id,
    };
    match decided {
        // Refused: nothing changes; recorded with its answer.
        Err(e) => answered(&state, entry, e.into_response()).await,
        Ok(()) if audited_in_transaction(&method, &entry.route) => {
            let draft = AuditDraft(Arc::new((Arc::new(entry), AtomicBool::new(false))));
            request.extensions_mut().insert(draft.clone());
            let response = next.run(request).await;
            if draft.is_written() {
                return response;
            }
            // The handler changed nothing (a replay, a refusal, a failure).
            answered(&state, Arc::unwrap_or_clone(draft.entry()), response).await
        }
        Ok(()) => audited(&state, entry, next.run(request)).await,
    }
}

/// Records a request that changed nothing, with its answer.
async fn answered(state: &AppState, entry: AuditEntry, response: Response) -> Response {
    let (response, created) = created_id(response).await;
    let entry = AuditEntry {
        status: Some(response.status().as_u16()),
        resource: with_created(entry.resource, created),
        ..entry
    };
    if let Err(e) = state.access.record(entry).await {
        tracing::error!(error = %e, "the audit log could not be written");
    }
    response
}

/// Who an open route that changes something acts as, in the audit log: the configured
/// identities of webhook rules and of the job enqueue service.
fn open_identity(route: &str) -> Option<&'static str> {
    match route {
        "/webhook/github" => Some("webhook:github"),
        "/enqueue" => Some("enqueue"),
        _ => None,
    }
}

/// The routes whose handlers append the request's audit entry in the same transaction as the
/// change they make (through the [`AuditDraft`] the guard hands them): creating a job, the hot
/// path. Every other state-changing request is recorded before it is acted on.
fn audited_in_transaction(method: &Method, route: &str) -> bool {
    *method == Method::POST && route == "/api/v1/jobs"
}

/// A request's audit entry, for a handler to append in the transaction of its change; the
/// handler marks it written once that transaction has committed.
#[derive(Debug, Clone)]
pub struct AuditDraft(Arc<(Arc<AuditEntry>, AtomicBool)>);

impl AuditDraft {
    /// The entry, without its outcome.
    pub fn entry(&self) -> Arc<AuditEntry> {
        self.0.0.clone()
    }

    /// The entry was committed with the change.
    pub fn mark_written(&self) {
        self.0.1.store(true, Ordering::Release);
    }

    fn is_written(&self) -> bool {
        self.0.1.load(Ordering::Acquire)
    }
}

/// Runs a state-changing request recorded before it is acted on, then records how it ended.
async fn audited(
    state: &AppState,
    entry: AuditEntry,
    handler: impl Future<Output = Response>,
) -> Response {
    // Recorded before it is acted on, so no change is ever made unrecorded.
    let seq = match state.access.record(entry.clone()).await {
        Ok(seq) => seq,
        Err(e) => {
            tracing::error!(error = %e, "the audit log could not be written; the request is refused");
            return ApiError::from(e).into_response();
        }
    };
    let (response, created) = created_id(handler.await).await;
    let outcome = AuditOutcome {
        seq,
        status: response.status().as_u16(),
        resource: with_created(entry.resource, created),
    };
    if let Err(e) = state.access.finish(outcome).await {
        // The change is made and its entry is on disk; only how it ended is missing.
        tracing::error!(seq, error = %e, "the outcome of an audited request could not be written");
    }
    response
}

/// Decides whether the request may go on; once its token is checked, the request carries its
/// [`Principal`] (the handler runs only on `Ok`).
async fn decide(
    state: &AppState,
    method: &Method,
    route: &str,
    client: ClientAddr,
    request: &mut Request,
) -> Result<(), ApiError> {
    if token_in_query(request.uri().query()) {
        return Err(ApiError::InvalidParameter {
            name: "access_token".into(),
            detail: "tokens are not accepted in the query string (it ends up in logs); send \
                     `Authorization: Bearer <token>`"
                .into(),
        });
    }
    let policy = policy(method, route).unwrap_or(Policy::Cluster(Role::Admin));
    if policy == Policy::Open {
        // An open route acts as its own identity (webhook rules, `/enqueue`); nothing to check.
        return Ok(());
    }
    let credentials = credentials(request.headers())?;
    let Some(credentials) = credentials else {
        return Err(ApiError::Unauthenticated(NO_CREDENTIALS.into()));
    };
    let client_ip = client.ip();
    if state.throttle.blocked(client_ip) {
        return Err(ApiError::TooManyFailures(
            "too many failed authentications from this address; try again in a minute".into(),
        ));
    }
    let (text, session) = match &credentials {
        Credentials::Bearer(text) => (text.as_str(), false),
        Credentials::Session(text) => (text.as_str(), true),
    };
    let token = match state.access.authenticate(text).await? {
        Ok(token) => token,
        Err(refusal) => {
            state.throttle.failed(client_ip);
            return Err(ApiError::InvalidToken(refusal.to_string()));
        }
    };
    if session && is_state_changing(method) {
        let presented = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let expected = orchion_control::access::csrf_token(text);
        use subtle::ConstantTimeEq as _;
        if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(ApiError::Forbidden(format!(
                "a signed-in request that changes something must carry the session's CSRF token in `{CSRF_HEADER}`"
            )));
        }
    }
    let principal = token.principal();
    // Known from here on, so a refusal below is audited under its actor too.
    request.extensions_mut().insert(principal.clone());
    let (needed, cluster) = match policy {
        Policy::Open => unreachable!("handled above"),
        Policy::Role(role) => (role, false),
        Policy::Cluster(role) => (role, true),
    };
    if !principal.may(needed) {
        return Err(ApiError::Forbidden(format!(
            "{method} {route} needs the {needed} role; this token has {}",
            principal.role
        )));
    }
    if cluster && !principal.is_unconfined() {
        return Err(ApiError::Forbidden(format!(
            "{method} {route} concerns every project; this token is confined to one"
        )));
    }
    Ok(())
}

/// An entry's resources with the id of what the request created, if it created something.
fn with_created(mut resource: String, created: Option<String>) -> String {
    if let Some(created) = created {
        if !resource.is_empty() {
            resource.push(' ');
        }
        resource.push_str(&created);
    }
    resource
}

/// The ids a request's path names, by its route template: `/api/v1/jobs/{id}/cancel` and
/// `/api/v1/jobs/0190…/cancel` give `["0190…"]`.
fn path_ids(route: &str, path: &str) -> Vec<String> {
    route
        .split('/')
        .zip(path.split('/'))
        .filter(|(template, _)| template.starts_with('{'))
        .map(|(_, value)| value.chars().take(200).collect())
        .collect()
}

/// The id of the resource a 201 or 202 answer made (its JSON's `id`, `jobId` or `runId`),
/// and the answer, unchanged.
async fn created_id(response: Response) -> (Response, Option<String>) {
    let status = response.status().as_u16();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status == 201 || status == 202) || !json {
        return (response, None);
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (Response::from_parts(parts, axum::body::Body::empty()), None);
    };
    let id = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            ["id", "jobId", "runId"]
                .iter()
                .find_map(|k| v.get(k).and_then(|id| id.as_str()).map(str::to_owned))
        });
    (
        Response::from_parts(parts, axum::body::Body::from(bytes)),
        id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_ids_follow_the_template() {
        assert_eq!(
            path_ids("/api/v1/jobs/{id}/cancel", "/api/v1/jobs/abc/cancel"),
            ["abc"]
        );
        assert!(path_ids("/api/v1/jobs", "/api/v1/jobs").is_empty());
    }

    #[test]
    fn tokens_in_query_strings_are_noticed() {
        assert!(token_in_query(Some("access_token=x")));
        assert!(token_in_query(Some("limit=3&token=x")));
        assert!(!token_in_query(Some("tokens=3")));
        assert!(!token_in_query(None));
    }
}

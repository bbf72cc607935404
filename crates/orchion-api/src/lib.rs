//! Orchion's HTTP edge: the REST API under `/api/v1`, the seeds' compatibility endpoints, health
//! checks, the OpenAPI document and Swagger UI.
//!
//! Boundary: JSON DTOs live here and are converted by hand to and from domain types; handlers
//! validate through the domain's constructors and talk to the store through `Arc<dyn Store>`.
//! Every error leaves through [`problem::ApiError`], the one mapping to problem+json.

pub mod audit;
pub mod auth;
pub mod browser;
pub mod dashboard;
pub mod deployments;
pub mod enqueue;
pub mod events;
pub mod executors;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod join_tokens;
pub mod nodes;
pub mod oidc;
pub mod problem;
pub mod projects;
pub mod respond;
pub mod runs;
pub mod schedules;
pub mod secrets;
pub mod session;
pub mod status;
pub mod tokens;
pub mod webhooks;
pub mod workflows;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Extension, Router,
    extract::{DefaultBodyLimit, Request, State},
    http::HeaderName,
    response::IntoResponse,
};
use orchion_control::{NodeRegistry, Scheduler, WorkQueue, Workflows};
use orchion_store::Store;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};
use utoipa_swagger_ui::SwaggerUi;

use crate::{extract::BodyLimit, problem::ApiError};

/// The header carrying each request's id, set when the client sends none and echoed back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What every handler shares: the [`Services`], behind one `Arc` (a request clones its state
/// several times on its way through the layers; one count is cheaper than one per service).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
    pub store: Arc<dyn Store>,
    pub nodes: Arc<NodeRegistry>,
    pub work: Arc<WorkQueue>,
    pub scheduler: Arc<Scheduler>,
    pub workflows: Arc<Workflows>,
    /// `POST /webhook/github`: its secrets, rules and the services they start runs with.
    pub webhooks: Arc<orchion_control::Webhooks>,
    /// Whether each deployment engine is enabled (`engines.<name>.enabled`); absent: enabled.
    pub engines: Arc<std::collections::BTreeMap<String, bool>>,
    /// The latest probe of executors that need something outside Orchion (`kubernetes`).
    pub probes: executors::Probes,
    /// The live event log, fanned out to `/api/v1/events` and `/api/v1/ws`.
    pub events: Arc<events::EventHub>,
    pub lifecycle: Arc<Lifecycle>,
    /// Where `POST /enqueue` forwards jobs.
    pub enqueue: Arc<enqueue::EnqueueSettings>,
    /// Tokens and the audit log.
    pub access: Arc<orchion_control::Access>,
    /// The identity provider the dashboard signs in through (`auth.oidc`), if any.
    pub oidc: Option<Arc<oidc::OidcLogin>>,
    /// Who may join the cluster as a new node.
    pub join_tokens: Arc<orchion_control::JoinTokens>,
    /// Projects' secrets.
    pub secrets: Arc<orchion_control::Secrets>,
    /// What `kubernetes` jobs of each project may name.
    pub kubernetes: Arc<orchion_spec::executor::KubernetesPolicy>,
    /// Failed authentications per client address.
    pub throttle: Arc<auth::Throttle>,
}

/// The server's lifecycle as the API sees it: when it started, and whether it is draining.
#[derive(Debug)]
pub struct Lifecycle {
    started: Instant,
    draining: tokio_util::sync::CancellationToken,
}

impl Lifecycle {
    /// A lifecycle starting now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            draining: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Marks the server as shutting down: readiness checks fail from now on.
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    /// Whether the server is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Completes when the server starts shutting down: long-lived responses (event streams)
    /// end then, so they never hold the shutdown up.
    pub async fn draining(&self) {
        self.draining.cancelled().await;
    }

    /// How long the server has been up.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

/// The API's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// How long a request may take to be answered: its body read and its handler run (a
    /// stream's answer then flows for as long as it lasts).
    pub request_timeout: std::time::Duration,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Orchion", description = "The Orchion orchestrator's REST API."),
    tags(
        (name = "projects", description = "Projects: namespaces that own workflows, runs and deployments"),
        (name = "jobs", description = "Jobs: one task run on an agent, retried by policy"),
        (name = "schedules", description = "Cron schedules that start jobs"),
        (name = "workflows", description = "Workflow types: versioned DAGs of steps"),
        (name = "runs", description = "Workflow runs: a workflow type's steps run in dependency order"),
        (name = "webhooks", description = "Webhooks: verified GitHub deliveries turned into runs by rules"),
        (name = "deployments", description = "Deployments: resources applied by engines in dependency order, rolled back on failure"),
        (name = "events", description = "The live event log: Server-Sent Events and WebSocket, resumable by sequence number"),
        (name = "nodes", description = "Nodes: machines running `orchion agent`"),
        (name = "agents", description = "The agents on the nodes (the workflow service's agents API)"),
        (name = "health", description = "Liveness and readiness"),
        (name = "access", description = "API tokens, dashboard sessions and the audit log"),
        (name = "compatibility", description = "The seed services' interfaces, in their own shapes")
    )
)]
struct ApiDoc;

/// The router and the OpenAPI document generated from its handlers.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(projects::create_project, projects::list_projects))
        .routes(routes!(
            projects::get_project,
            projects::update_project,
            projects::delete_project
        ))
        .routes(routes!(jobs::create_job, jobs::list_jobs))
        .routes(routes!(jobs::create_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::retry_job))
        .routes(routes!(jobs::job_logs))
        .routes(routes!(
            schedules::create_schedule,
            schedules::list_schedules
        ))
        .routes(routes!(schedules::get_schedule, schedules::delete_schedule))
        .routes(routes!(workflows::put_workflow_type))
        .routes(routes!(workflows::get_workflow_type))
        .routes(routes!(runs::start_workflow, runs::list_workflows))
        .routes(routes!(runs::get_workflow))
        .routes(routes!(runs::cancel_workflow))
        .routes(routes!(runs::retry_workflow))
        .routes(routes!(runs::workflow_metrics))
        .routes(routes!(runs::workflow_logs))
        .routes(routes!(
            deployments::create_deployment,
            deployments::list_deployments
        ))
        .routes(routes!(
            deployments::get_deployment,
            deployments::delete_deployment
        ))
        .routes(routes!(deployments::list_engines))
        .routes(routes!(executors::list_executors))
        .routes(routes!(events::events))
        .routes(routes!(events::websocket))
        .routes(routes!(webhooks::github))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(nodes::list_nodes))
        .routes(routes!(nodes::list_all_nodes))
        .routes(routes!(nodes::get_node, nodes::delete_node))
        .routes(routes!(nodes::drain_node))
        .routes(routes!(nodes::list_agents))
        .routes(routes!(nodes::get_agent))
        .routes(routes!(nodes::restart_agent))
        .routes(routes!(status::status))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(
            join_tokens::create_join_token,
            join_tokens::list_join_tokens
        ))
        .routes(routes!(join_tokens::revoke_join_token))
        .routes(routes!(
            session::create_session,
            session::get_session,
            session::delete_session
        ))
        .routes(routes!(oidc::methods))
        .routes(routes!(oidc::login))
        .routes(routes!(oidc::callback))
        .routes(routes!(secrets::list_secrets))
        .routes(routes!(
            secrets::put_secret,
            secrets::get_secret,
            secrets::delete_secret
        ))
        .routes(routes!(audit::list_audit))
        .routes(routes!(enqueue::enqueue))
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .split_for_parts()
}

/// The dashboard's content policy on the API documentation's pages.
async fn docs_policy(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(dashboard::POLICY),
    );
    response
}

/// Counts and times each request by method and route template (`/api/v1/jobs/{id}`, never the
/// raw path, so the label set stays bounded).
async fn measure(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::http::Method;
    // A client may send any method name: only the standard ones get a series of their own.
    let method = match *request.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS => request.method().as_str(),
        _ => "other",
    }
    .to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = orchion_metrics::metrics();
    metrics
        .api_requests
        .with_label_values(&[&method, &route, response.status().as_str()])
        .inc();
    metrics
        .api_request_duration
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Answers 503 for a request not answered within `limit` (`server.request_timeout`): a client
/// sending its body a byte a minute, or a handler stuck on the store, holds nothing for
/// longer. Only the time to the answer's head counts; a stream then flows on.
async fn bounded(
    State(limit): State<std::time::Duration>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// The whole HTTP application.
pub fn router(state: AppState, limits: Limits, browser: browser::Browser) -> Router {
    let (api, openapi) = api();
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    // The API documentation gets the dashboard's policy: nothing from elsewhere, never framed.
    let docs = Router::<AppState>::from(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .layer(axum::middleware::map_response(docs_policy));
    api.merge(docs)
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(browser, browser::guard))
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            bounded,
        ))
        .layer(axum::middleware::from_fn(measure))
        .layer(DefaultBodyLimit::max(limits.body_limit_bytes))
        .layer(Extension(BodyLimit(limits.body_limit_bytes)))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let id = request
                    .headers()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id = %id)
            })
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

async fn not_found(request: Request) -> impl IntoResponse {
    ApiError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> impl IntoResponse {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        request.method(),
        request.uri().path()
    ))
}

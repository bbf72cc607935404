//! Health endpoints: Kubernetes-style `/livez` and `/readyz`, and the seeds' `/health` and
//! `/ready` in their own shapes.
//!
//! Ready means: not draining for shutdown, the store answers within [`STORE_CHECK_TIMEOUT`], and
//! its last write did not fail for want of space or an I/O error.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::ToSchema;

use crate::AppState;

/// How long a readiness check waits for the store.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The service name `/health` reports.
const SERVICE: &str = "orchion";

/// `/health` in the job enqueue service's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// Always `healthy` when the process answers.
    #[schema(example = "healthy")]
    pub status: &'static str,
    #[schema(example = "orchion")]
    pub service: &'static str,
    /// The server's clock, RFC 3339.
    pub timestamp: String,
    /// Time since start, as `2h15m30s`.
    #[schema(example = "2h15m30s")]
    pub uptime: String,
    /// Where `POST /enqueue` forwards jobs.
    pub worker_url: String,
}

/// `/ready`, `/readyz` and `/livez` bodies.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyResponse {
    /// `ok`, `ready` or `not_ready`.
    pub status: &'static str,
    /// Why the server is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/livez", tag = "health", responses((status = 200, body = ReadyResponse)))]
pub async fn livez() -> Json<ReadyResponse> {
    Json(ReadyResponse {
        status: "ok",
        reason: None,
    })
}

/// Readiness: 503 while draining for shutdown or while the store is unreachable.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = ReadyResponse), (status = 503, body = ReadyResponse)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    readiness(&state, "ok").await
}

/// Readiness in the workflow service's path.
#[utoipa::path(get, path = "/ready", tag = "health", responses(
    (status = 200, body = ReadyResponse), (status = 503, body = ReadyResponse)))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    readiness(&state, "ready").await
}

async fn readiness(state: &AppState, ok: &'static str) -> (StatusCode, Json<ReadyResponse>) {
    let reason = if state.lifecycle.is_draining() {
        Some("draining for shutdown".to_owned())
    } else {
        match tokio::time::timeout(STORE_CHECK_TIMEOUT, state.store.ping()).await {
            Ok(Ok(())) => state
                .store
                .write_failure()
                .map(|why| format!("the store cannot write: {why}")),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: store check failed");
                Some("the store is unreachable".to_owned())
            }
            Err(_) => Some("the store did not answer in time".to_owned()),
        }
    };
    match reason {
        None => (
            StatusCode::OK,
            Json(ReadyResponse {
                status: ok,
                reason: None,
            }),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ReadyResponse {
                status: "not_ready",
                reason: Some(reason),
            }),
        ),
    }
}

/// Health in the job enqueue service's shape.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = HealthResponse)))]
pub async fn health(State(state): State<AppState>) -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "healthy",
        service: SERVICE,
        timestamp: OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default(),
        uptime: go_duration(state.lifecycle.uptime()),
        worker_url: state.enqueue.worker_url.clone(),
    })
}

/// A duration as Go prints one, to whole seconds: `2h15m30s`, `45s`, `0s`.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(45_900)), "45s");
        assert_eq!(go_duration(Duration::from_secs(61)), "1m1s");
        assert_eq!(
            go_duration(Duration::from_secs(2 * 3600 + 15 * 60 + 30)),
            "2h15m30s"
        );
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }
}

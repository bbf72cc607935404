//! `POST /enqueue`: the job enqueue service's interface, in its own shapes.
//!
//! A place id becomes a job with the deterministic id `reviews:<placeId>:start`, which is also
//! its idempotency key: the same place id, while its job exists, returns the same job id and
//! creates nothing. The job forwards `{"placeId"}` to `<worker_url>/enqueue` through the `http`
//! executor, retried with backoff.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::HeaderMap,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use orchion_domain::{NewJob, Placement, RetryPolicy, Timeouts};
use orchion_store::IdempotencyKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::ToSchema;

use crate::AppState;

/// Where jobs are forwarded.
#[derive(Debug, Clone)]
pub struct EnqueueSettings {
    pub worker_url: String,
    pub max_attempts: u32,
    /// The project the forwarding jobs belong to (`enqueue.project`).
    pub project: orchion_domain::ProjectId,
}

/// The longest place id accepted.
const MAX_PLACE_ID: usize = 512;

/// The 202 answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Enqueued {
    #[schema(example = "enqueued")]
    pub status: &'static str,
    pub place_id: String,
    #[schema(example = "reviews:ChIJN1t_tDeuEmsRUsoyG83frY4:start")]
    pub job_id: String,
    pub timestamp: String,
}

/// The 400 answer, in the seed's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnqueueError {
    #[schema(example = "error")]
    pub status: &'static str,
    #[schema(example = "placeId is required")]
    pub error: String,
    pub timestamp: String,
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(EnqueueError {
            status: "error",
            error: message.into(),
            timestamp: now(),
        }),
    )
        .into_response()
}

/// Where a forward POSTs: `<worker_url>/enqueue`.
pub fn forward_url(worker_url: &str) -> String {
    format!("{}/enqueue", worker_url.trim_end_matches('/'))
}

/// The place id in a request body, or the seed's error message.
fn place_id(body: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let place = match value.get("placeId") {
        None | Some(serde_json::Value::Null) => return Err("placeId is required".into()),
        Some(serde_json::Value::String(s)) => s.trim().to_owned(),
        Some(_) => return Err("placeId must be a string".into()),
    };
    if place.is_empty() {
        return Err("placeId is required".into());
    }
    if place.len() > MAX_PLACE_ID || place.chars().any(char::is_control) {
        return Err(format!(
            "placeId must be at most {MAX_PLACE_ID} characters with no control characters"
        ));
    }
    Ok(place)
}

/// Enqueues a review collection job for a place; idempotent per place id.
#[utoipa::path(post, path = "/enqueue", tag = "compatibility",
    request_body(content = Object, example = json!({"placeId": "ChIJN1t_tDeuEmsRUsoyG83frY4"})),
    responses((status = 202, body = Enqueued), (status = 400, body = EnqueueError)))]
pub async fn enqueue(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    // As the seed's JSON body parser: a body of another type (a form, `text/plain`, as a
    // cross-site page can send) is no body at all.
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| {
            let essence = essence.trim().to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        });
    let place = match place_id(if json { &body } else { &[] }) {
        Ok(place) => place,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let job_id = format!("reviews:{place}:start");
    let settings = &state.enqueue;
    let url = forward_url(&settings.worker_url);
    let spec = serde_json::json!({
        "method": "POST",
        "url": url,
        "headers": {"content-type": "application/json"},
        "body": serde_json::json!({"placeId": place}).to_string(),
    });
    let spec = match orchion_spec::validate("http", &spec) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::error!(error = %e, "the configured worker URL makes an invalid job");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the worker URL is misconfigured",
            );
        }
    };
    let job = NewJob {
        name: job_id.clone(),
        project_id: Some(settings.project),
        executor: "http".into(),
        spec,
        priority: 0,
        retry: RetryPolicy {
            max_attempts: settings.max_attempts,
            ..RetryPolicy::default()
        },
        timeouts: Timeouts::default(),
        placement: Placement::default(),
        concurrency: None,
        run_at: None,
        trace_parent: orchion_otel::traceparent(),
    };
    let key = IdempotencyKey {
        key: job_id.clone(),
        request_hash: Sha256::digest(place.as_bytes()).to_vec(),
    };
    match state.work.enqueue(job, Some(key)).await {
        Ok(created) => {
            if created.created {
                tracing::info!(place_id = %place, job_id = %job_id, "job enqueued");
            }
            (
                StatusCode::ACCEPTED,
                Json(Enqueued {
                    status: "enqueued",
                    place_id: place,
                    job_id,
                    timestamp: now(),
                }),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, place_id = %place, "enqueue failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the job could not be stored; retry",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_ids_are_required_strings() {
        assert_eq!(place_id(br#"{"placeId":"abc"}"#), Ok("abc".into()));
        assert_eq!(place_id(br#"{}"#), Err("placeId is required".into()));
        assert_eq!(
            place_id(br#"{"placeId":""}"#),
            Err("placeId is required".into())
        );
        assert_eq!(
            place_id(br#"{"placeId":"  "}"#),
            Err("placeId is required".into())
        );
        assert_eq!(
            place_id(br#"{"placeId":null}"#),
            Err("placeId is required".into())
        );
        assert_eq!(
            place_id(br#"{"placeId":5}"#),
            Err("placeId must be a string".into())
        );
        assert!(
            place_id(b"{bad")
                .unwrap_err()
                .starts_with("invalid JSON body")
        );
    }
}

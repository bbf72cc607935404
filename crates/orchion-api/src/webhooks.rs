//! `POST /webhook/github` and `/api/v1/webhook-deliveries`: the HTTP edge of
//! [`orchion_control::Webhooks`], which verifies deliveries and turns them into runs by the
//! configured rules; here only the body is read and the recorded answer given.

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use orchion_control::{GithubDelivery, WebhookError};
use orchion_store::Delivery;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState,
    extract::{BodyLimit, QueryParams, page_request},
    problem::{ApiError, Problem},
};

/// Receives a GitHub webhook delivery.
#[utoipa::path(post, path = "/webhook/github", tag = "webhooks",
    params(
        ("X-GitHub-Event" = String, Header, description = "The event"),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's id; a redelivery is answered as the first time"),
        ("X-Hub-Signature-256" = String, Header, description = "sha256=<HMAC-SHA256 of the body with the webhook secret>")),
    responses((status = 200, description = "A ping"), (status = 202, description = "Accepted or ignored, with the runs started"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
pub async fn github(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let limit = request.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "content type `{content_type}`: set the webhook's content type to application/json"
        )));
    }
    let body = Bytes::from_request(request, &state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let delivery = GithubDelivery {
        event: text("x-github-event"),
        id: text("x-github-delivery"),
        signature: text("x-hub-signature-256"),
        body: &body,
        trace_parent: orchion_otel::traceparent(),
    };
    let recorded = state
        .webhooks
        .receive(delivery)
        .await
        .map_err(|e| match e {
            WebhookError::Unauthorized(message) => ApiError::Unauthorized(message),
            WebhookError::MissingHeader(name) => ApiError::InvalidParameter {
                name: name.to_owned(),
                detail: e.to_string(),
            },
            WebhookError::MalformedJson(_) => ApiError::MalformedJson(e.to_string()),
            WebhookError::Nul(ref pointer) => ApiError::InvalidBody {
                pointer: pointer.clone(),
                detail: e.to_string(),
            },
            WebhookError::Store(e) => e.into(),
        })?;
    Ok(replay(&recorded))
}

/// The answer recorded for a delivery.
fn replay(delivery: &Delivery) -> Response {
    let status = u16::try_from(delivery.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::ACCEPTED);
    let body: Value = serde_json::from_str(&delivery.response).unwrap_or(Value::Null);
    (status, Json(body)).into_response()
}

/// A recorded delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryBody {
    pub id: String,
    pub source: String,
    pub event: String,
    pub action: Option<String>,
    pub repository: Option<String>,
    /// `accepted` or `ignored`.
    pub verdict: String,
    pub reason: Option<String>,
    /// What each matching rule started (`run_id` or `job_id`), or its `error`.
    #[schema(value_type = Vec<Object>)]
    pub runs: Value,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// Paging through deliveries.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListDeliveries {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<DeliveryBody>,
    pub next_cursor: Option<String>,
}

/// Webhook deliveries in the order received, with their verdicts and the runs they started.
#[utoipa::path(get, path = "/api/v1/webhook-deliveries", tag = "webhooks", params(ListDeliveries),
    responses((status = 200, body = DeliveryList), (status = 400, body = Problem)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<ListDeliveries>,
) -> Result<Json<DeliveryList>, ApiError> {
    let page = page_request(query.limit, query.cursor)?;
    let page = state.store.list_deliveries(page).await?;
    Ok(Json(DeliveryList {
        items: page
            .items
            .into_iter()
            .map(|d| DeliveryBody {
                runs: serde_json::from_str(&d.runs).unwrap_or(Value::Null),
                id: d.id,
                source: d.source,
                event: d.event,
                action: d.action,
                repository: d.repository,
                verdict: d.verdict,
                reason: d.reason,
                received_at: d.received_at,
            })
            .collect(),
        next_cursor: page.next.map(|c| c.to_string()),
    }))
}

//! `POST /webhook/github` and `/api/v1/webhook-deliveries`: verified GitHub deliveries turned
//! into runs by the configured rules.
//!
//! Order of work: the signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body, compared
//! in constant time) is checked against every configured secret before anything is parsed;
//! then a redelivery (`X-GitHub-Delivery` seen before) gets the first answer again and starts
//! nothing; then the payload is parsed and each rule that wants the event starts its run (a
//! workflow run or a job, idempotent per delivery and rule). Every verified delivery is
//! recorded with its verdict and the runs it started.

use std::collections::BTreeMap;

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use hmac::{Hmac, Mac};
use orchion_config::{GithubWebhooks, WebhookRule};
use orchion_control::StartRun;
use orchion_spec::{CreateJob, Scope};
use orchion_store::{Delivery, IdempotencyKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AppState,
    extract::{BodyLimit, QueryParams, page_request},
    problem::{ApiError, Problem},
};

/// The events rules can ask for; any other is answered `ignored`.
pub const EVENTS: &[&str] = &[
    "issues",
    "issue_comment",
    "pull_request",
    "pull_request_review",
    "push",
    "release",
    "workflow_run",
];

/// Which configured secret signed a body: the default one, or one scoped to a repository or
/// organisation.
enum Signer<'a> {
    Default,
    Scoped(&'a str),
}

/// The secret whose HMAC-SHA256 of `body` is `signature` (`sha256=<hex>`), if any.
fn signer<'a>(config: &'a GithubWebhooks, body: &[u8], signature: &str) -> Option<Signer<'a>> {
    let expected = hex::decode(signature.strip_prefix("sha256=")?).ok()?;
    let verifies = |secret: &orchion_config::Secret| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
            return false;
        };
        mac.update(body);
        // `verify_slice` compares in constant time.
        mac.verify_slice(&expected).is_ok()
    };
    if config.secret.as_ref().is_some_and(verifies) {
        return Some(Signer::Default);
    }
    config
        .secrets
        .iter()
        .find(|(_, secret)| verifies(secret))
        .map(|(scope, _)| Signer::Scoped(scope.as_str()))
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, ApiError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::InvalidParameter {
            name: name.to_owned(),
            detail: format!("header `{name}` is missing: is this a GitHub webhook delivery?"),
        })
}

/// The branch an event is about: a push's ref, a pull request's base, a workflow run's branch.
fn branch(event: &str, payload: &Value) -> Option<String> {
    let text = match event {
        "push" => payload["ref"].as_str()?.strip_prefix("refs/heads/")?,
        "pull_request" | "pull_request_review" => {
            payload["pull_request"]["base"]["ref"].as_str()?
        }
        "workflow_run" => payload["workflow_run"]["head_branch"].as_str()?,
        "release" => payload["release"]["target_commitish"].as_str()?,
        _ => return None,
    };
    Some(text.to_owned())
}

/// The labels on the issue or pull request an event is about.
fn labels(payload: &Value) -> Vec<&str> {
    ["issue", "pull_request"]
        .iter()
        .flat_map(|item| payload[*item]["labels"].as_array().into_iter().flatten())
        .filter_map(|l| l["name"].as_str())
        .collect()
}

fn wants(
    rule: &WebhookRule,
    event: &str,
    action: Option<&str>,
    repository: Option<&str>,
    payload: &Value,
) -> bool {
    rule.event == event
        && (rule.actions.is_empty() || action.is_some_and(|a| rule.actions.iter().any(|r| r == a)))
        && (rule.repositories.is_empty()
            || repository.is_some_and(|r| rule.repositories.iter().any(|w| w == r)))
        && (rule.branches.is_empty()
            || branch(event, payload).is_some_and(|b| rule.branches.contains(&b)))
        && (rule.labels.is_empty()
            || labels(payload)
                .iter()
                .any(|l| rule.labels.iter().any(|w| w == l)))
}

/// Starts what `rule` asks for; the answer names the run or job, or what went wrong.
async fn start(state: &AppState, rule: &WebhookRule, delivery: &str, payload: &Value) -> Value {
    let outputs = BTreeMap::new();
    let scope = Scope {
        input: &Value::Null,
        outputs: &outputs,
        item: None,
        event: Some(payload),
    };
    let key = |rendered: &Value| IdempotencyKey {
        key: format!("github:{delivery}:{}", rule.name),
        request_hash: Sha256::digest(rendered.to_string().as_bytes()).to_vec(),
    };
    let fail = |error: String| json!({"rule": rule.name, "error": error});
    if let Some(workflow) = &rule.workflow {
        let input = match orchion_spec::render(&rule.input, &scope) {
            Ok(input) => input,
            Err(e) => return fail(format!("input: {e}")),
        };
        let started = state
            .workflows
            .start(
                StartRun {
                    name: Some(format!("{workflow} (github {delivery})")),
                    workflow: workflow.clone(),
                    version: None,
                    project_id: None,
                    input: input.clone(),
                },
                Some(key(&input)),
            )
            .await;
        return match started {
            Ok(created) => json!({"rule": rule.name, "run_id": created.value.id.to_string()}),
            Err(e) => fail(e.to_string()),
        };
    }
    let Some(template) = &rule.job else {
        return fail("the rule names neither a workflow nor a job".into());
    };
    let rendered = match orchion_spec::render(template, &scope) {
        Ok(job) => job,
        Err(e) => return fail(format!("job: {e}")),
    };
    let job = match serde_json::from_value::<CreateJob>(rendered.clone())
        .map_err(|e| e.to_string())
        .and_then(|j| j.into_new_job().map_err(|e| e.to_string()))
    {
        Ok((job, _)) => job,
        Err(e) => return fail(format!("job: {e}")),
    };
    match state.work.enqueue(job, Some(key(&rendered))).await {
        Ok(created) => json!({"rule": rule.name, "job_id": created.value.id.to_string()}),
        Err(e) => fail(e.to_string()),
    }
}

/// Receives a GitHub webhook delivery.
#[utoipa::path(post, path = "/webhook/github", tag = "webhooks",
    params(
        ("X-GitHub-Event" = String, Header, description = "The event"),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's id; a redelivery is answered as the first time"),
        ("X-Hub-Signature-256" = String, Header, description = "sha256=<HMAC-SHA256 of the body with the webhook secret>")),
    responses((status = 200, description = "A ping"), (status = 202, description = "Accepted or ignored, with the runs started"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
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
    let config = &state.webhooks;
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "header `X-Hub-Signature-256` is missing: deliveries must be signed".into(),
            )
        })?;
    if config.secret.is_none() && config.secrets.is_empty() {
        return Err(ApiError::Unauthorized(
            "no webhook secret is configured (webhooks.github.secret or GITHUB_WEBHOOK_SECRET): every delivery is refused".into(),
        ));
    }
    let signer = signer(config, &body, signature).ok_or_else(|| {
        ApiError::Unauthorized(
            "`X-Hub-Signature-256` does not match the body under any configured secret".into(),
        )
    })?;
    let event = header_text(&headers, "x-github-event")?.to_owned();
    let delivery = header_text(&headers, "x-github-delivery")?.to_owned();
    if let Some(seen) = state.store.get_delivery(&delivery).await? {
        return Ok(replay(&seen));
    }
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::MalformedJson(format!("the delivery's body is not JSON: {e}")))?;
    let action = payload["action"].as_str().map(str::to_owned);
    let repository = payload["repository"]["full_name"]
        .as_str()
        .map(str::to_owned);
    if let Signer::Scoped(scope) = signer {
        let allowed = repository
            .as_deref()
            .is_some_and(|r| r == scope || r.split('/').next() == Some(scope));
        if !allowed {
            return Err(ApiError::Unauthorized(format!(
                "the delivery is signed with the secret for `{scope}` but is about `{}`",
                repository.as_deref().unwrap_or("no repository")
            )));
        }
    }
    let what = match &action {
        Some(action) => format!("{event}.{action}"),
        None => event.clone(),
    };
    let (status, verdict, reason, runs) = if event == "ping" {
        (
            StatusCode::OK,
            "accepted",
            Some("ping".to_owned()),
            Vec::new(),
        )
    } else if !EVENTS.contains(&event.as_str()) {
        (
            StatusCode::ACCEPTED,
            "ignored",
            Some(format!("event `{event}` is not handled")),
            Vec::new(),
        )
    } else {
        let rules: Vec<&WebhookRule> = config
            .rules
            .iter()
            .filter(|r| {
                wants(
                    r,
                    &event,
                    action.as_deref(),
                    repository.as_deref(),
                    &payload,
                )
            })
            .collect();
        if rules.is_empty() {
            (
                StatusCode::ACCEPTED,
                "ignored",
                Some(format!(
                    "no rule wants {what} on {}",
                    repository.as_deref().unwrap_or("this repository")
                )),
                Vec::new(),
            )
        } else {
            let mut runs = Vec::with_capacity(rules.len());
            for rule in rules {
                runs.push(start(&state, rule, &delivery, &payload).await);
            }
            (StatusCode::ACCEPTED, "accepted", None, runs)
        }
    };
    let mut response =
        json!({"status": verdict, "delivery": delivery, "event": what, "runs": runs});
    if event == "ping" {
        response["zen"] = payload["zen"].clone();
    }
    if let Some(reason) = &reason {
        response["reason"] = json!(reason);
    }
    let recorded = state
        .store
        .record_delivery(Delivery {
            id: delivery,
            seq: Uuid::now_v7(),
            source: "github".into(),
            event,
            action,
            repository,
            verdict: verdict.into(),
            reason,
            runs: Value::Array(runs).to_string(),
            status: i32::from(status.as_u16()),
            response: response.to_string(),
            received_at: orchion_store::now(),
        })
        .await?;
    Ok(replay(&recorded.value))
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

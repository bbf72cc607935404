//! GitHub webhook deliveries turned into runs by the configured rules.
//!
//! Order of work: the signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body, compared
//! in constant time) is checked against every configured secret before anything is parsed;
//! then a redelivery (`X-GitHub-Delivery` seen before) gets the first answer again and starts
//! nothing; then the payload is parsed and each rule that wants the event starts its run (a
//! workflow run or a job, idempotent per delivery and rule). Every verified delivery is
//! recorded with its verdict, the runs it started and the answer given, which a redelivery
//! gets again.

use std::{collections::BTreeMap, sync::Arc};

use hmac::{Hmac, Mac};
use orchion_config::{GithubWebhooks, WebhookRule};
use orchion_domain::{NewJob, ProjectId};
use orchion_spec::{CreateJob, Scope};
use orchion_store::{Delivery, IdempotencyKey, Store, StoreError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{StartRun, WorkQueue, WorkflowError, Workflows};

/// A delivery as it arrived: its headers (absent ones `None`) and its raw body.
#[derive(Debug, Clone)]
pub struct GithubDelivery<'a> {
    /// `X-GitHub-Event`.
    pub event: Option<&'a str>,
    /// `X-GitHub-Delivery`.
    pub id: Option<&'a str>,
    /// `X-Hub-Signature-256`.
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
    /// The W3C `traceparent` of the request that brought it; what it starts joins that trace.
    pub trace_parent: Option<String>,
}

/// Why a delivery is refused: nothing is recorded or started.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Not signed, or not by a configured secret (or by one scoped elsewhere).
    #[error("{0}")]
    Unauthorized(String),
    /// A header GitHub always sends is missing.
    #[error("header `{0}` is missing: is this a GitHub webhook delivery?")]
    MissingHeader(&'static str),
    /// The body is not JSON.
    #[error("the delivery's body is not JSON: {0}")]
    MalformedJson(String),
    /// The body holds text the store cannot keep, at this JSON pointer: nothing was started.
    #[error("field `{0}` of the delivery: {nul}", nul = orchion_spec::NUL_REFUSED)]
    Nul(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Receives GitHub deliveries: verifies, deduplicates, matches rules, starts runs, records.
pub struct Webhooks {
    config: GithubWebhooks,
    /// The project the rules act in, as an operator of it alone.
    project: ProjectId,
    store: Arc<dyn Store>,
    work: Arc<WorkQueue>,
    workflows: Arc<Workflows>,
}

impl Webhooks {
    pub fn new(
        config: GithubWebhooks,
        project: ProjectId,
        store: Arc<dyn Store>,
        work: Arc<WorkQueue>,
        workflows: Arc<Workflows>,
    ) -> Self {
        Webhooks {
            config,
            project,
            store,
            work,
            workflows,
        }
    }

    /// Handles a delivery: the record of what it did, with the answer to give (`status`,
    /// `response`), or the first record when it is a redelivery.
    pub async fn receive(&self, delivery: GithubDelivery<'_>) -> Result<Delivery, WebhookError> {
        let config = &self.config;
        let signature = delivery.signature.ok_or_else(|| {
            WebhookError::Unauthorized(
                "header `X-Hub-Signature-256` is missing: deliveries must be signed".into(),
            )
        })?;
        if config.secret.is_none() && config.secrets.is_empty() {
            return Err(WebhookError::Unauthorized(
                "no webhook secret is configured (webhooks.github.secret or GITHUB_WEBHOOK_SECRET): every delivery is refused".into(),
            ));
        }
        let signer = signer(config, delivery.body, signature).ok_or_else(|| {
            WebhookError::Unauthorized(
                "`X-Hub-Signature-256` does not match the body under any configured secret".into(),
            )
        })?;
        let present = |value: Option<&str>, name| {
            value
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or(WebhookError::MissingHeader(name))
        };
        let event = present(delivery.event, "x-github-event")?;
        let id = present(delivery.id, "x-github-delivery")?;
        if let Some(seen) = self.store.get_delivery(&id).await? {
            return Ok(seen);
        }
        let payload: Value = serde_json::from_slice(delivery.body)
            .map_err(|e| WebhookError::MalformedJson(e.to_string()))?;
        if let Some(at) = orchion_spec::find_nul(&payload) {
            return Err(WebhookError::Nul(at));
        }
        let action = payload["action"].as_str().map(str::to_owned);
        let repository = payload["repository"]["full_name"]
            .as_str()
            .map(str::to_owned);
        if let Signer::Scoped(scope) = signer {
            let allowed = repository
                .as_deref()
                .is_some_and(|r| r == scope || r.split('/').next() == Some(scope));
            if !allowed {
                return Err(WebhookError::Unauthorized(format!(
                    "the delivery is signed with the secret for `{scope}` but is about `{}`",
                    repository.as_deref().unwrap_or("no repository")
                )));
            }
        }
        let what = match &action {
            Some(action) => format!("{event}.{action}"),
            None => event.clone(),
        };
        let digest = Sha256::digest(delivery.body).to_vec();
        let replay_of = self.replayed(&digest).await?;
        let (status, verdict, reason, runs) = if let Some(earlier) = &replay_of {
            tracing::warn!(delivery = %id, replay_of = %earlier.id, "a webhook body was replayed under a new delivery id");
            (
                202,
                "ignored",
                Some(format!(
                    "a replay: delivery `{}` had this very body; it starts nothing",
                    earlier.id
                )),
                Vec::new(),
            )
        } else if event == "ping" {
            (200, "accepted", Some("ping".to_owned()), Vec::new())
        } else if !EVENTS.contains(&event.as_str()) {
            (
                202,
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
                    202,
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
                    runs.push(
                        self.start(rule, &id, &digest, &payload, &delivery.trace_parent)
                            .await?,
                    );
                }
                (202, "accepted", None, runs)
            }
        };
        let mut response = json!({"status": verdict, "delivery": id, "event": what, "runs": runs});
        if event == "ping" {
            response["zen"] = payload["zen"].clone();
        }
        if let Some(reason) = &reason {
            response["reason"] = json!(reason);
        }
        if let Some(earlier) = &replay_of {
            response["replay_of"] = json!(earlier.id);
        }
        let recorded = self
            .store
            .record_delivery(Delivery {
                id,
                seq: Uuid::now_v7(),
                source: "github".into(),
                event,
                action,
                repository,
                verdict: verdict.into(),
                reason,
                runs: Value::Array(runs).to_string(),
                status,
                response: response.to_string(),
                received_at: orchion_store::now(),
                body_digest: Some(digest),
            })
            .await?;
        Ok(recorded.value)
    }

    /// The delivery an earlier request signed these very bytes for, if within
    /// `webhooks.github.replay_window`.
    async fn replayed(&self, digest: &[u8]) -> Result<Option<Delivery>, WebhookError> {
        let Some(earlier) = self.store.delivery_with_body(digest).await? else {
            return Ok(None);
        };
        let window =
            time::Duration::try_from(self.config.replay_window).unwrap_or(time::Duration::MAX);
        Ok((orchion_store::now() - earlier.received_at < window).then_some(earlier))
    }

    /// Starts what `rule` asks for; the answer names the run or job, or what was wrong with
    /// the request; `Err` when the store itself failed. Its idempotency key is the rule and the
    /// signed body's digest, so the same body starts the rule's run once however it arrives.
    async fn start(
        &self,
        rule: &WebhookRule,
        delivery: &str,
        digest: &[u8],
        payload: &Value,
        trace_parent: &Option<String>,
    ) -> Result<Value, StoreError> {
        let outputs = BTreeMap::new();
        let scope = Scope {
            input: &Value::Null,
            outputs: &outputs,
            item: None,
            event: Some(payload),
        };
        let key = |rendered: &Value| IdempotencyKey {
            key: format!("github:{}:{}", hex::encode(digest), rule.name),
            request_hash: Sha256::digest(rendered.to_string().as_bytes()).to_vec(),
        };
        let fail = |error: String| json!({"rule": rule.name, "error": error});
        let failed = |error: String| Ok(fail(error));
        if let Some(workflow) = &rule.workflow {
            let input = match orchion_spec::render(&rule.input, &scope) {
                Ok(input) => input,
                Err(e) => return failed(format!("input: {e}")),
            };
            let started = self
                .workflows
                .start(
                    StartRun {
                        name: Some(format!("{workflow} (github {delivery})")),
                        workflow: workflow.clone(),
                        version: None,
                        project_id: Some(self.project),
                        input: input.clone(),
                        trace_parent: trace_parent.clone(),
                    },
                    Some(key(&input)),
                )
                .await;
            return match started {
                Ok(created) => {
                    Ok(json!({"rule": rule.name, "run_id": created.value.id.to_string()}))
                }
                Err(WorkflowError::Store(e)) => failure(fail, e),
                Err(e) => failed(e.to_string()),
            };
        }
        let Some(template) = &rule.job else {
            return failed("the rule names neither a workflow nor a job".into());
        };
        // The job's spec as a step's is rendered (values in an `http` URL percent-encoded).
        let executor = template["executor"].as_str().unwrap_or_default();
        let rendered = match orchion_spec::render(template, &scope).and_then(|mut job| {
            if let Some(spec) = template.get("spec") {
                job["spec"] = orchion_spec::render_spec(executor, spec, &scope)?;
            }
            Ok(job)
        }) {
            Ok(job) => job,
            Err(e) => return failed(format!("job: {e}")),
        };
        let job = match serde_json::from_value::<CreateJob>(rendered.clone())
            .map_err(|e| e.to_string())
            .and_then(|j| j.into_new_job().map_err(|e| e.to_string()))
        {
            Ok((job, _)) if job.project_id.is_some_and(|p| p != self.project) => {
                return failed(format!(
                    "job: the rule's job names another project than webhooks.github.project ({})",
                    self.project
                ));
            }
            Ok((job, _)) => NewJob {
                trace_parent: trace_parent.clone(),
                project_id: Some(self.project),
                ..job
            },
            Err(e) => return failed(format!("job: {e}")),
        };
        match self.work.enqueue(job, Some(key(&rendered))).await {
            Ok(created) => Ok(json!({"rule": rule.name, "job_id": created.value.id.to_string()})),
            Err(e) => failure(fail, e),
        }
    }
}

/// A rule's failure: what the store said of the request (a reused key, a missing workflow
/// type), recorded with the delivery as it is; or a failure of the store itself, for which the
/// whole delivery fails unrecorded (its text only in the server's log), so a redelivery tries
/// again and starts what is missing.
fn failure(fail: impl Fn(String) -> Value, error: StoreError) -> Result<Value, StoreError> {
    match error {
        StoreError::NotFound { .. }
        | StoreError::IdempotencyConflict { .. }
        | StoreError::Conflict(_)
        | StoreError::MissingReference { .. } => Ok(fail(error.to_string())),
        other => Err(other),
    }
}

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

//! The job definition language: what `POST /api/v1/jobs` takes and a workflow step shares —
//! executor and spec, retry policy, timeouts, placement, concurrency — checked into a
//! [`NewJob`], with every problem named by its JSON pointer.

use std::{collections::BTreeMap, time::Duration};

use orchion_domain::{
    Capacity, Concurrency, FieldError, NewJob, Placement, ProjectId, RetryPolicy, Timeouts,
    ValidationErrors,
};
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::ToSchema;

/// How a failed job is tried again. Durations are like `1s`, `500ms`, `2m`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// Tries in all, the first included (default 3).
    pub max_attempts: Option<u32>,
    /// The first wait (default `1s`).
    pub initial_interval: Option<String>,
    /// The longest wait (default `60s`).
    pub max_interval: Option<String>,
    /// Each wait is this many times the one before (default 2).
    pub backoff_coefficient: Option<f64>,
    /// Up to this fraction of a wait is randomized away (default 0.2).
    pub jitter: Option<f64>,
    /// Exit codes that fail the job at once.
    pub non_retryable_exit_codes: Option<Vec<i32>>,
}

/// Time limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsBody {
    /// From enqueue to first start; the job fails past it.
    pub schedule_to_start: Option<String>,
    /// How long one attempt may run.
    pub start_to_close: Option<String>,
    /// The lease: an agent silent this long loses the attempt (default `30s`).
    pub heartbeat: Option<String>,
}

/// Resources a node must have free.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesBody {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub gpus: Option<u32>,
}

/// Where the job may run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementBody {
    /// Labels the node must carry.
    pub labels: Option<BTreeMap<String, String>>,
    pub resources: Option<ResourcesBody>,
}

/// At most `limit` jobs with this key run at once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyBody {
    pub key: String,
    /// Default 1.
    pub limit: Option<u32>,
}

/// A request to run a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    pub name: Option<String>,
    pub project_id: Option<String>,
    /// `shell` or `http`.
    #[schema(example = "shell")]
    pub executor: String,
    /// The executor's spec: for `shell` `{command, args, env, working_dir}`, for `http`
    /// `{method, url, headers, body, expected_status, timeout}`.
    #[schema(value_type = Object, example = json!({"command": "echo", "args": ["hello"]}))]
    pub spec: serde_json::Value,
    /// Higher runs first (default 0).
    pub priority: Option<i32>,
    /// Same as the `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    pub retry: Option<RetryBody>,
    pub timeouts: Option<TimeoutsBody>,
    pub placement: Option<PlacementBody>,
    pub concurrency: Option<ConcurrencyBody>,
    /// Not before this time (RFC 3339).
    pub run_at: Option<String>,
}

fn duration(
    errors: &mut ValidationErrors,
    pointer: &str,
    raw: Option<&String>,
    default: Option<Duration>,
) -> Option<Duration> {
    match raw {
        None => default,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(FieldError {
                    pointer: pointer.to_owned(),
                    message: format!(
                        "{} `{text}` is not a duration such as 30s or 5m: {e}",
                        &pointer[1..].replace('/', ".")
                    ),
                });
                default
            }
        },
    }
}

impl CreateJob {
    /// The job this request describes, with every problem found.
    pub fn into_new_job(self) -> Result<(NewJob, Option<String>), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if let Some(refused) = crate::executor::engine_refused(&self.executor, "") {
            return Err(ValidationErrors(vec![refused]));
        }
        let spec = match crate::executor::validate(&self.executor, &self.spec) {
            Ok(spec) => spec,
            Err(e) => {
                errors.0.extend(e.0);
                String::new()
            }
        };
        let project_id = self.project_id.as_deref().and_then(|raw| {
            raw.parse::<ProjectId>()
                .map_err(|e| errors.push(FieldError::new("project_id", e.to_string())))
                .ok()
        });
        let defaults = RetryPolicy::default();
        let retry_body = self.retry.unwrap_or_default();
        let retry = RetryPolicy {
            max_attempts: retry_body.max_attempts.unwrap_or(defaults.max_attempts),
            initial_interval: duration(
                &mut errors,
                "/retry/initial_interval",
                retry_body.initial_interval.as_ref(),
                Some(defaults.initial_interval),
            )
            .unwrap_or(defaults.initial_interval),
            max_interval: duration(
                &mut errors,
                "/retry/max_interval",
                retry_body.max_interval.as_ref(),
                Some(defaults.max_interval),
            )
            .unwrap_or(defaults.max_interval),
            backoff_coefficient: retry_body
                .backoff_coefficient
                .unwrap_or(defaults.backoff_coefficient),
            jitter: retry_body.jitter.unwrap_or(defaults.jitter),
            non_retryable_exit_codes: retry_body.non_retryable_exit_codes.unwrap_or_default(),
        };
        let timeouts_body = self.timeouts.unwrap_or_default();
        let timeouts = Timeouts {
            schedule_to_start: duration(
                &mut errors,
                "/timeouts/schedule_to_start",
                timeouts_body.schedule_to_start.as_ref(),
                None,
            ),
            start_to_close: duration(
                &mut errors,
                "/timeouts/start_to_close",
                timeouts_body.start_to_close.as_ref(),
                None,
            ),
            heartbeat: duration(
                &mut errors,
                "/timeouts/heartbeat",
                timeouts_body.heartbeat.as_ref(),
                Some(Timeouts::default().heartbeat),
            )
            .unwrap_or(Timeouts::default().heartbeat),
        };
        let placement_body = self.placement.unwrap_or_default();
        let resources = placement_body.resources.unwrap_or_default();
        let labels = placement_body.labels.unwrap_or_default();
        if let Err(e) = orchion_domain::Labels::new(labels.clone()) {
            errors.0.extend(e.0.into_iter().map(|mut f| {
                f.pointer = format!("/placement{}", f.pointer);
                f
            }));
        }
        let capacity = Capacity::new(
            resources.cpu_millis.unwrap_or(0),
            resources.memory_bytes.unwrap_or(0),
            resources.gpus.unwrap_or(0),
        )
        .map_err(|e| {
            errors.0.extend(e.0.into_iter().map(|mut f| {
                f.pointer = "/placement/resources".into();
                f
            }))
        })
        .unwrap_or_default();
        let concurrency = self.concurrency.and_then(|c| {
            Concurrency::new(c.key, c.limit.unwrap_or(1))
                .map_err(|e| errors.0.extend(e.0))
                .ok()
        });
        let run_at = self.run_at.as_deref().and_then(|raw| {
            OffsetDateTime::parse(raw, &Rfc3339)
                .map_err(|e| {
                    errors.push(FieldError::new(
                        "run_at",
                        format!("run_at `{raw}` is not an RFC 3339 time: {e}"),
                    ))
                })
                .ok()
        });
        let job = NewJob {
            name: self.name.unwrap_or_else(|| self.executor.clone()),
            project_id,
            executor: self.executor,
            spec,
            priority: self.priority.unwrap_or(0),
            retry,
            timeouts,
            placement: Placement {
                labels,
                resources: capacity,
            },
            concurrency,
            run_at,
            trace_parent: None,
        };
        job.check(&mut errors);
        errors.into_result((job, self.idempotency_key))
    }
}

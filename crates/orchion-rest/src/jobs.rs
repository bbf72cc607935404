//! Jobs (`/api/v1/jobs`): one job, its attempts, batches and logs.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::Problem;

/// One try of a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptBody {
    pub number: u32,
    pub node_id: Option<String>,
    /// `running`, `succeeded`, `failed`, `cancelled`, `lost` or `timed_out`.
    pub status: String,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

/// A job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobBody {
    pub id: String,
    pub name: String,
    pub project_id: Option<String>,
    pub executor: String,
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub cancel_requested: bool,
    pub priority: i32,
    /// Attempts started so far.
    pub attempt_count: u32,
    pub max_attempts: u32,
    /// Present on a single job, absent in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptBody>>,
    pub node_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub run_after: OffsetDateTime,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
    pub error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// What became of one job of a batch: `id` and `status` when accepted, `error` when refused.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// False when an earlier request with the same idempotency key created the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

/// The answer to a batch: one item per job, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchBody {
    /// True when some job was refused (see its `error`).
    pub errors: bool,
    pub jobs: Vec<BatchItem>,
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub items: Vec<JobBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One log line.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogLineBody {
    pub seq: i64,
    pub attempt: u32,
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    pub line: String,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A page of log lines.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogLineBody>,
    /// Pass as `after` to read on.
    pub next_after: i64,
}

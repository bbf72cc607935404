//! Workflow runs (`/api/v1/workflows`): starting one, its steps, metrics and logs.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::{AttemptBody, LogLineBody};

/// A request to start a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartWorkflow {
    /// The run's name (the workflow type's name when absent).
    #[schema(example = "Process Intent")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The workflow type to run.
    #[schema(example = "intent_processing")]
    #[serde(rename = "type")]
    pub workflow_type: String,
    /// The type's version; the latest when absent. The run keeps this version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// The run's input, which templates read as `${{ input.… }}`.
    #[schema(value_type = Object, example = json!({"intent": "create a REST API"}))]
    #[serde(default)]
    pub input: serde_json::Value,
}

/// One task of a step: the step's only task, or one element of a fan-out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepTaskBody {
    pub id: String,
    /// `build`, or `build[2]` for element 2 of a fan-out.
    pub name: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub executor: String,
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub attempts: Vec<AttemptBody>,
    #[schema(value_type = Option<Object>)]
    pub outputs: Option<serde_json::Value>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
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

/// A step of a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepBody {
    pub name: String,
    pub needs: Vec<String>,
    /// `pending`, `running`, `succeeded`, `failed`, `cancelled` or `skipped`.
    pub status: String,
    pub tasks: Vec<StepTaskBody>,
}

/// A workflow run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowRunBody {
    pub id: String,
    pub name: String,
    /// The workflow type.
    #[serde(rename = "type")]
    pub workflow_type: String,
    pub version: u32,
    pub project_id: Option<String>,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub cancel_requested: bool,
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// Present on a single run, absent in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepBody>>,
}

/// A page of runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowRunList {
    pub items: Vec<WorkflowRunBody>,
    pub next_cursor: Option<String>,
}

/// How one step went.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepMetrics {
    pub name: String,
    pub status: String,
    /// Attempts over all the step's tasks.
    pub attempts: u32,
    pub tasks: usize,
    /// From the first task's creation to its first start.
    pub queue_wait_ms: Option<f64>,
    /// From the step's first start to its last finish.
    pub duration_ms: Option<f64>,
}

/// How a run went, step by step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowMetrics {
    pub id: String,
    pub status: String,
    /// From the run's start to its end (or to now, while it runs).
    pub duration_ms: f64,
    pub attempts: u32,
    pub steps: Vec<StepMetrics>,
}

/// The log lines of one task of a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskLogs {
    /// `build`, or `build[2]`.
    pub step: String,
    pub lines: Vec<LogLineBody>,
}

/// A run's log lines, task by task in the order the tasks were created.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunLogs {
    pub tasks: Vec<TaskLogs>,
}

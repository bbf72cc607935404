//! Workflow types (`/api/v1/workflow-types`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// A stored workflow type.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowTypeBody {
    pub name: String,
    pub version: u32,
    pub project_id: Option<String>,
    /// The steps in waves: each wave needs only earlier waves, so its steps run in parallel.
    pub waves: Vec<Vec<String>>,
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

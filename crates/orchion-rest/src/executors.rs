//! Executors (`/api/v1/executors`) and their health.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// One executor.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutorBody {
    pub name: String,
    /// Live agents that offer it.
    pub agents: usize,
    /// `healthy`: it can run tasks now. `unavailable`: no live agent offers it, so its tasks
    /// wait. `unhealthy`: what it needs outside Orchion (a Kubernetes cluster) does not answer.
    /// `disabled`: turned off in the configuration.
    pub health: String,
    /// Why, when the server probes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the server last probed it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub checked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutorList {
    pub items: Vec<ExecutorBody>,
}

//! Deployments (`/api/v1/deployments`) and the engines that carry them out.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// One resource of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResourceStatus {
    pub name: String,
    pub engine: String,
    #[serde(rename = "catalogRef")]
    pub catalog_ref: String,
    /// `pending`, `in_progress`, `ready`, `failed`, `skipped`, `cancelled`, `rolling_back`,
    /// `rolled_back` or `rollback_failed`.
    pub status: String,
    /// `0%` before it starts, `50%` while its engine works, `100%` once it is done.
    pub progress: String,
    /// What the engine reported once it was applied (endpoints, ids, …).
    #[schema(value_type = Option<Object>)]
    pub outputs: Option<serde_json::Value>,
    /// Why it failed, or why its rollback failed.
    pub error: Option<String>,
    /// Tries of its apply (and rollback) so far.
    pub attempts: u32,
}

/// A deployment and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentBody {
    pub id: String,
    pub composer: String,
    pub environment: String,
    /// `queued` (another deployment for the same composer and environment runs first),
    /// `in_progress`, `ready`, `failed`, `rolling_back`, `rolled_back`, `rollback_failed` or
    /// `cancelled`.
    pub status: String,
    /// `waiting`, `deploying`, `rolling_back` or `complete`.
    pub phase: String,
    /// Which resource failed, and why.
    pub error: Option<String>,
    /// The workflow run that carries it out (`GET /api/v1/workflows/{run_id}`).
    pub run_id: String,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// Present on a single deployment, absent in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<ResourceStatus>>,
}

/// A page of deployments.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentList {
    pub items: Vec<DeploymentBody>,
    pub next_cursor: Option<String>,
}

/// A deployment engine and whether it can work.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EngineBody {
    pub name: String,
    /// Enabled in this server's configuration (`engines.<name>.enabled`).
    pub enabled: bool,
    /// Live agents that offer it (its tool is installed there).
    pub agents: usize,
    /// `healthy` (enabled, and at least one live agent offers it), `unavailable` (enabled, no
    /// agent offers it: its resources wait), or `disabled`.
    pub health: String,
}

/// The engines and their health.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EngineList {
    pub items: Vec<EngineBody>,
}

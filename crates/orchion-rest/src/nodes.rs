//! Nodes (`/api/v1/nodes`) and agents (`/api/v1/agents`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// What a node can run at once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CapacityBody {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
}

/// A node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeBody {
    pub id: String,
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: CapacityBody,
    pub executors: Vec<String>,
    pub version: String,
    /// `ready`, `draining`, `unreachable` or `down`.
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub registered_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_heartbeat_at: OffsetDateTime,
}

/// A page of nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub items: Vec<NodeBody>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// An agent, as the workflow service's agents API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentBody {
    /// The node id the agent runs as.
    pub id: String,
    pub name: String,
    pub address: String,
    /// `ready`, `draining`, `unreachable` or `down`.
    pub status: String,
    pub version: String,
    pub executors: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_heartbeat_at: OffsetDateTime,
    /// A restart was requested and the agent has not yet picked it up.
    pub restart_pending: bool,
}

/// A page of agents.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub items: Vec<AgentBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

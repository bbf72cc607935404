//! The server's status (`/api/v1/status`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The server's own state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusBody {
    /// The server's version.
    pub version: String,
    pub store: StoreStatus,
    /// How many nodes have each status.
    pub nodes: BTreeMap<String, usize>,
    /// Work in flight: tasks of jobs and workflow steps.
    pub tasks: TaskCounts,
    /// Server replicas sharing the store that were up within the last three check intervals,
    /// this one included.
    pub replicas: u64,
}

/// Tasks in flight. Finished work is not counted here (it grows without bound); list it with
/// `GET /api/v1/jobs?status=…`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskCounts {
    pub queued: u64,
    pub running: u64,
}

/// The store's state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoreStatus {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Write transactions committed since the server started.
    pub commits: u64,
}

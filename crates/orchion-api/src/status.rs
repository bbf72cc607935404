//! `GET /api/v1/status`: what this server is and how its cluster stands, for operators and
//! benchmarks.

use std::collections::BTreeMap;

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{AppState, problem::ApiError};

/// The server's own state.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    /// The server's version.
    pub version: &'static str,
    pub store: StoreStatus,
    /// How many nodes have each status.
    pub nodes: BTreeMap<&'static str, usize>,
    /// Work in flight: tasks of jobs and workflow steps.
    pub tasks: TaskCounts,
}

/// Tasks in flight. Finished work is not counted here (it grows without bound); list it with
/// `GET /api/v1/jobs?status=…`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskCounts {
    pub queued: u64,
    pub running: u64,
}

/// The store's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreStatus {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Write transactions committed since the server started.
    pub commits: u64,
}

/// The server's version, store, node counts and work in flight.
#[utoipa::path(get, path = "/api/v1/status", tag = "health", responses((status = 200, body = StatusBody)))]
pub async fn status(State(state): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    let counts = state.store.active_task_counts().await?;
    Ok(Json(StatusBody {
        version: env!("CARGO_PKG_VERSION"),
        store: StoreStatus {
            backend: match state.store.backend() {
                orchion_store::Backend::Sqlite => "sqlite",
                orchion_store::Backend::Postgres => "postgres",
            },
            commits: state.store.commits(),
        },
        nodes: state.nodes.count_by_status(),
        tasks: TaskCounts {
            queued: counts.queued,
            running: counts.running,
        },
    }))
}

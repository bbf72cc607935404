//! `GET /api/v1/status`: what this server is and how its cluster stands, for operators and
//! benchmarks.

use axum::{Json, extract::State};
use orchion_rest::{StatusBody, StoreStatus, TaskCounts};

use crate::{AppState, problem::ApiError};

/// The server's version, store, node counts and work in flight.
#[utoipa::path(get, path = "/api/v1/status", tag = "health", responses((status = 200, body = StatusBody)))]
pub async fn status(State(state): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    let counts = state.store.active_task_counts().await?;
    let replicas = state
        .store
        .live_replicas(
            orchion_store::now(),
            state.nodes.settings().check_interval * orchion_control::replicas::MISSED_PERIODS,
        )
        .await?;
    Ok(Json(StatusBody {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        store: StoreStatus {
            backend: match state.store.backend() {
                orchion_store::Backend::Sqlite => "sqlite",
                orchion_store::Backend::Postgres => "postgres",
            }
            .to_owned(),
            commits: state.store.commits(),
        },
        nodes: state
            .nodes
            .count_by_status()
            .into_iter()
            .map(|(status, count)| (status.to_owned(), count))
            .collect(),
        tasks: TaskCounts {
            queued: counts.queued,
            running: counts.running,
        },
        replicas,
    }))
}

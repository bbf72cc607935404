//! `GET /api/v1/executors`: every executor, the live agents that offer it, and its health. Most
//! executors are healthy when an agent offers them; the `kubernetes` executor also needs its
//! cluster, which the server probes ([`Probes`]), so a server without Kubernetes access reports
//! it unhealthy, and why, while serving everything else.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use axum::{Json, extract::State};
use orchion_rest::{ExecutorBody, ExecutorList};
use time::OffsetDateTime;

use crate::AppState;

/// What a probe of an executor's outside dependency found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Turned off in the configuration.
    Disabled,
    Healthy {
        detail: String,
    },
    Unhealthy {
        detail: String,
    },
}

/// The latest probe of each executor that depends on something outside Orchion, written by the
/// task that probes it and read by the API.
#[derive(Debug, Clone, Default)]
pub struct Probes(Arc<RwLock<BTreeMap<&'static str, (Probe, OffsetDateTime)>>>);

impl Probes {
    pub fn set(&self, executor: &'static str, probe: Probe) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(executor, (probe, OffsetDateTime::now_utc()));
    }

    pub fn get(&self, executor: &str) -> Option<(Probe, OffsetDateTime)> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(executor)
            .cloned()
    }
}

/// Every executor Orchion has, and whether it can run tasks now.
#[utoipa::path(get, path = "/api/v1/executors", tag = "nodes",
    responses((status = 200, body = ExecutorList)))]
pub async fn list_executors(State(state): State<AppState>) -> Json<ExecutorList> {
    let offering = state.nodes.executors_offered();
    let items = orchion_spec::KNOWN
        .iter()
        .map(|name| {
            let agents = offering.get(*name).copied().unwrap_or(0);
            let offered = if agents > 0 { "healthy" } else { "unavailable" };
            let engine_disabled = state.engines.get(*name).is_some_and(|enabled| !enabled);
            let (health, detail, checked_at) = match state.probes.get(name) {
                _ if engine_disabled => ("disabled", None, None),
                Some((Probe::Disabled, at)) => ("disabled", None, Some(at)),
                Some((Probe::Unhealthy { detail }, at)) => ("unhealthy", Some(detail), Some(at)),
                Some((Probe::Healthy { detail }, at)) => (offered, Some(detail), Some(at)),
                None => (offered, None, None),
            };
            ExecutorBody {
                name: (*name).to_owned(),
                agents,
                health: health.to_owned(),
                detail,
                checked_at,
            }
        })
        .collect();
    Json(ExecutorList { items })
}

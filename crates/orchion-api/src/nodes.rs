//! Nodes over REST: `/api/v1/nodes` (list, get, drain, delete), the control-plane seed's
//! `GET /api/nodes`, and the workflow service's agents API (`/api/v1/agents`).
//!
//! Everything here reads the registry's memory, so liveness and last heartbeats are current to
//! the moment, not to the last batch written to the store.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use orchion_domain::{Capacity, Node, NodeFilter, NodeId, NodeStatus, Page, PageRequest};
use orchion_rest::{AgentBody, AgentList, CapacityBody, NodeBody, NodeList};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::respond::paged;
use crate::{
    AppState,
    extract::{PathId, QueryParams, invalid_query, page_request, query_value},
    problem::{ApiError, Problem},
};

/// A capacity as the API shows it.
pub(crate) fn capacity_body(c: Capacity) -> CapacityBody {
    CapacityBody {
        cpu_millis: c.cpu_millis,
        memory_bytes: c.memory_bytes,
        gpus: c.gpus,
    }
}

/// A node as the API shows it.
pub(crate) fn node_body(node: Node) -> NodeBody {
    NodeBody {
        id: node.id.to_string(),
        status: node.status().as_str().to_owned(),
        name: node.name,
        address: node.address,
        labels: node.labels.as_map().clone(),
        capacity: capacity_body(node.capacity),
        executors: node.executors,
        version: node.version,
        registered_at: node.registered_at,
        last_heartbeat_at: node.last_heartbeat_at,
    }
}

/// Filters and paging for listing nodes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListNodes {
    /// Only nodes with this status.
    pub status: Option<String>,
    /// Only nodes with all these labels: `key=value[,key=value…]`.
    pub label: Option<String>,
    /// At most this many (1 to 500, default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Parses `key=value[,key=value…]`.
fn label_selector(raw: &str) -> Result<BTreeMap<String, String>, ApiError> {
    raw.split(',')
        .map(|pair| {
            pair.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| invalid_query("label", format!("`{pair}` is not `key=value`")))
        })
        .collect()
}

/// The page of nodes a listing query asks for.
fn query_nodes(state: &AppState, query: ListNodes) -> Result<Page<Node>, ApiError> {
    let status = query_value::<NodeStatus>("status", query.status)?;
    let labels = query
        .label
        .as_deref()
        .map(label_selector)
        .transpose()?
        .unwrap_or_default();
    let page = page_request(query.limit, query.cursor)?;
    Ok(state.nodes.list(&NodeFilter { status, labels }, page))
}

/// Lists nodes, in id order, a page at a time.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", params(ListNodes),
    responses((status = 200, body = NodeList), (status = 400, body = Problem)))]
pub async fn list_nodes(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<ListNodes>,
) -> Result<Json<NodeList>, ApiError> {
    let page = query_nodes(&state, query)?;
    let (items, next_cursor) = paged(page, node_body);
    Ok(Json(NodeList { items, next_cursor }))
}

/// Every node, as the control-plane seed's `GET /api/nodes` answered: a JSON array.
#[utoipa::path(get, path = "/api/nodes", tag = "nodes",
    responses((status = 200, body = Vec<NodeBody>)))]
pub async fn list_all_nodes(State(state): State<AppState>) -> Json<Vec<NodeBody>> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = state.nodes.list(
            &NodeFilter::default(),
            PageRequest {
                limit: PageRequest::MAX_LIMIT,
                after,
            },
        );
        all.extend(page.items.into_iter().map(node_body));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Json(all)
}

/// Gets a node.
#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes",
    params(("id" = String, Path, description = "The node's id")),
    responses((status = 200, body = NodeBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get_node(
    State(state): State<AppState>,
    PathId(id): PathId<NodeId>,
) -> Result<Json<NodeBody>, ApiError> {
    let node = state
        .nodes
        .get(id)
        .ok_or(orchion_control::RegistryError::NotFound(id))?;
    Ok(Json(node_body(node)))
}

/// Drains a node: no new work is placed on it; running work may end.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/drain", tag = "nodes",
    params(("id" = String, Path, description = "The node's id")),
    responses((status = 200, body = NodeBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn drain_node(
    State(state): State<AppState>,
    PathId(id): PathId<NodeId>,
) -> Result<Json<NodeBody>, ApiError> {
    Ok(Json(node_body(state.nodes.drain(id).await?)))
}

/// Removes a node's record. An agent still running on it registers again.
#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes",
    params(("id" = String, Path, description = "The node's id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_node(
    State(state): State<AppState>,
    PathId(id): PathId<NodeId>,
) -> Result<StatusCode, ApiError> {
    state.nodes.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn agent_body(node: Node, restart_pending: bool) -> AgentBody {
    AgentBody {
        id: node.id.to_string(),
        status: node.status().as_str().to_owned(),
        name: node.name,
        address: node.address,
        version: node.version,
        executors: node.executors,
        last_heartbeat_at: node.last_heartbeat_at,
        restart_pending,
    }
}

/// Lists agents (one per node).
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", params(ListNodes),
    responses((status = 200, body = AgentList), (status = 400, body = Problem)))]
pub async fn list_agents(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<ListNodes>,
) -> Result<Json<AgentList>, ApiError> {
    let page = query_nodes(&state, query)?;
    Ok(Json(AgentList {
        items: page
            .items
            .into_iter()
            .map(|node| {
                let pending = state.nodes.restart_pending(node.id);
                agent_body(node, pending)
            })
            .collect(),
        next_cursor: page.next.map(|c| c.to_string()),
    }))
}

/// Gets an agent.
#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "The agent's node id")),
    responses((status = 200, body = AgentBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get_agent(
    State(state): State<AppState>,
    PathId(id): PathId<NodeId>,
) -> Result<Json<AgentBody>, ApiError> {
    let node = state
        .nodes
        .get(id)
        .ok_or(orchion_control::RegistryError::NotFound(id))?;
    Ok(Json(agent_body(node, state.nodes.restart_pending(id))))
}

/// Asks an agent to restart: with its next heartbeat it registers again and restarts its work
/// loop.
#[utoipa::path(post, path = "/api/v1/agents/{id}/restart", tag = "agents",
    params(("id" = String, Path, description = "The agent's node id")),
    responses((status = 202, body = AgentBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn restart_agent(
    State(state): State<AppState>,
    PathId(id): PathId<NodeId>,
) -> Result<(StatusCode, Json<AgentBody>), ApiError> {
    let node = state.nodes.request_restart(id).await?;
    Ok((StatusCode::ACCEPTED, Json(agent_body(node, true))))
}

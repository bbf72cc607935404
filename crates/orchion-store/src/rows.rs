//! Rows as both backends return them, and their conversion into domain values. Decoding is
//! shared: sqlx decodes these column types the same way from SQLite and PostgreSQL.

use std::collections::BTreeMap;

use orchion_domain::{
    Capacity, Labels, Node, NodeId, NodeStatus, Page, PageRequest, Project, ProjectId,
    ProjectStatus,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Event, StoreError, StoredNode};

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ProjectRow {
    id: Uuid,
    name: String,
    description: String,
    #[sqlx(rename = "type")]
    kind: String,
    status: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<ProjectRow> for Project {
    type Error = StoreError;

    fn try_from(row: ProjectRow) -> Result<Self, Self::Error> {
        Ok(Project {
            id: ProjectId::from_uuid(row.id),
            status: row
                .status
                .parse::<ProjectStatus>()
                .map_err(StoreError::Corrupt)?,
            name: row.name,
            description: row.description,
            kind: row.kind,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    seq: i64,
    at: OffsetDateTime,
    kind: String,
    subject: String,
    project_id: Option<Uuid>,
    data: sqlx::types::Json<serde_json::Value>,
}

impl From<EventRow> for Event {
    fn from(row: EventRow) -> Self {
        Event {
            seq: row.seq,
            at: row.at,
            kind: row.kind,
            subject: row.subject,
            project_id: row.project_id.map(ProjectId::from_uuid),
            data: row.data.0,
        }
    }
}

/// Turns `limit + 1` rows fetched for a page into the page and its continuation cursor.
pub(crate) fn page_of<R, T>(
    rows: Vec<R>,
    page: PageRequest,
    id: impl Fn(&T) -> Uuid,
) -> Result<Page<T>, StoreError>
where
    T: TryFrom<R>,
    StoreError: From<T::Error>,
{
    let limit = page.limit as usize;
    let more = rows.len() > limit;
    let items = rows
        .into_iter()
        .take(limit)
        .map(|row| T::try_from(row).map_err(StoreError::from))
        .collect::<Result<Vec<T>, _>>()?;
    let next = if more {
        items.last().map(|last| orchion_domain::Cursor(id(last)))
    } else {
        None
    };
    Ok(Page { items, next })
}

/// The data an event about a project carries: the project as it now is.
pub(crate) fn project_event_data(project: &Project) -> serde_json::Value {
    serde_json::json!({
        "name": project.name,
        "type": project.kind,
        "status": project.status.as_str(),
    })
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct NodeRow {
    id: Uuid,
    name: String,
    address: String,
    labels: sqlx::types::Json<BTreeMap<String, String>>,
    cpu_millis: i64,
    memory_bytes: i64,
    gpus: i32,
    executors: sqlx::types::Json<Vec<String>>,
    version: String,
    status: String,
    draining: bool,
    credential_hash: Option<Vec<u8>>,
    registered_at: OffsetDateTime,
    last_heartbeat_at: OffsetDateTime,
}

impl TryFrom<NodeRow> for StoredNode {
    type Error = StoreError;

    fn try_from(row: NodeRow) -> Result<Self, Self::Error> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("node {}: {what}", row.id));
        let status: NodeStatus = row.status.parse().map_err(StoreError::Corrupt)?;
        let labels = Labels::new(row.labels.0.clone()).map_err(|e| corrupt(&e.to_string()))?;
        let capacity = Capacity::new(
            u64::try_from(row.cpu_millis).map_err(|_| corrupt("negative cpu"))?,
            u64::try_from(row.memory_bytes).map_err(|_| corrupt("negative memory"))?,
            u32::try_from(row.gpus).map_err(|_| corrupt("negative gpus"))?,
        )
        .map_err(|e| corrupt(&e.to_string()))?;
        Ok(StoredNode {
            node: Node {
                id: NodeId::from_uuid(row.id),
                name: row.name,
                address: row.address,
                labels,
                capacity,
                executors: row.executors.0,
                version: row.version,
                liveness: status.liveness(),
                draining: row.draining,
                registered_at: row.registered_at,
                last_heartbeat_at: row.last_heartbeat_at,
            },
            credential_hash: row.credential_hash.unwrap_or_default(),
        })
    }
}

/// The data a `node.status_changed` event carries.
pub(crate) fn node_status_event_data(
    id: NodeId,
    from: NodeStatus,
    to: NodeStatus,
) -> serde_json::Value {
    serde_json::json!({ "node_id": id.to_string(), "from": from.as_str(), "to": to.as_str() })
}

/// The data a `node.registered` event carries.
pub(crate) fn node_registered_event_data(node: &Node) -> serde_json::Value {
    serde_json::json!({
        "node_id": node.id.to_string(),
        "name": node.name,
        "address": node.address,
        "status": node.status().as_str(),
    })
}

/// The cursor comparison and the order of a listing by id: oldest first, or newest first.
pub(crate) fn direction(newest_first: bool) -> (&'static str, &'static str) {
    if newest_first {
        ("<", "DESC")
    } else {
        (">", "ASC")
    }
}

/// A `LIKE` pattern (with `\` as the escape) for names containing `text`, ignoring case.
pub(crate) fn contains_pattern(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

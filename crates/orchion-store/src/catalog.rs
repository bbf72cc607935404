//! Projects, nodes and the event log: the [`CatalogStore`] half of the store, written once for
//! every backend.

use std::collections::BTreeMap;

use async_trait::async_trait;
use orchion_domain::{
    Capacity, JoinTokenId, Labels, Liveness, LivenessEvent, LivenessPolicy, Node, NodeId,
    NodeStatus, Page, PageRequest, Project, ProjectFilter, ProjectId, ProjectStatus, ProjectUpdate,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Created, IdempotencyKey, StoreError,
    backend::{Statement, StoreBackend, Tx},
    codec::{from_micros, micros, page_limit, page_of},
    events::{PendingEvent, kind},
    idempotency::{PROJECT_CREATE_SCOPE, find_idempotent, insert_key, retry_lost_race},
};

/// One entry of the append-only event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position in the log; strictly increasing in commit order, never reused.
    pub seq: i64,
    pub at: OffsetDateTime,
    /// What happened, such as `project.created`.
    pub kind: String,
    /// The id of the resource it happened to.
    pub subject: String,
    /// The project it belongs to, if any.
    pub project_id: Option<ProjectId>,
    /// Details of the change.
    pub data: serde_json::Value,
}

/// A node as stored, with the hash of its credential.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNode {
    pub node: Node,
    pub credential_hash: Vec<u8>,
    /// The join token that admitted it (`None`: the cluster's configured one).
    pub join_token: Option<JoinTokenId>,
    /// An operator asked the node's agent to restart, and no heartbeat has carried it yet.
    pub restart_requested: bool,
}

/// A change of a node's liveness or drain flag.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStateChange {
    pub id: NodeId,
    /// The status before the change, for the event.
    pub from: NodeStatus,
    pub liveness: Liveness,
    pub draining: bool,
    pub last_heartbeat_at: OffsetDateTime,
}

/// Projects, nodes and the event log. A supertrait of [`crate::Store`].
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Stores a new project, or returns the one an earlier call with the same key created.
    async fn create_project(
        &self,
        project: Project,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<Project>, StoreError>;

    /// The project with this id.
    async fn get_project(&self, id: ProjectId) -> Result<Project, StoreError>;

    /// Projects matching the filter, in id (creation) order.
    async fn list_projects(
        &self,
        filter: ProjectFilter,
        page: PageRequest,
    ) -> Result<Page<Project>, StoreError>;

    /// Applies an update and returns the project as it now is.
    async fn update_project(
        &self,
        id: ProjectId,
        update: ProjectUpdate,
    ) -> Result<Project, StoreError>;

    /// Removes a project.
    async fn delete_project(&self, id: ProjectId) -> Result<(), StoreError>;

    /// Records a new node, admitted by `join_token` (`None`: the cluster's configured join
    /// token), whose last use is recorded with it. [`StoreError::Conflict`] when a node has
    /// this id. Returns the node as stored.
    async fn register_node(
        &self,
        node: &Node,
        credential_hash: &[u8],
        join_token: Option<JoinTokenId>,
    ) -> Result<Node, StoreError>;

    /// Records a node registering again under its id, when `credential_hash` is still its
    /// credential's: `registered_at`, the drain flag, the credential and the join token are
    /// kept, and the node is alive afterwards. `None` (and nothing written) when no node has
    /// this id and credential.
    async fn rejoin_node(
        &self,
        node: &Node,
        credential_hash: &[u8],
    ) -> Result<Option<Node>, StoreError>;

    /// Every node with its credential hash, in id order.
    async fn load_nodes(&self) -> Result<Vec<StoredNode>, StoreError>;

    /// One node with its credential hash.
    async fn load_node(&self, id: NodeId) -> Result<Option<StoredNode>, StoreError>;

    /// Applies liveness and drain changes in one transaction, with a `node.status_changed`
    /// event for each change of status. Each change is a compare-and-set: it applies only
    /// while the node's status is still its `from`; the changes that applied are returned.
    /// A change that brings a node back to life also records it as heard at
    /// `last_heartbeat_at`.
    async fn update_node_states(
        &self,
        changes: &[NodeStateChange],
    ) -> Result<Vec<NodeStateChange>, StoreError>;

    /// Records when nodes were last heard from, in one statement; a time older than the one
    /// stored (another replica heard the node later) is ignored. No events: this is the
    /// periodic write, one per check interval, that keeps heartbeats cheap.
    async fn record_heartbeats(&self, beats: &[(NodeId, OffsetDateTime)])
    -> Result<(), StoreError>;

    /// Judges every node's silence at `now` by the store's record of when it was last heard:
    /// alive nodes silent past the policy's timeout become unreachable, unreachable ones silent
    /// long enough become down. One transaction of compare-and-set changes, with their events:
    /// harmless when every replica runs it. Returns the changes made.
    async fn judge_silence(
        &self,
        now: OffsetDateTime,
        policy: LivenessPolicy,
    ) -> Result<Vec<NodeStateChange>, StoreError>;

    /// Asks a node's agent to restart at its next heartbeat; `false` when there is no such node.
    async fn request_restart(&self, id: NodeId) -> Result<bool, StoreError>;

    /// Takes a pending restart request: `true` once per request, for the heartbeat that
    /// carries it.
    async fn take_restart(&self, id: NodeId) -> Result<bool, StoreError>;

    /// Removes a node.
    async fn delete_node(&self, id: NodeId) -> Result<(), StoreError>;

    /// Events with a sequence number above `after`, oldest first, at most `limit`.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>, StoreError>;

    /// The newest event's sequence number, deleted or not; 0 for a log that never had one.
    async fn last_event_seq(&self) -> Result<i64, StoreError>;
}

/// Nodes per statement of [`CatalogStore::record_heartbeats`] (3 parameters each).
const HEARTBEAT_CHUNK: usize = 1000;

const PROJECT_COLUMNS: &str = "id, name, description, type, status, created_at, updated_at";

const NODE_COLUMNS: &str = "id, name, address, labels, cpu_millis, memory_bytes, gpus, executors, version, status, draining, credential_hash, registered_at, last_heartbeat_at, restart_requested, join_token_id";

/// Records a new node, alive and ready.
const INSERT_NODE: &str = "INSERT INTO nodes (id, name, address, labels, cpu_millis, memory_bytes, gpus, executors, version, status, draining, credential_hash, registered_at, last_heartbeat_at, heard_us, join_token_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'ready', false, $10, $11, $11, $12, $13)";

/// Updates a node registering again under its id and credential: `registered_at`, the drain
/// flag, the credential and the join token are kept; the status follows from being alive and
/// (maybe) drained.
const REJOIN_NODE: &str = "UPDATE nodes SET name = $2, address = $3, labels = $4, cpu_millis = $5, \
     memory_bytes = $6, gpus = $7, executors = $8, version = $9, last_heartbeat_at = $11, heard_us = $12, \
     status = CASE WHEN draining THEN 'draining' ELSE 'ready' END \
     WHERE id = $1 AND credential_hash = $10";

/// A node's registration bound to `sql` ([`INSERT_NODE`] or [`REJOIN_NODE`]) as `$1`–`$12`.
fn bind_node<'a>(sql: &'static str, node: &'a Node, credential_hash: &'a [u8]) -> Statement<'a> {
    // Capacity is validated to fit (64 TiB, 4096 cores, 256 GPUs), so these casts are exact.
    Statement::new(sql)
        .bind(node.id.as_uuid())
        .bind(node.name.as_str())
        .bind(node.address.as_str())
        .bind(serde_json::json!(node.labels.as_map()))
        .bind(node.capacity.cpu_millis as i64)
        .bind(node.capacity.memory_bytes as i64)
        .bind(node.capacity.gpus as i32)
        .bind(serde_json::json!(node.executors))
        .bind(node.version.as_str())
        .bind(credential_hash)
        .bind(node.last_heartbeat_at)
        .bind(micros(node.last_heartbeat_at))
}

/// The node just written, with its `node.registered` event appended.
async fn registered<T: Tx>(tx: &mut T, id: NodeId) -> Result<Node, StoreError> {
    let stored: StoredNode = tx
        .fetch_one::<NodeRow>(
            Statement::new(format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"))
                .bind(id.as_uuid()),
        )
        .await?
        .try_into()?;
    tx.append_event(PendingEvent::node_registered(&stored.node))
        .await?;
    Ok(stored.node)
}

fn project_not_found(id: ProjectId) -> StoreError {
    StoreError::NotFound {
        kind: "project",
        id: id.to_string(),
    }
}

fn select_project(lock: &str) -> String {
    format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1{lock}")
}

#[async_trait]
impl<B: StoreBackend> CatalogStore for B {
    async fn create_project(
        &self,
        project: Project,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<Project>, StoreError> {
        let (project, idempotency) = (&project, idempotency.as_ref());
        let existing = retry_lost_race(idempotency.is_some(), || async move {
            let mut tx = self.begin().await?;
            if let Some(key) = idempotency {
                if let Some(existing) = find_idempotent(&mut tx, PROJECT_CREATE_SCOPE, key).await? {
                    return Ok(Some(existing));
                }
            }
            tx.execute(
                Statement::new(
                    "INSERT INTO projects (id, name, description, type, status, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(project.id.as_uuid())
                .bind(project.name.as_str())
                .bind(project.description.as_str())
                .bind(project.kind.as_str())
                .bind(project.status.as_str())
                .bind(project.created_at)
                .bind(project.updated_at),
            )
            .await?;
            if let Some(key) = idempotency {
                let id = project.id.as_uuid();
                tx.execute(insert_key(PROJECT_CREATE_SCOPE, key, id, project.created_at))
                    .await?;
            }
            tx.append_event(PendingEvent::project(kind::PROJECT_CREATED, project))
                .await?;
            tx.commit().await?;
            Ok(None)
        })
        .await?;
        Ok(match existing {
            None => Created {
                value: project.clone(),
                created: true,
            },
            Some(existing) => Created {
                value: self.get_project(ProjectId::from_uuid(existing)).await?,
                created: false,
            },
        })
    }

    async fn get_project(&self, id: ProjectId) -> Result<Project, StoreError> {
        self.read_optional::<ProjectRow>(Statement::new(select_project("")).bind(id.as_uuid()))
            .await?
            .ok_or_else(|| project_not_found(id))?
            .try_into()
    }

    async fn list_projects(
        &self,
        filter: ProjectFilter,
        page: PageRequest,
    ) -> Result<Page<Project>, StoreError> {
        let rows: Vec<ProjectRow> = self
            .read_all(
                Statement::new(format!(
                    "SELECT {PROJECT_COLUMNS} FROM projects WHERE ($1 IS NULL OR status = $1) \
                     AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
                ))
                .bind(filter.status.map(|s| s.as_str()))
                .bind(page.after.map(|c| c.0))
                .bind(page_limit(page)),
            )
            .await?;
        page_of(rows, page, |p: &Project| p.id.as_uuid())
    }

    async fn update_project(
        &self,
        id: ProjectId,
        update: ProjectUpdate,
    ) -> Result<Project, StoreError> {
        let mut tx = self.begin().await?;
        let current: Project = tx
            .fetch_optional::<ProjectRow>(
                Statement::new(select_project(B::Tx::ROW_LOCK)).bind(id.as_uuid()),
            )
            .await?
            .ok_or_else(|| project_not_found(id))?
            .try_into()?;
        let project = current.updated(update, crate::now());
        tx.execute(
            Statement::new(
                "UPDATE projects SET name = $2, description = $3, type = $4, status = $5, updated_at = $6 \
                 WHERE id = $1",
            )
            .bind(project.id.as_uuid())
            .bind(project.name.as_str())
            .bind(project.description.as_str())
            .bind(project.kind.as_str())
            .bind(project.status.as_str())
            .bind(project.updated_at),
        )
        .await?;
        tx.append_event(PendingEvent::project(kind::PROJECT_UPDATED, &project))
            .await?;
        tx.commit().await?;
        Ok(project)
    }

    async fn delete_project(&self, id: ProjectId) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let deleted = tx
            .execute(Statement::new("DELETE FROM projects WHERE id = $1").bind(id.as_uuid()))
            .await?;
        if deleted == 0 {
            return Err(project_not_found(id));
        }
        tx.append_event(PendingEvent::project_deleted(id)).await?;
        tx.commit().await
    }

    async fn register_node(
        &self,
        node: &Node,
        credential_hash: &[u8],
        join_token: Option<JoinTokenId>,
    ) -> Result<Node, StoreError> {
        let mut tx = self.begin().await?;
        tx.execute(
            bind_node(INSERT_NODE, node, credential_hash).bind(join_token.map(|t| t.as_uuid())),
        )
        .await
        .map_err(|e| {
            if crate::error::is_unique_violation(&e) {
                StoreError::Conflict(format!("node `{}` is registered already", node.id))
            } else {
                e
            }
        })?;
        if let Some(token) = join_token {
            tx.execute(
                Statement::new("UPDATE join_tokens SET last_used_us = $2 WHERE id = $1")
                    .bind(token.as_uuid())
                    .bind(micros(node.registered_at)),
            )
            .await?;
        }
        let node = registered(&mut tx, node.id).await?;
        tx.commit().await?;
        Ok(node)
    }

    async fn rejoin_node(
        &self,
        node: &Node,
        credential_hash: &[u8],
    ) -> Result<Option<Node>, StoreError> {
        let mut tx = self.begin().await?;
        if tx
            .execute(bind_node(REJOIN_NODE, node, credential_hash))
            .await?
            == 0
        {
            tx.rollback().await?;
            return Ok(None);
        }
        let node = registered(&mut tx, node.id).await?;
        tx.commit().await?;
        Ok(Some(node))
    }

    async fn load_nodes(&self) -> Result<Vec<StoredNode>, StoreError> {
        self.read_all::<NodeRow>(Statement::new(format!(
            "SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"
        )))
        .await?
        .into_iter()
        .map(StoredNode::try_from)
        .collect()
    }

    async fn load_node(&self, id: NodeId) -> Result<Option<StoredNode>, StoreError> {
        let rows: Vec<NodeRow> = self
            .read_all(
                Statement::new(format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"))
                    .bind(id.as_uuid()),
            )
            .await?;
        rows.into_iter()
            .next()
            .map(StoredNode::try_from)
            .transpose()
    }

    async fn update_node_states(
        &self,
        changes: &[NodeStateChange],
    ) -> Result<Vec<NodeStateChange>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let mut applied = Vec::new();
        let mut events = Vec::new();
        for change in changes {
            let to = NodeStatus::of(change.liveness, change.draining);
            // Coming back to life is hearing the node: the lease starts again now.
            let heard =
                (change.liveness == Liveness::Alive).then(|| micros(change.last_heartbeat_at));
            let updated = tx
                .execute(
                    Statement::new(
                        "UPDATE nodes SET status = $2, draining = $3, last_heartbeat_at = $4, \
                         heard_us = COALESCE($5, heard_us) WHERE id = $1 AND status = $6",
                    )
                    .bind(change.id.as_uuid())
                    .bind(to.as_str())
                    .bind(change.draining)
                    .bind(change.last_heartbeat_at)
                    .bind(heard)
                    .bind(change.from.as_str()),
                )
                .await?;
            if updated == 0 {
                continue;
            }
            if to != change.from {
                events.push(PendingEvent::node_status(change.id, change.from, to));
            }
            applied.push(change.clone());
        }
        tx.append_events(&events).await?;
        tx.commit().await?;
        Ok(applied)
    }

    async fn record_heartbeats(
        &self,
        beats: &[(NodeId, OffsetDateTime)],
    ) -> Result<(), StoreError> {
        if beats.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for chunk in beats.chunks(HEARTBEAT_CHUNK) {
            // `column1…` name the columns of a VALUES list on both backends.
            let mut update = Statement::new(
                "UPDATE nodes SET heard_us = v.column2, last_heartbeat_at = v.column3 FROM (",
            );
            update.push_values(chunk.iter().map(|(id, at)| {
                [
                    crate::backend::Value::from(id.as_uuid()),
                    micros(*at).into(),
                    (*at).into(),
                ]
            }));
            update.push(") AS v WHERE nodes.id = v.column1 AND nodes.heard_us < v.column2");
            tx.execute(update).await?;
        }
        tx.commit().await
    }

    async fn judge_silence(
        &self,
        now: OffsetDateTime,
        policy: LivenessPolicy,
    ) -> Result<Vec<NodeStateChange>, StoreError> {
        let now_us = micros(now);
        let silent_since = now_us - i64::try_from(policy.timeout.as_micros()).unwrap_or(i64::MAX);
        let mut tx = self.begin().await?;
        let silent: Vec<(Uuid, String, bool, i64)> = tx
            .fetch_all(
                Statement::new(format!(
                    "SELECT id, status, draining, heard_us FROM nodes \
                     WHERE status <> 'down' AND heard_us < $1 ORDER BY id{}",
                    B::Tx::ROW_LOCK
                ))
                .bind(silent_since),
            )
            .await?;
        let mut changes = Vec::new();
        let mut events = Vec::new();
        for (id, status, draining, heard_us) in silent {
            let from: NodeStatus = status.parse().map_err(StoreError::Corrupt)?;
            let silence =
                std::time::Duration::from_micros(u64::try_from(now_us - heard_us).unwrap_or(0));
            let liveness = from
                .liveness()
                .next(LivenessEvent::Silence(silence), policy);
            if liveness == from.liveness() {
                continue;
            }
            let to = NodeStatus::of(liveness, draining);
            tx.execute(
                Statement::new("UPDATE nodes SET status = $2 WHERE id = $1 AND status = $3")
                    .bind(id)
                    .bind(to.as_str())
                    .bind(from.as_str()),
            )
            .await?;
            events.push(PendingEvent::node_status(NodeId::from_uuid(id), from, to));
            changes.push(NodeStateChange {
                id: NodeId::from_uuid(id),
                from,
                liveness,
                draining,
                last_heartbeat_at: from_micros(heard_us),
            });
        }
        if changes.is_empty() {
            tx.rollback().await?;
            return Ok(changes);
        }
        tx.append_events(&events).await?;
        tx.commit().await?;
        Ok(changes)
    }

    async fn request_restart(&self, id: NodeId) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let updated = tx
            .execute(
                Statement::new("UPDATE nodes SET restart_requested = true WHERE id = $1")
                    .bind(id.as_uuid()),
            )
            .await?;
        tx.commit().await?;
        Ok(updated > 0)
    }

    async fn take_restart(&self, id: NodeId) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let updated = tx
            .execute(
                Statement::new(
                    "UPDATE nodes SET restart_requested = false WHERE id = $1 AND restart_requested",
                )
                .bind(id.as_uuid()),
            )
            .await?;
        tx.commit().await?;
        Ok(updated > 0)
    }

    async fn delete_node(&self, id: NodeId) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let deleted = tx
            .execute(Statement::new("DELETE FROM nodes WHERE id = $1").bind(id.as_uuid()))
            .await?;
        if deleted == 0 {
            return Err(StoreError::NotFound {
                kind: "node",
                id: id.to_string(),
            });
        }
        tx.append_event(PendingEvent::node_deleted(id)).await?;
        tx.commit().await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows: Vec<EventRow> = self
            .read_all(
                Statement::new(
                    "SELECT seq, at, kind, subject, project_id, data FROM events \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit)),
            )
            .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        let (seq,): (i64,) = self
            .read_one(Statement::new("SELECT COALESCE(MAX(seq), 0) FROM events"))
            .await?;
        // Retention may have deleted every event: the newest was then at the horizon.
        Ok(seq.max(crate::RetentionStore::events_horizon(self).await?))
    }
}

#[derive(Debug, sqlx::FromRow)]
struct ProjectRow {
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
struct EventRow {
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

#[derive(Debug, sqlx::FromRow)]
struct NodeRow {
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
    restart_requested: bool,
    join_token_id: Option<Uuid>,
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
            join_token: row.join_token_id.map(JoinTokenId::from_uuid),
            restart_requested: row.restart_requested,
        })
    }
}

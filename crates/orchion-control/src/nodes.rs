//! The node registry: membership, credentials and liveness.
//!
//! Heartbeats are the hot path and cost no store write: liveness lives in memory (a monotonic
//! `last_seen` per node), as Nomad and Kubernetes node leases do. The store is written only when
//! a node's status changes (with an event) and, every `persist_interval`, in one batch with the
//! time each node was last heard from.
//!
//! Invariants:
//! - Memory follows the store: a status change is committed before memory shows it.
//! - Status changes and batch writes are serialized by one async lock (`writes`), so the event
//!   log never shows a change out of order. The in-memory map sits behind a std mutex that is
//!   never held across an `.await`.
//! - After a server restart every known node gets a fresh `last_seen`: the stored time of its
//!   last heartbeat may be up to `persist_interval` old, and the agents need a chance to
//!   reconnect before they are declared unreachable.
//! - Credentials are kept only as SHA-256 digests and compared in constant time.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::background::{Cause, Reconciler};

use orchion_domain::{
    Cursor, Liveness, LivenessEvent, LivenessPolicy, Node, NodeFilter, NodeId, NodeRegistration,
    NodeStatus, Page, PageRequest, ValidationErrors,
};
use orchion_store::{NodeStateChange, Store, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// How the registry judges liveness and how often it writes.
#[derive(Debug, Clone, Copy)]
pub struct RegistrySettings {
    pub policy: LivenessPolicy,
    /// How often the reconciler checks for silent nodes.
    pub check_interval: Duration,
    /// How often the last-heartbeat times are written to the store.
    pub persist_interval: Duration,
}

/// The defaults of `cluster.*`: a node silent for 30 s is unreachable, for 120 s down; checked
/// every 5 s; heartbeats written every 60 s.
impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            policy: LivenessPolicy {
                timeout: Duration::from_secs(30),
                down_after: Duration::from_secs(120),
            },
            check_interval: Duration::from_secs(5),
            persist_interval: Duration::from_secs(60),
        }
    }
}

impl RegistrySettings {
    /// How often agents are told to send heartbeats: a third of the timeout, so one lost
    /// heartbeat never makes a node unreachable.
    pub fn heartbeat_interval(&self) -> Duration {
        self.policy.timeout / 3
    }
}

/// What can go wrong in a registry call.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("node `{0}` is not registered")]
    NotFound(NodeId),
    #[error("the node credential is not valid for node `{0}`")]
    BadCredential(NodeId),
    #[error("invalid registration: {0}")]
    Invalid(ValidationErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A node's registration and its new credential, which is shown this once.
#[derive(Debug)]
pub struct Registered {
    pub node: Node,
    pub credential: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub status: NodeStatus,
    /// The operator asked the agent to restart (re-register and restart its work loop).
    pub restart: bool,
}

/// What one reconciler pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Nodes whose status changed.
    pub changed: usize,
    /// Nodes whose last-heartbeat time was written.
    pub persisted: usize,
}

struct Entry {
    node: Node,
    credential_hash: Vec<u8>,
    last_seen: Instant,
    persisted_heartbeat_at: OffsetDateTime,
    restart_requested: bool,
}

/// What an operator or agent does to a node's state.
#[derive(Debug, Clone, Copy)]
enum Change {
    Liveness(LivenessEvent),
    Drain,
}

/// The cluster's nodes. Cheap to share: hold it in an `Arc`.
pub struct NodeRegistry {
    store: Arc<dyn Store>,
    settings: RegistrySettings,
    nodes: Mutex<BTreeMap<NodeId, Entry>>,
    /// Serializes every write to the store; holds when the batch was last written.
    writes: tokio::sync::Mutex<Instant>,
}

impl NodeRegistry {
    /// Loads the known nodes from the store, each with a fresh grace period.
    pub async fn load(
        store: Arc<dyn Store>,
        settings: RegistrySettings,
    ) -> Result<Self, StoreError> {
        let now = Instant::now();
        let nodes = store
            .load_nodes()
            .await?
            .into_iter()
            .map(|stored| {
                let entry = Entry {
                    persisted_heartbeat_at: stored.node.last_heartbeat_at,
                    node: stored.node,
                    credential_hash: stored.credential_hash,
                    last_seen: now,
                    restart_requested: false,
                };
                (entry.node.id, entry)
            })
            .collect();
        Ok(Self {
            store,
            settings,
            nodes: Mutex::new(nodes),
            writes: tokio::sync::Mutex::new(now),
        })
    }

    /// The settings the registry runs with.
    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    fn nodes(&self) -> MutexGuard<'_, BTreeMap<NodeId, Entry>> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a node, or re-registers one under the id it kept, with a new credential.
    pub async fn register(
        &self,
        id: Option<NodeId>,
        registration: NodeRegistration,
    ) -> Result<Registered, RegistryError> {
        let _writes = self.writes.lock().await;
        let now = orchion_store::now();
        let node = Node {
            id: id.unwrap_or_default(),
            name: registration.name,
            address: registration.address,
            labels: registration.labels,
            capacity: registration.capacity,
            executors: registration.executors,
            version: registration.version,
            liveness: Liveness::Alive,
            draining: false,
            registered_at: now,
            last_heartbeat_at: now,
        };
        let credential = new_credential();
        let credential_hash = digest(&credential);
        let node = self.store.register_node(&node, &credential_hash).await?;
        self.nodes().insert(
            node.id,
            Entry {
                persisted_heartbeat_at: node.last_heartbeat_at,
                node: node.clone(),
                credential_hash,
                last_seen: Instant::now(),
                restart_requested: false,
            },
        );
        tracing::info!(node_id = %node.id, name = %node.name, "node registered");
        Ok(Registered { node, credential })
    }

    /// Records a heartbeat. Writes to the store only when it brings the node back to life.
    pub async fn heartbeat(
        &self,
        id: NodeId,
        credential: &str,
    ) -> Result<Heartbeat, RegistryError> {
        let (liveness, restart) = {
            let mut nodes = self.nodes();
            let entry = authenticated(&mut nodes, id, credential)?;
            let now = Instant::now();
            orchion_metrics::metrics()
                .heartbeat_interval
                .observe((now - entry.last_seen).as_secs_f64());
            entry.last_seen = now;
            entry.node.last_heartbeat_at = orchion_store::now();
            (
                entry.node.liveness,
                std::mem::take(&mut entry.restart_requested),
            )
        };
        let status = if liveness == Liveness::Alive {
            self.get(id).map(|n| n.status())
        } else {
            Some(
                self.change(id, Change::Liveness(LivenessEvent::Heartbeat))
                    .await?
                    .status(),
            )
        };
        Ok(Heartbeat {
            status: status.ok_or(RegistryError::NotFound(id))?,
            restart,
        })
    }

    /// The node, if `credential` is its credential.
    pub fn authenticate(&self, id: NodeId, credential: &str) -> Result<Node, RegistryError> {
        authenticated(&mut self.nodes(), id, credential).map(|e| e.node.clone())
    }

    /// The agent is leaving: the node is down at once.
    pub async fn leave(&self, id: NodeId, credential: &str) -> Result<Node, RegistryError> {
        authenticated(&mut self.nodes(), id, credential)?;
        self.change(id, Change::Liveness(LivenessEvent::Left)).await
    }

    /// Stops new placements on a node; running work may end.
    pub async fn drain(&self, id: NodeId) -> Result<Node, RegistryError> {
        self.change(id, Change::Drain).await
    }

    /// Forgets a node. An agent still running will register again.
    pub async fn delete(&self, id: NodeId) -> Result<(), RegistryError> {
        let _writes = self.writes.lock().await;
        if !self.nodes().contains_key(&id) {
            return Err(RegistryError::NotFound(id));
        }
        self.store.delete_node(id).await?;
        self.nodes().remove(&id);
        Ok(())
    }

    /// Asks the node's agent to restart; it is told in the answer to its next heartbeat.
    pub fn request_restart(&self, id: NodeId) -> Result<Node, RegistryError> {
        let mut nodes = self.nodes();
        let entry = nodes.get_mut(&id).ok_or(RegistryError::NotFound(id))?;
        entry.restart_requested = true;
        Ok(entry.node.clone())
    }

    /// Whether an operator asked this node to restart and the agent has not yet been told.
    pub fn restart_pending(&self, id: NodeId) -> bool {
        self.nodes().get(&id).is_some_and(|e| e.restart_requested)
    }

    /// A node as it is now.
    pub fn get(&self, id: NodeId) -> Option<Node> {
        self.nodes().get(&id).map(|e| e.node.clone())
    }

    /// Nodes passing the filter, in id order, a page at a time.
    pub fn list(&self, filter: &NodeFilter, page: PageRequest) -> Page<Node> {
        let nodes = self.nodes();
        let start = match page.after {
            Some(Cursor(after)) => std::ops::Bound::Excluded(NodeId::from_uuid(after)),
            None => std::ops::Bound::Unbounded,
        };
        let mut items: Vec<Node> = nodes
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, e)| &e.node)
            .filter(|node| filter.matches(node))
            .take(page.limit as usize + 1)
            .cloned()
            .collect();
        let next = if items.len() > page.limit as usize {
            items.truncate(page.limit as usize);
            items.last().map(|n| Cursor(n.id.as_uuid()))
        } else {
            None
        };
        Page { items, next }
    }

    /// How many nodes have each status.
    pub fn count_by_status(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> =
            NodeStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for entry in self.nodes().values() {
            *counts.entry(entry.node.status().as_str()).or_default() += 1;
        }
        counts
    }

    /// How many alive nodes offer each executor.
    pub fn executors_offered(&self) -> BTreeMap<String, usize> {
        let mut offered: BTreeMap<String, usize> = BTreeMap::new();
        for entry in self.nodes().values() {
            if entry.node.liveness == Liveness::Alive {
                for executor in &entry.node.executors {
                    *offered.entry(executor.clone()).or_default() += 1;
                }
            }
        }
        offered
    }

    /// Whether `credential` belongs to some registered node.
    pub fn is_node_credential(&self, credential: &str) -> bool {
        let presented = digest(credential);
        self.nodes()
            .values()
            .any(|e| bool::from(e.credential_hash.ct_eq(&presented)))
    }

    /// Applies a change to one node: computes it, commits it, then shows it in memory.
    async fn change(&self, id: NodeId, change: Change) -> Result<Node, RegistryError> {
        let _writes = self.writes.lock().await;
        let (state_change, node) = {
            let nodes = self.nodes();
            let entry = nodes.get(&id).ok_or(RegistryError::NotFound(id))?;
            let mut node = entry.node.clone();
            match change {
                Change::Liveness(event) => {
                    node.liveness = node.liveness.next(event, self.settings.policy);
                }
                Change::Drain => node.draining = true,
            }
            if node.liveness == entry.node.liveness && node.draining == entry.node.draining {
                return Ok(node);
            }
            let state_change = NodeStateChange {
                id,
                from: entry.node.status(),
                liveness: node.liveness,
                draining: node.draining,
                last_heartbeat_at: node.last_heartbeat_at,
            };
            (state_change, node)
        };
        self.store
            .update_node_states(std::slice::from_ref(&state_change))
            .await?;
        if let Some(entry) = self.nodes().get_mut(&id) {
            entry.node.liveness = node.liveness;
            entry.node.draining = node.draining;
            entry.persisted_heartbeat_at = state_change.last_heartbeat_at;
        }
        tracing::info!(node_id = %id, from = %state_change.from, to = %node.status(), "node status changed");
        Ok(node)
    }

    /// One reconciler pass at `now`: marks silent nodes unreachable or down, and writes the
    /// batch of last-heartbeat times when it is due. Idempotent; tests drive it directly.
    pub async fn tick(&self, now: Instant) -> Result<TickReport, StoreError> {
        let mut last_persist = self.writes.lock().await;
        let changes: Vec<NodeStateChange> = self
            .nodes()
            .values()
            .filter_map(|entry| {
                let silence = now.saturating_duration_since(entry.last_seen);
                let next = entry
                    .node
                    .liveness
                    .next(LivenessEvent::Silence(silence), self.settings.policy);
                (next != entry.node.liveness).then(|| NodeStateChange {
                    id: entry.node.id,
                    from: entry.node.status(),
                    liveness: next,
                    draining: entry.node.draining,
                    last_heartbeat_at: entry.node.last_heartbeat_at,
                })
            })
            .collect();
        self.store.update_node_states(&changes).await?;
        {
            let mut nodes = self.nodes();
            for change in &changes {
                if let Some(entry) = nodes.get_mut(&change.id) {
                    entry.node.liveness = change.liveness;
                    entry.persisted_heartbeat_at = change.last_heartbeat_at;
                    tracing::info!(
                        node_id = %change.id,
                        from = %change.from,
                        to = %entry.node.status(),
                        silent_for = ?now.saturating_duration_since(entry.last_seen),
                        "node status changed"
                    );
                }
            }
        }
        let mut persisted = 0;
        if now.saturating_duration_since(*last_persist) >= self.settings.persist_interval {
            persisted = self.persist_heartbeats().await?;
            *last_persist = now;
        }
        Ok(TickReport {
            changed: changes.len(),
            persisted,
        })
    }

    /// Writes every last-heartbeat time that changed since the previous write, in one
    /// transaction. Called with `writes` held.
    async fn persist_heartbeats(&self) -> Result<usize, StoreError> {
        let beats: Vec<(NodeId, OffsetDateTime)> = self
            .nodes()
            .values()
            .filter(|e| e.node.last_heartbeat_at != e.persisted_heartbeat_at)
            .map(|e| (e.node.id, e.node.last_heartbeat_at))
            .collect();
        self.store.record_heartbeats(&beats).await?;
        let mut nodes = self.nodes();
        for (id, at) in &beats {
            if let Some(entry) = nodes.get_mut(id) {
                entry.persisted_heartbeat_at = *at;
            }
        }
        Ok(beats.len())
    }
}

/// The liveness reconciler: every `check_interval`, nodes not heard from turn unreachable,
/// then down; at shutdown the last heartbeats are written.
impl Reconciler for NodeRegistry {
    fn name(&self) -> &'static str {
        "liveness"
    }

    fn period(&self) -> Duration {
        self.settings.check_interval
    }

    async fn reconcile(&self, _: Cause) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let report = self.tick(Instant::now()).await?;
        Ok(report.changed + report.persisted)
    }

    async fn stopped(&self) {
        let _writes = self.writes.lock().await;
        if let Err(e) = self.persist_heartbeats().await {
            tracing::warn!(error = %e, "could not record last heartbeats at shutdown");
        }
    }
}

/// The entry for `id` if `credential` is its credential.
fn authenticated<'a>(
    nodes: &'a mut BTreeMap<NodeId, Entry>,
    id: NodeId,
    credential: &str,
) -> Result<&'a mut Entry, RegistryError> {
    let entry = nodes.get_mut(&id).ok_or(RegistryError::NotFound(id))?;
    if bool::from(entry.credential_hash.ct_eq(&digest(credential))) {
        Ok(entry)
    } else {
        Err(RegistryError::BadCredential(id))
    }
}

fn new_credential() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests;

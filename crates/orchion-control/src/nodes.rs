//! The node registry: membership, credentials and liveness, shared by every replica through
//! the store.
//!
//! Heartbeats are the hot path and cost no store write each. The replica that hears a node
//! writes when it last heard it (`heard_us`, the node's lease) once per check interval, for all
//! the nodes it heard, in one statement. Silence is judged from that record by one idempotent
//! pass of compare-and-set changes ([`Store::judge_silence`]), harmless when every replica runs
//! it, so a node is never declared lost because some replica has not heard of it.
//!
//! Invariants:
//! - Memory is a cache of the store's nodes: read at start, filled on a miss (a node registered
//!   through another replica is known at its first call here), and read again every
//!   [`REFRESH`], so every replica lists the same nodes with the same status within a second.
//! - Every change of status is a compare-and-set on the stored status, committed before the
//!   cache shows it; when the cache was stale the change is worked out again from the store.
//! - Writes are serialized by one async lock (`writes`), so this replica's events never show a
//!   change out of order. The in-memory maps sit behind std mutexes never held across an
//!   `.await`.
//! - A replica judges silence only once it has been up for the liveness timeout: after every
//!   server was down, agents get that long to reconnect before they are declared unreachable.
//! - Credentials are kept only as SHA-256 digests and compared in constant time.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::{
    access::digest,
    background::{Cause, Reconciler},
    joining::Admission,
};

use orchion_domain::{
    Cursor, JoinTokenId, Liveness, LivenessEvent, LivenessPolicy, Node, NodeFilter, NodeId,
    NodeRegistration, NodeStatus, Page, PageRequest, ValidationErrors,
};
use orchion_store::{NodeStateChange, Store, StoreError, StoredNode};
use rand::RngCore;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// How often each replica reads the nodes again, so changes made through another replica show.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How the registry judges liveness and how often it writes.
#[derive(Debug, Clone, Copy)]
pub struct RegistrySettings {
    pub policy: LivenessPolicy,
    /// How often the nodes heard are written to the store and silence is judged.
    pub check_interval: Duration,
}

/// The defaults of `cluster.*`: a node silent for 30 s is unreachable, 120 s after that down;
/// heard nodes written and silence judged every 5 s.
impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            policy: LivenessPolicy {
                timeout: Duration::from_secs(30),
                down_after: Duration::from_secs(120),
            },
            check_interval: Duration::from_secs(5),
        }
    }
}

impl RegistrySettings {
    /// How often agents are told to send heartbeats: a third of the timeout, so one lost
    /// heartbeat never makes a node unreachable.
    pub fn heartbeat_interval(&self) -> Duration {
        self.policy.timeout / 3
    }

    /// How long after the last answered heartbeat an agent must have stopped its attempts: the
    /// node may be judged unreachable (and its attempts handed on) a timeout after the last
    /// heartbeat some replica recorded, and a replica that dies loses up to a check interval of
    /// heartbeats it heard but had not written yet. A tenth of the timeout more is kept for the
    /// stopping itself.
    pub fn fence_after(&self) -> Duration {
        self.policy
            .timeout
            .saturating_sub(self.check_interval)
            .saturating_sub(self.policy.timeout / 10)
            .max(Duration::from_millis(100))
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
    /// The registration claims labels or capacity its join token does not allow.
    #[error("the join token does not allow this node: {}", .0.join("; "))]
    BeyondLimits(Vec<String>),
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

/// What one check did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Nodes whose status this replica changed.
    pub changed: usize,
    /// Nodes whose last-heard time this replica wrote.
    pub persisted: usize,
}

struct Entry {
    node: Node,
    credential_hash: Vec<u8>,
    join_token: Option<JoinTokenId>,
    restart_requested: bool,
    /// When this replica last heard the node (for the heartbeat-interval metric).
    last_seen: Option<Instant>,
}

impl Entry {
    fn of(stored: StoredNode) -> Self {
        Entry {
            node: stored.node,
            credential_hash: stored.credential_hash,
            join_token: stored.join_token,
            restart_requested: stored.restart_requested,
            last_seen: None,
        }
    }
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
    /// The store's nodes, as last read or written here.
    nodes: Mutex<BTreeMap<NodeId, Entry>>,
    /// Nodes heard by this replica since the last check, and when.
    heard: Mutex<HashMap<NodeId, OffsetDateTime>>,
    /// Serializes this replica's writes to the store; holds when the last check ran.
    writes: tokio::sync::Mutex<Instant>,
    /// Silence is judged from this time on (start + the liveness timeout).
    judging_from: OffsetDateTime,
}

impl NodeRegistry {
    /// Reads the known nodes from the store.
    pub async fn load(
        store: Arc<dyn Store>,
        settings: RegistrySettings,
    ) -> Result<Self, StoreError> {
        let nodes = store
            .load_nodes()
            .await?
            .into_iter()
            .map(|stored| (stored.node.id, Entry::of(stored)))
            .collect();
        Ok(Self {
            store,
            settings,
            nodes: Mutex::new(nodes),
            heard: Mutex::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(Instant::now()),
            judging_from: orchion_store::now() + settings.policy.timeout,
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

    fn heard(&self) -> MutexGuard<'_, HashMap<NodeId, OffsetDateTime>> {
        self.heard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads one node from the store into the cache (or drops it when it is gone).
    async fn reload(&self, id: NodeId) -> Result<(), StoreError> {
        let stored = self.store.load_node(id).await?;
        let mut nodes = self.nodes();
        match stored {
            Some(stored) => {
                let last_seen = nodes.get(&id).and_then(|e| e.last_seen);
                let mut entry = Entry::of(stored);
                entry.last_seen = last_seen;
                nodes.insert(id, entry);
            }
            None => {
                nodes.remove(&id);
            }
        }
        Ok(())
    }

    /// Reads every node from the store into the cache: changes made through other replicas
    /// show, nodes deleted elsewhere go. What this replica heard but has not written yet stays.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let stored = self.store.load_nodes().await?;
        let heard = self.heard().clone();
        let mut nodes = self.nodes();
        let mut fresh = BTreeMap::new();
        for stored in stored {
            let id = stored.node.id;
            let mut entry = Entry::of(stored);
            if let Some(old) = nodes.get(&id) {
                entry.last_seen = old.last_seen;
            }
            if let Some(at) = heard.get(&id) {
                entry.node.last_heartbeat_at = entry.node.last_heartbeat_at.max(*at);
            }
            fresh.insert(id, entry);
        }
        *nodes = fresh;
        Ok(())
    }

    /// Registers a new node admitted by `admission`, with a new credential, after checking
    /// it stays within the admission's limits.
    pub async fn join(
        &self,
        admission: &Admission,
        registration: NodeRegistration,
    ) -> Result<Registered, RegistryError> {
        let problems = admission.limits.violations(&registration);
        if !problems.is_empty() {
            return Err(RegistryError::BeyondLimits(problems));
        }
        let _writes = self.writes.lock().await;
        let node = alive(NodeId::new(), registration);
        let credential = new_credential();
        let credential_hash = digest(&credential);
        let node = self
            .store
            .register_node(&node, &credential_hash, admission.join_token)
            .await?;
        self.cache_registered(node.clone(), credential_hash, admission.join_token);
        tracing::info!(node_id = %node.id, name = %node.name, "node joined");
        Ok(Registered { node, credential })
    }

    /// Registers a node again under the id it kept, proven by its own credential (which stays
    /// the same). The limits of the join token that admitted it hold again. A node that was
    /// deleted is [`RegistryError::NotFound`]: its agent must join as a new node.
    pub async fn rejoin(
        &self,
        id: NodeId,
        credential: &str,
        registration: NodeRegistration,
    ) -> Result<Registered, RegistryError> {
        self.authenticate(id, credential).await?;
        let join_token = self.nodes().get(&id).and_then(|e| e.join_token);
        if let Some(token) = join_token {
            let limits = self
                .store
                .get_join_token(token)
                .await?
                .map(|t| t.limits)
                .unwrap_or_default();
            let problems = limits.violations(&registration);
            if !problems.is_empty() {
                return Err(RegistryError::BeyondLimits(problems));
            }
        }
        let _writes = self.writes.lock().await;
        let credential_hash = digest(credential);
        let Some(node) = self
            .store
            .rejoin_node(&alive(id, registration), &credential_hash)
            .await?
        else {
            // Deleted, or given a new credential, since it was authenticated.
            self.reload(id).await?;
            return Err(RegistryError::NotFound(id));
        };
        self.cache_registered(node.clone(), credential_hash, join_token);
        tracing::info!(node_id = %node.id, name = %node.name, "node registered again");
        Ok(Registered {
            node,
            credential: credential.to_owned(),
        })
    }

    fn cache_registered(
        &self,
        node: Node,
        credential_hash: Vec<u8>,
        join_token: Option<JoinTokenId>,
    ) {
        let mut nodes = self.nodes();
        let restart_requested = nodes.get(&node.id).is_some_and(|e| e.restart_requested);
        nodes.insert(
            node.id,
            Entry {
                node,
                credential_hash,
                join_token,
                restart_requested,
                last_seen: Some(Instant::now()),
            },
        );
    }

    /// Records a heartbeat. Writes to the store only when it brings the node back to life or
    /// carries a restart request; the time it was heard is written with the next check.
    pub async fn heartbeat(
        &self,
        id: NodeId,
        credential: &str,
    ) -> Result<Heartbeat, RegistryError> {
        self.authenticate(id, credential).await?;
        let now = orchion_store::now();
        let (liveness, restart_requested) = {
            let mut nodes = self.nodes();
            let entry = nodes.get_mut(&id).ok_or(RegistryError::NotFound(id))?;
            let seen = Instant::now();
            if let Some(last) = entry.last_seen {
                orchion_metrics::metrics()
                    .heartbeat_interval
                    .observe((seen - last).as_secs_f64());
            }
            entry.last_seen = Some(seen);
            entry.node.last_heartbeat_at = now;
            (entry.node.liveness, entry.restart_requested)
        };
        self.heard().insert(id, now);
        let status = if liveness == Liveness::Alive {
            self.get(id).map(|n| n.status())
        } else {
            Some(
                self.change(id, Change::Liveness(LivenessEvent::Heartbeat))
                    .await?
                    .status(),
            )
        };
        let restart = restart_requested && self.store.take_restart(id).await?;
        if restart_requested {
            if let Some(entry) = self.nodes().get_mut(&id) {
                entry.restart_requested = false;
            }
        }
        Ok(Heartbeat {
            status: status.ok_or(RegistryError::NotFound(id))?,
            restart,
        })
    }

    /// The node, if `credential` is its credential. A node this replica does not know, or
    /// knows under another credential, is read from the store first: it may have registered
    /// (again) through another replica.
    pub async fn authenticate(&self, id: NodeId, credential: &str) -> Result<Node, RegistryError> {
        if let Ok(node) = authenticated(&mut self.nodes(), id, credential).map(|e| e.node.clone()) {
            return Ok(node);
        }
        self.reload(id).await?;
        authenticated(&mut self.nodes(), id, credential).map(|e| e.node.clone())
    }

    /// The agent is leaving: the node is down at once. Its attempts whose work runs outside it
    /// ([`crate::work::ADOPTABLE_EXECUTORS`]) are released for another node to adopt, and the
    /// other replicas are told there is work.
    pub async fn leave(&self, id: NodeId, credential: &str) -> Result<Node, RegistryError> {
        self.authenticate(id, credential).await?;
        self.heard().remove(&id);
        // Released while the node is still alive, so no reaper pass loses them in between.
        let mut released = 0;
        for executor in crate::work::ADOPTABLE_EXECUTORS {
            released += self.store.release_attempts(id, executor).await?;
        }
        let node = self
            .change(id, Change::Liveness(LivenessEvent::Left))
            .await?;
        if released > 0 {
            tracing::info!(node_id = %id, tasks = released, "a leaving node's attempts released for adoption");
            if let Err(e) = self.store.signal(&[orchion_store::Signal::Work]).await {
                tracing::warn!(error = %e, "could not tell the other replicas of released attempts");
            }
        }
        Ok(node)
    }

    /// Stops new placements on a node; running work may end.
    pub async fn drain(&self, id: NodeId) -> Result<Node, RegistryError> {
        self.change(id, Change::Drain).await
    }

    /// Forgets a node, and with it its credential: an agent still running must join again as
    /// a new node.
    pub async fn delete(&self, id: NodeId) -> Result<(), RegistryError> {
        let _writes = self.writes.lock().await;
        match self.store.delete_node(id).await {
            Ok(()) => {}
            Err(StoreError::NotFound { .. }) => {
                self.nodes().remove(&id);
                return Err(RegistryError::NotFound(id));
            }
            Err(e) => return Err(e.into()),
        }
        self.nodes().remove(&id);
        self.heard().remove(&id);
        Ok(())
    }

    /// Asks the node's agent to restart; it is told in the answer to its next heartbeat,
    /// through whichever replica it reaches.
    pub async fn request_restart(&self, id: NodeId) -> Result<Node, RegistryError> {
        if !self.store.request_restart(id).await? {
            self.nodes().remove(&id);
            return Err(RegistryError::NotFound(id));
        }
        self.reload(id).await?;
        self.get(id).ok_or(RegistryError::NotFound(id))
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

    /// Applies a change to one node: works it out from the cache, commits it as a
    /// compare-and-set, then shows it in memory. When the store had moved on (another replica
    /// changed the node), the node is read again and the change worked out once more.
    async fn change(&self, id: NodeId, change: Change) -> Result<Node, RegistryError> {
        let _writes = self.writes.lock().await;
        for _ in 0..2 {
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
            let applied = self
                .store
                .update_node_states(std::slice::from_ref(&state_change))
                .await?;
            if applied.is_empty() {
                self.reload(id).await?;
                continue;
            }
            if let Some(entry) = self.nodes().get_mut(&id) {
                entry.node.liveness = node.liveness;
                entry.node.draining = node.draining;
            }
            tracing::info!(node_id = %id, from = %state_change.from, to = %node.status(), "node status changed");
            return Ok(node);
        }
        // Changed under us twice in a row: report the node as the store has it now.
        self.get(id).ok_or(RegistryError::NotFound(id))
    }

    /// One check at `now`: writes when this replica last heard each node it heard, judges
    /// every node's silence by the store's record (once this replica has been up for the
    /// liveness timeout), and reads the nodes again. Idempotent; tests drive it directly.
    pub async fn tick(&self, now: OffsetDateTime) -> Result<TickReport, StoreError> {
        let mut last_check = self.writes.lock().await;
        *last_check = Instant::now();
        let persisted = self.persist_heard().await?;
        let mut changed = Vec::new();
        if now >= self.judging_from {
            changed = self.store.judge_silence(now, self.settings.policy).await?;
        }
        for change in &changed {
            tracing::info!(
                node_id = %change.id,
                from = %change.from,
                to = %NodeStatus::of(change.liveness, change.draining),
                last_heard = %change.last_heartbeat_at,
                "node status changed"
            );
        }
        drop(last_check);
        self.refresh().await?;
        Ok(TickReport {
            changed: changed.len(),
            persisted,
        })
    }

    /// Writes the nodes heard since the last write, in one statement; on failure they are
    /// kept for the next try. Called with `writes` held.
    async fn persist_heard(&self) -> Result<usize, StoreError> {
        let beats: Vec<(NodeId, OffsetDateTime)> = self.heard().drain().collect();
        if let Err(e) = self.store.record_heartbeats(&beats).await {
            let mut heard = self.heard();
            for (id, at) in beats {
                let kept = heard.entry(id).or_insert(at);
                *kept = (*kept).max(at);
            }
            return Err(e);
        }
        Ok(beats.len())
    }
}

/// The liveness reconciler: every [`REFRESH`] the nodes are read again; every
/// `check_interval` the nodes heard are written and silent ones turn unreachable, then down.
/// At shutdown the last heartbeats heard are written.
impl Reconciler for NodeRegistry {
    fn name(&self) -> &'static str {
        "liveness"
    }

    fn period(&self) -> Duration {
        REFRESH.min(self.settings.check_interval)
    }

    async fn reconcile(&self, _: Cause) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let due = self.writes.lock().await.elapsed() >= self.settings.check_interval;
        if !due {
            self.refresh().await?;
            return Ok(0);
        }
        let report = self.tick(orchion_store::now()).await?;
        Ok(report.changed + report.persisted)
    }

    async fn stopped(&self) {
        let _writes = self.writes.lock().await;
        if let Err(e) = self.persist_heard().await {
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

/// A node registering now, alive and not drained (the store keeps the drain flag and the
/// registration time of a node registering again).
fn alive(id: NodeId, registration: NodeRegistration) -> Node {
    let now = orchion_store::now();
    Node {
        id,
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
    }
}

#[cfg(test)]
mod tests;

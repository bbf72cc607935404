//! Orchion's durable store: one object-safe [`Store`] trait and its two backends, SQLite
//! (embedded, one replica) and PostgreSQL (any number of replicas).
//!
//! Invariants every backend keeps, checked by the conformance suite in `tests/conformance.rs`:
//! - A call that returns `Ok` has committed: what it wrote is on disk.
//! - A change and the event that records it commit in one transaction, so the event log is a
//!   complete history. Event sequence numbers increase in commit order and are never reused.
//! - An idempotency key maps to exactly one resource; a second request with the same key and the
//!   same body gets that resource back, one with a different body is refused.
//!
//! Timestamps are kept at microsecond precision (what PostgreSQL keeps); use [`now`].

mod catalog;
#[macro_use]
mod deliveries;
#[macro_use]
mod jobs;
mod postgres;
mod queries;
mod rows;
#[macro_use]
mod runs;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use orchion_domain::{
    AttemptOutcome, Capacity, Job, JobFilter, Labels, Liveness, NewJob, Node, NodeId, NodeStatus,
    Page, PageRequest, Project, ProjectFilter, ProjectId, ProjectUpdate, RunId, TaskId, TaskStatus,
    Timeouts,
};
use time::OffsetDateTime;

/// The database driver, for errors callers build (a store that is shutting down).
pub use sqlx;

pub use crate::{
    deliveries::Delivery,
    jobs::{MAX_LOG_BYTES, MAX_OUTPUT_BYTES, TRUNCATED, truncate},
    postgres::PostgresStore,
    sqlite::SqliteStore,
};

/// What a store call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource does not exist.
    #[error("{kind} `{id}` does not exist")]
    NotFound { kind: &'static str, id: String },
    /// The idempotency key was used before with a different request.
    #[error("idempotency key `{key}` was already used with a different request body")]
    IdempotencyConflict { key: String },
    /// The database cannot be reached or refused the connection.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else the database reported.
    #[error("store error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored row does not hold a valid value (written by a newer version, or edited by hand).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The schema could not be brought up to date.
    #[error("migrating the store failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL cannot be used.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// A report for an attempt that is no longer current, or from a node that does not hold
    /// it (fencing).
    #[error("{0}")]
    Stale(String),
    /// The change does not apply in the resource's current state.
    #[error("{0}")]
    Conflict(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            error => StoreError::Database(error),
        }
    }
}

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// An idempotency key with a digest of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key the client chose.
    pub key: String,
    /// A digest of the request body, so a reuse with a different body is detected.
    pub request_hash: Vec<u8>,
}

/// The result of a create call: the resource, and whether this call created it (`false` when an
/// idempotency key returned an earlier one).
#[derive(Debug, Clone, PartialEq)]
pub struct Created<T> {
    pub value: T,
    pub created: bool,
}

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

/// Tasks in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveCounts {
    pub queued: u64,
    pub running: u64,
}

/// The tasks ready to run and waiting for one executor and one set of placement labels: what an
/// autoscaler reads to add nodes of that kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub executor: String,
    /// The placement labels the tasks need, as a JSON object.
    pub labels: String,
    pub depth: u64,
    /// When the longest-waiting one was queued.
    pub oldest: OffsetDateTime,
}

/// A node asking for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub node_id: NodeId,
    /// Executors the node offers.
    pub executors: Vec<String>,
    pub labels: Labels,
    /// The node's whole capacity; what its running tasks use is subtracted.
    pub capacity: Capacity,
    /// At most this many tasks.
    pub max: usize,
    /// The time to claim at: tasks due by then are candidates, leases run from then.
    pub now: OffsetDateTime,
}

/// A task a node claimed: its attempt holds a lease until `lease_expires_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    pub job_id: RunId,
    pub task_id: TaskId,
    pub attempt: u32,
    pub executor: String,
    pub spec: String,
    pub timeouts: Timeouts,
    pub lease_expires_at: OffsetDateTime,
    /// The W3C trace context the task was created in, for the agent to continue.
    pub traceparent: Option<String>,
}

/// What a recorded result did to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// The task's status after the result.
    pub status: TaskStatus,
    pub run_id: RunId,
    /// The task is a workflow step, so its run may move on.
    pub workflow: bool,
}

/// How one attempt ended, as its node reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptReport {
    pub node: NodeId,
    pub task: TaskId,
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    pub output: Option<String>,
    /// What a succeeded step produced, a JSON object; workflow steps feed it to later steps.
    pub outputs: Option<String>,
}

/// Whether a node still holds an attempt's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Extended; `cancel_requested` tells the agent to stop the work.
    Held { cancel_requested: bool },
    /// Gone: the attempt was lost, finished or taken over. Stop the work and report nothing.
    Lost,
}

/// A log line as an agent sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLogLine {
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    pub line: String,
    pub at: OffsetDateTime,
}

/// A stored log line.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Position in the task's log, from 1.
    pub seq: i64,
    pub attempt: u32,
    pub stream: String,
    pub line: String,
    pub at: OffsetDateTime,
}

/// The job half of the store: queue, leases, results and logs. A supertrait of [`Store`], so an
/// `Arc<dyn Store>` has these methods too (bring `JobStore` into scope to call them).
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Enqueues jobs in one transaction. Each gets its own outcome: created, the job an earlier
    /// call with the same idempotency key created, or a key conflict. The outer error means
    /// nothing was written.
    async fn create_jobs(
        &self,
        jobs: Vec<(NewJob, Option<IdempotencyKey>)>,
    ) -> Result<Vec<Result<Created<Job>, StoreError>>, StoreError>;

    /// Enqueues a job, or returns the one an earlier call with the same key created.
    async fn create_job(
        &self,
        job: NewJob,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<Job>, StoreError> {
        self.create_jobs(vec![(job, idempotency)])
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("a batch of one came back empty".into())))
    }

    /// A job with its attempts.
    async fn get_job(&self, id: RunId) -> Result<Job, StoreError>;

    /// Jobs matching the filter, in id (creation) order, without their attempts.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: PageRequest,
    ) -> Result<Page<Job>, StoreError>;

    /// Gives a node the queued tasks that fit it — by priority, then age — each under a new
    /// attempt with a lease.
    async fn claim_tasks(&self, claim: &ClaimRequest) -> Result<Vec<ClaimedTask>, StoreError>;

    /// Extends the leases `node` holds; each answer says whether it still holds it.
    async fn extend_leases(
        &self,
        node: NodeId,
        leases: &[(TaskId, u32)],
    ) -> Result<Vec<LeaseState>, StoreError>;

    /// Records how attempts ended, in one transaction. Each report gets its own outcome: the
    /// task's new status, or [`StoreError::Stale`] when its node no longer holds the attempt.
    /// The outer error means nothing was written.
    async fn complete_attempts(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<Completed, StoreError>>, StoreError>;

    /// Records how an attempt ended, if `node` still holds it ([`StoreError::Stale`] if not),
    /// and returns the task's new status.
    async fn complete_attempt(
        &self,
        node: NodeId,
        task: TaskId,
        attempt: u32,
        outcome: AttemptOutcome,
        output: Option<String>,
    ) -> Result<TaskStatus, StoreError> {
        let report = AttemptReport {
            node,
            task,
            attempt,
            outcome,
            output,
            outputs: None,
        };
        self.complete_attempts(vec![report])
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("a batch of one came back empty".into())))
            .map(|done| done.status)
    }

    /// Ends attempts whose lease expired by `now` (lost: retried by policy) and fails tasks
    /// that waited past `schedule_to_start`. Returns how many tasks changed.
    async fn expire_leases(&self, now: OffsetDateTime) -> Result<usize, StoreError>;

    /// Ends every attempt running on `node` as lost (the node is unreachable).
    async fn lose_node_attempts(&self, node: NodeId) -> Result<usize, StoreError>;

    /// Cancels a job: at once when queued; a running attempt is asked to stop.
    async fn cancel_job(&self, id: RunId) -> Result<Job, StoreError>;

    /// Queues a failed or cancelled job again with a fresh attempt budget.
    async fn retry_job(&self, id: RunId) -> Result<Job, StoreError>;

    /// Appends log lines for an attempt `node` holds.
    async fn append_logs(
        &self,
        node: NodeId,
        task: TaskId,
        attempt: u32,
        lines: &[NewLogLine],
    ) -> Result<(), StoreError>;

    /// A task's log lines after `after`, oldest first.
    async fn read_logs(
        &self,
        task: TaskId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError>;

    /// Stores a new schedule.
    async fn create_schedule(&self, schedule: &orchion_domain::Schedule) -> Result<(), StoreError>;

    /// A schedule.
    async fn get_schedule(
        &self,
        id: orchion_domain::ScheduleId,
    ) -> Result<orchion_domain::Schedule, StoreError>;

    /// Schedules in id (creation) order.
    async fn list_schedules(
        &self,
        page: PageRequest,
    ) -> Result<Page<orchion_domain::Schedule>, StoreError>;

    /// Removes a schedule; runs it started are kept.
    async fn delete_schedule(&self, id: orchion_domain::ScheduleId) -> Result<(), StoreError>;

    /// Schedules due by `now`, earliest first.
    async fn due_schedules(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<orchion_domain::Schedule>, StoreError>;

    /// Moves a schedule on to `next`, if it is still due at `expected_next` (so two replicas
    /// cannot both move it), recording the run `fired` started. Returns whether it moved.
    async fn advance_schedule(
        &self,
        id: orchion_domain::ScheduleId,
        expected_next: Option<OffsetDateTime>,
        next: Option<OffsetDateTime>,
        fired: Option<(OffsetDateTime, RunId)>,
    ) -> Result<bool, StoreError>;

    /// Stores a workflow definition under `name` as a new version, unless it equals the latest
    /// version, which is then returned (`created: false`).
    async fn put_workflow_type(
        &self,
        name: &str,
        project_id: Option<ProjectId>,
        definition: &str,
    ) -> Result<Created<orchion_domain::WorkflowType>, StoreError>;

    /// A workflow type: `version`, or the latest when `None`.
    async fn get_workflow_type(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<orchion_domain::WorkflowType, StoreError>;

    /// How many tasks (of jobs and of workflow steps) are queued and running. Only work in
    /// flight is counted, so the cost follows the queue's depth, not the history's length.
    async fn active_task_counts(&self) -> Result<ActiveCounts, StoreError>;

    /// Ready tasks (queued, due by `now`) grouped by executor and placement labels.
    async fn queue_depths(&self, now: OffsetDateTime) -> Result<Vec<QueueDepth>, StoreError>;

    /// Nodes that have attempts running.
    async fn running_nodes(&self) -> Result<Vec<NodeId>, StoreError>;

    /// When the earliest queued task that is not yet due at `now` becomes due: what a claim
    /// that found nothing sleeps until. A task due already is not counted — if the claim did
    /// not take it, its node cannot run it, and waiting for it would be a busy loop.
    async fn next_run_after(
        &self,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, StoreError>;
}

/// Projects, nodes and the event log. A supertrait of [`Store`].
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

    /// Records a node's registration: inserts it, or updates a node registering again under
    /// its id (keeping `registered_at` and the drain flag). The node is alive afterwards.
    /// Returns the node as stored.
    async fn register_node(&self, node: &Node, credential_hash: &[u8]) -> Result<Node, StoreError>;

    /// Every node with its credential hash, in id order.
    async fn load_nodes(&self) -> Result<Vec<StoredNode>, StoreError>;

    /// Applies liveness and drain changes in one transaction, with a `node.status_changed`
    /// event for each change of status. Changes to nodes that no longer exist are skipped.
    async fn update_node_states(&self, changes: &[NodeStateChange]) -> Result<(), StoreError>;

    /// Records when nodes were last heard from. No events: this is the coarse, periodic write
    /// that keeps heartbeats cheap.
    async fn record_heartbeats(&self, beats: &[(NodeId, OffsetDateTime)])
    -> Result<(), StoreError>;

    /// Removes a node.
    async fn delete_node(&self, id: NodeId) -> Result<(), StoreError>;

    /// Events with a sequence number above `after`, oldest first, at most `limit`.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>, StoreError>;

    /// The newest event's sequence number; 0 for an empty log.
    async fn last_event_seq(&self) -> Result<i64, StoreError>;
}

/// The store behind every Orchion server. Object-safe: the server holds an `Arc<dyn Store>`,
/// which has the methods of [`CatalogStore`] and [`JobStore`] too.
#[async_trait]
pub trait Store:
    CatalogStore + JobStore + RunStore + DeliveryStore + Send + Sync + 'static
{
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Succeeds when the store answers a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;

    /// How many write transactions this store has committed since it was opened.
    fn commits(&self) -> u64;

    /// Closes the store's connections; later calls fail with [`StoreError::Unavailable`].
    async fn close(&self);
}

/// A workflow run to start.
#[derive(Debug, Clone)]
pub struct NewWorkflowRun {
    pub name: String,
    pub project_id: Option<ProjectId>,
    pub workflow: String,
    pub version: u32,
    /// The input, a JSON document.
    pub input: String,
    /// The definition, for a run not made from a stored workflow type (a deployment).
    pub definition: Option<String>,
    /// The W3C `traceparent` of the request that started it.
    pub trace_parent: Option<String>,
}

/// A deployment to record with its run.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub id: String,
    pub composer: String,
    pub environment: String,
    /// The request, a JSON document.
    pub request: String,
}

/// A step of a workflow run, written as a task when it becomes ready.
#[derive(Debug, Clone)]
pub struct NewStep {
    /// The step's name, or `name[i]` for element `i` of a fan-out.
    pub step: String,
    /// The rendered job: executor, spec, retry, timeouts, placement.
    pub job: NewJob,
    /// `Queued` to run it; `Failed` (with `error`) for a step that cannot run, such as one whose
    /// template reads a missing output; `Succeeded` (with `outputs`) for one with nothing to run.
    pub status: TaskStatus,
    pub outputs: Option<String>,
    pub error: Option<String>,
}

/// Workflow runs and their steps.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Starts a run with its first ready steps, in one transaction. With an idempotency key
    /// already used, returns that run instead (`created: false`).
    async fn create_workflow_run(
        &self,
        run: NewWorkflowRun,
        steps: Vec<NewStep>,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<orchion_domain::WorkflowRun>, StoreError>;

    /// A run with its tasks and their attempts.
    async fn get_workflow_run(
        &self,
        id: RunId,
    ) -> Result<orchion_domain::WorkflowRunRecord, StoreError>;

    /// Runs in creation order.
    async fn list_workflow_runs(
        &self,
        filter: &orchion_domain::WorkflowRunFilter,
        page: PageRequest,
    ) -> Result<Page<orchion_domain::WorkflowRun>, StoreError>;

    /// Adds steps that became ready and, with `finish`, ends the run — if it is still
    /// running. Steps already written are left alone. Returns whether the run was running.
    async fn advance_workflow_run(
        &self,
        id: RunId,
        steps: Vec<NewStep>,
        finish: Option<orchion_domain::RunStatus>,
    ) -> Result<bool, StoreError>;

    /// The runs still running, for the engine's periodic pass.
    async fn running_workflow_runs(&self) -> Result<Vec<RunId>, StoreError>;

    /// Asks a running run to stop: no new steps start, and its queued and running tasks are
    /// cancelled. [`StoreError::Conflict`] if it has finished.
    async fn cancel_workflow_run(&self, id: RunId) -> Result<(), StoreError>;

    /// Starts a deployment's run. While another deployment for the same composer and
    /// environment runs, the new one waits: its run is held, with no step written, until that
    /// one ends. [`StoreError::Conflict`] when the id is taken.
    async fn create_deployment(
        &self,
        deployment: NewDeployment,
        run: NewWorkflowRun,
        steps: Vec<NewStep>,
    ) -> Result<orchion_domain::Deployment, StoreError>;

    async fn get_deployment(&self, id: &str) -> Result<orchion_domain::Deployment, StoreError>;

    /// Deployments in creation order.
    async fn list_deployments(
        &self,
        filter: &orchion_domain::DeploymentFilter,
        page: PageRequest,
    ) -> Result<Page<orchion_domain::Deployment>, StoreError>;

    /// Undoes a run: a running one is cancelled, a finished one reopened as cancelled, so the
    /// engine rolls back its succeeded steps. A cancelled run is left as it is.
    async fn undo_workflow_run(&self, id: RunId) -> Result<(), StoreError>;

    /// Runs a failed or cancelled run again from where it failed: its failed and cancelled
    /// steps are tried again (keeping their attempts), and the steps they held back follow.
    /// [`StoreError::Conflict`] for a run that is running or succeeded, or was rolled back.
    async fn retry_workflow_run(&self, id: RunId) -> Result<(), StoreError>;
}

/// Webhook deliveries.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Records a delivery once per id. If its id was recorded already (a concurrent
    /// redelivery), returns that record with `created: false`.
    async fn record_delivery(&self, delivery: Delivery) -> Result<Created<Delivery>, StoreError>;

    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError>;

    /// Deliveries in the order received.
    async fn list_deliveries(&self, page: PageRequest) -> Result<Page<Delivery>, StoreError>;
}

/// Opens the store a URL names (`sqlite:PATH` or `postgres://…`), creating and migrating it.
pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url, max_connections).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            PostgresStore::connect(url, max_connections).await?,
        ))
    } else {
        Err(StoreError::InvalidUrl(
            "expected a URL starting with `sqlite:` or `postgres://`".into(),
        ))
    }
}

/// The current time at the precision every backend keeps (microseconds).
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let micros = now.microsecond();
    now.replace_microsecond(micros).unwrap_or(now)
}

/// Every event kind the store writes, for clients that filter by kind.
pub const EVENT_KINDS: &[&str] = &[
    kind::PROJECT_CREATED,
    kind::PROJECT_UPDATED,
    kind::PROJECT_DELETED,
    kind::NODE_REGISTERED,
    kind::NODE_STATUS_CHANGED,
    kind::NODE_DELETED,
    kind::JOB_CREATED,
    kind::JOB_STATUS_CHANGED,
    kind::SCHEDULE_CREATED,
    kind::SCHEDULE_DELETED,
    kind::WORKFLOW_TYPE_CREATED,
    kind::WORKFLOW_RUN_CREATED,
    kind::WORKFLOW_RUN_STATUS_CHANGED,
];

/// The event kinds the store writes.
pub(crate) mod kind {
    pub const PROJECT_CREATED: &str = "project.created";
    pub const PROJECT_UPDATED: &str = "project.updated";
    pub const PROJECT_DELETED: &str = "project.deleted";
    pub const NODE_REGISTERED: &str = "node.registered";
    pub const NODE_STATUS_CHANGED: &str = "node.status_changed";
    pub const NODE_DELETED: &str = "node.deleted";
    pub const JOB_CREATED: &str = "job.created";
    pub const JOB_STATUS_CHANGED: &str = "job.status_changed";
    pub const SCHEDULE_CREATED: &str = "schedule.created";
    pub const SCHEDULE_DELETED: &str = "schedule.deleted";
    pub const WORKFLOW_TYPE_CREATED: &str = "workflow_type.created";
    pub const WORKFLOW_RUN_CREATED: &str = "workflow_run.created";
    pub const WORKFLOW_RUN_STATUS_CHANGED: &str = "workflow_run.status_changed";
}

/// The scope idempotency keys of project creation live in.
pub(crate) const PROJECT_CREATE_SCOPE: &str = "project.create";
/// The scope idempotency keys of job creation live in.
pub(crate) const JOB_CREATE_SCOPE: &str = "job.create";
/// The scope idempotency keys of workflow run creation live in.
pub(crate) const WORKFLOW_CREATE_SCOPE: &str = "workflow.create";

/// A conversion that cannot fail (a row that is already the value), for [`rows::page_of`].
impl From<std::convert::Infallible> for StoreError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Whether an error is a unique-constraint violation (PostgreSQL `23505`; SQLite extended codes
/// 1555 and 2067).
pub(crate) fn is_unique_violation(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("23505" | "1555" | "2067")))
}

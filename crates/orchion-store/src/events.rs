//! The event log's vocabulary: every kind the store writes, and the event each change records.
//!
//! A flow collects its events as [`PendingEvent`]s and appends them at its end
//! ([`crate::backend::Tx::append_events`]), in the transaction of the change they record, so
//! the log is a complete history and PostgreSQL's `event_sequence` row lock, which orders
//! events by commit, is held as briefly as it can be.

use orchion_domain::{Node, NodeId, NodeStatus, Project, ProjectId, RunId, RunStatus, TaskStatus};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::tasks::TaskRow;

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
    pub const RETENTION_DELETED: &str = "retention.deleted";
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
    kind::RETENTION_DELETED,
];

/// An event a transaction writes just before it commits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingEvent {
    pub kind: &'static str,
    pub subject: String,
    pub project_id: Option<ProjectId>,
    pub data: serde_json::Value,
}

impl PendingEvent {
    /// A `project.created`/`project.updated` event: the project as it now is.
    pub fn project(kind: &'static str, project: &Project) -> Self {
        PendingEvent {
            kind,
            subject: project.id.to_string(),
            project_id: Some(project.id),
            data: serde_json::json!({
                "name": project.name,
                "type": project.kind,
                "status": project.status.as_str(),
            }),
        }
    }

    /// A `project.deleted` event.
    pub fn project_deleted(id: ProjectId) -> Self {
        PendingEvent {
            kind: kind::PROJECT_DELETED,
            subject: id.to_string(),
            project_id: Some(id),
            data: serde_json::json!({}),
        }
    }

    /// A `node.registered` event.
    pub fn node_registered(node: &Node) -> Self {
        PendingEvent {
            kind: kind::NODE_REGISTERED,
            subject: node.id.to_string(),
            project_id: None,
            data: serde_json::json!({
                "node_id": node.id.to_string(),
                "name": node.name,
                "address": node.address,
                "status": node.status().as_str(),
            }),
        }
    }

    /// A `node.status_changed` event.
    pub fn node_status(id: NodeId, from: NodeStatus, to: NodeStatus) -> Self {
        PendingEvent {
            kind: kind::NODE_STATUS_CHANGED,
            subject: id.to_string(),
            project_id: None,
            data: serde_json::json!({ "node_id": id.to_string(), "from": from.as_str(), "to": to.as_str() }),
        }
    }

    /// A `node.deleted` event.
    pub fn node_deleted(id: NodeId) -> Self {
        PendingEvent {
            kind: kind::NODE_DELETED,
            subject: id.to_string(),
            project_id: None,
            data: serde_json::json!({ "node_id": id.to_string() }),
        }
    }

    /// The `job.created` event of a job just enqueued.
    pub fn job_created(run_id: RunId, job: &orchion_domain::NewJob) -> Self {
        PendingEvent {
            kind: kind::JOB_CREATED,
            subject: run_id.to_string(),
            project_id: job.project_id,
            data: serde_json::json!({ "job_id": run_id.to_string(), "executor": job.executor, "status": "queued" }),
        }
    }

    /// A `job.status_changed` event for `task`, naming its step and the node that holds it.
    pub fn status(task: &TaskRow, from: TaskStatus, to: TaskStatus, attempt: u32) -> Self {
        let mut data = job_status_data(task.run_id, from, to, attempt);
        data["task_id"] = serde_json::json!(task.id.to_string());
        data["step"] = serde_json::json!(task.step);
        if let Some(node) = task.node_id {
            data["node_id"] = serde_json::json!(node.to_string());
        }
        PendingEvent {
            kind: kind::JOB_STATUS_CHANGED,
            subject: RunId::from_uuid(task.run_id).to_string(),
            project_id: task.project_id.map(ProjectId::from_uuid),
            data,
        }
    }

    /// The same, for a task `node` has just claimed.
    pub fn claimed(
        task: &TaskRow,
        from: TaskStatus,
        to: TaskStatus,
        attempt: u32,
        node: Uuid,
    ) -> Self {
        let mut event = Self::status(task, from, to, attempt);
        event.data["node_id"] = serde_json::json!(node.to_string());
        event
    }

    /// A `job.status_changed` event for an operator's change (cancel, retry, a schedule
    /// timeout): the job, the two statuses and the attempt count.
    pub fn job_status(task: &TaskRow, from: TaskStatus, to: TaskStatus, attempt: u32) -> Self {
        PendingEvent {
            kind: kind::JOB_STATUS_CHANGED,
            subject: RunId::from_uuid(task.run_id).to_string(),
            project_id: task.project_id.map(ProjectId::from_uuid),
            data: job_status_data(task.run_id, from, to, attempt),
        }
    }

    /// A `workflow_run.created` event.
    pub fn run_created(
        id: RunId,
        project_id: Option<ProjectId>,
        workflow: &str,
        version: u32,
    ) -> Self {
        PendingEvent {
            kind: kind::WORKFLOW_RUN_CREATED,
            subject: id.to_string(),
            project_id,
            data: serde_json::json!({ "run_id": id.to_string(), "workflow": workflow, "version": version }),
        }
    }

    /// Retention deleted `count` of `what` (`runs`, `webhook_deliveries`, `nodes`) from
    /// before `before`.
    pub fn retention_deleted(what: &'static str, count: u64, before: OffsetDateTime) -> Self {
        PendingEvent {
            kind: kind::RETENTION_DELETED,
            subject: what.to_owned(),
            project_id: None,
            data: serde_json::json!({
                "what": what,
                "count": count,
                "before": before.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            }),
        }
    }

    /// A `workflow_run.status_changed` event.
    pub fn run_status(
        id: RunId,
        project_id: Option<ProjectId>,
        from: RunStatus,
        to: RunStatus,
    ) -> Self {
        PendingEvent {
            kind: kind::WORKFLOW_RUN_STATUS_CHANGED,
            subject: id.to_string(),
            project_id,
            data: serde_json::json!({ "run_id": id.to_string(), "from": from.as_str(), "to": to.as_str() }),
        }
    }
}

/// The data every `job.status_changed` event carries.
fn job_status_data(run: Uuid, from: TaskStatus, to: TaskStatus, attempt: u32) -> serde_json::Value {
    serde_json::json!({
        "job_id": RunId::from_uuid(run).to_string(),
        "from": from.as_str(),
        "to": to.as_str(),
        "attempt": attempt,
    })
}

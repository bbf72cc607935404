//! The REST API's wire types, in one place for both ends: the server (`orchion-api`) answers
//! with them and documents them in its OpenAPI description; clients (`orchion-client`, the CLI)
//! read them. Each is the JSON shape of one resource; statuses are the lowercase words the API
//! documents. Converting from the domain's types is the server's business, not this crate's.

mod access;
mod deployments;
mod events;
mod executors;
mod jobs;
mod nodes;
mod problem;
mod projects;
mod runs;
mod schedules;
mod secrets;
mod status;
mod workflow_types;

pub use access::{
    AuditBody, AuditList, CreateJoinToken, CreateSession, CreateToken, CreatedJoinToken,
    CreatedToken, JoinTokenBody, JoinTokenList, OidcMethod, SessionBody, SignInMethods, TokenBody,
    TokenList,
};
pub use deployments::{DeploymentBody, DeploymentList, EngineBody, EngineList, ResourceStatus};
pub use events::EventBody;
pub use executors::{ExecutorBody, ExecutorList};
pub use jobs::{AttemptBody, BatchBody, BatchItem, JobBody, JobList, LogLineBody, LogPage};
pub use nodes::{AgentBody, AgentList, CapacityBody, NodeBody, NodeList};
pub use problem::{FieldProblem, Problem};
pub use projects::{CreateProject, ProjectBody, ProjectList, UpdateProject};
pub use runs::{
    RunLogs, StartWorkflow, StepBody, StepMetrics, StepTaskBody, TaskLogs, WorkflowMetrics,
    WorkflowRunBody, WorkflowRunList,
};
pub use schedules::{ScheduleBody, ScheduleList};
pub use secrets::{SecretBody, SecretList, SetSecret};
pub use status::{StatusBody, StoreStatus, TaskCounts};
pub use workflow_types::WorkflowTypeBody;

#[cfg(test)]
mod tests {
    use super::*;

    /// A field the server leaves out when empty must read back as empty, or a client cannot
    /// decode the answer it was given.
    #[test]
    fn what_the_server_leaves_out_reads_back_as_absent() -> serde_json::Result<()> {
        let executor = ExecutorBody {
            name: "shell".into(),
            agents: 0,
            health: "unavailable".into(),
            detail: None,
            checked_at: None,
        };
        let text = serde_json::to_string(&executor)?;
        assert!(!text.contains("checked_at"), "{text}");
        let back: ExecutorBody = serde_json::from_str(&text)?;
        assert_eq!(back.checked_at, None);

        let problem = Problem {
            kind: "urn:orchion:problem:not-found".into(),
            title: "Not found".into(),
            status: 404,
            detail: "no job 1".into(),
            code: "not-found".into(),
            errors: Vec::new(),
            more_errors: 0,
        };
        let text = serde_json::to_string(&problem)?;
        assert!(!text.contains("errors"), "{text}");
        let back: Problem = serde_json::from_str(&text)?;
        assert!(back.errors.is_empty());
        Ok(())
    }

    #[test]
    fn a_request_sends_only_what_is_set() -> serde_json::Result<()> {
        let update = UpdateProject {
            name: Some("renamed".into()),
            description: None,
            kind: None,
            status: None,
        };
        assert_eq!(serde_json::to_string(&update)?, r#"{"name":"renamed"}"#);
        Ok(())
    }
}

//! Orchion's domain model: identifiers, resources and the rules that make a value valid.
//!
//! Invariant: nothing here performs IO or knows a wire format. The API edge converts its JSON
//! DTOs into these types by hand, and the store converts its rows; both rely on the constructors
//! here to reject invalid values, so a value of a domain type is always valid.

pub mod access;
pub mod error;
pub mod id;
pub mod job;
pub mod node;
pub mod page;
pub mod project;
pub mod run;
pub mod schedule;
pub mod workflow;

pub use access::{
    AuditEntry, AuditFilter, AuditOutcome, JoinLimits, JoinToken, OIDC_PREFIX, Principal, Role,
    Token, TokenKind,
};
pub use error::{FieldError, MAX_PROBLEMS_LISTED, ValidationErrors, pointer_escape};
pub use id::{IdParseError, JoinTokenId, NodeId, ProjectId, RunId, ScheduleId, TaskId, TokenId};
pub use job::{
    Attempt, AttemptOutcome, AttemptStatus, Concurrency, InvalidTransition, Job, JobFilter, NewJob,
    Placement, RetryPolicy, TaskEvent, TaskState, TaskStatus, Timeouts, Transition,
};
pub use node::{
    Capacity, Labels, Liveness, LivenessEvent, LivenessPolicy, Node, NodeFilter, NodeRegistration,
    NodeStatus,
};
pub use page::{Cursor, Page, PageRequest};
pub use project::{NewProject, Project, ProjectFilter, ProjectStatus, ProjectUpdate};
pub use run::{
    Deployment, DeploymentFilter, InvalidRunTransition, Phase, RunEffect, RunEvent, RunState,
    RunStatus, RunTransition, StepKey, StepTask, WorkflowRun, WorkflowRunFilter, WorkflowRunRecord,
};
pub use schedule::{CronSchedule, Firing, MisfirePolicy, OverlapPolicy, Schedule};
pub use workflow::{Dag, Literal, Piece, Reference, StepShape, WorkflowType, parse_template};

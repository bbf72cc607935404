//! Orchion's definition language: jobs and workflows as users write them (JSON or YAML),
//! checked as a whole into domain types with every problem named by its JSON pointer, and the
//! templates that feed a run's input and upstream outputs into a step's spec.
//!
//! The API checks definitions with it when they arrive; the workflow engine renders steps with
//! it when they become ready. One place, so both read a definition alike.

pub mod deployment;
pub mod executor;
pub mod job;
pub mod secret;
pub mod text;
pub mod workflow;

pub use deployment::{DependencyRequest, DeploymentRequest, ResourceRequest};
pub use executor::{ENGINES, KNOWN, engine_refused, pointer_of, refuse_script_templates, validate};
pub use job::{ConcurrencyBody, CreateJob, PlacementBody, ResourcesBody, RetryBody, TimeoutsBody};
pub use secret::{REDACTED, check_secret_name, redact, resolve_secrets, secret_names, secret_uses};
pub use text::{NUL_REFUSED, find_nul, json_without_nul, without_nul};
pub use workflow::{
    Rollback, RollbackDefinition, Scope, Step, StepDefinition, Workflow, WorkflowDefinition,
    condition, items, render, render_spec,
};

//! Orchion's control-plane services, free of any wire protocol: the gRPC and REST edges call
//! into them.
//!
//! - [`access::Access`]: API tokens, the first admin token, and the audit log's writer.
//! - [`nodes::NodeRegistry`]: which nodes exist, whether each is alive, and their credentials.
//! - [`work::WorkQueue`]: hands tasks to nodes, wakes waiting agents, and reaps lost attempts.
//! - [`replicas::Replica`]: this server as one replica among those sharing the store.
//! - [`schedules::Scheduler`]: fires cron schedules.
//! - [`signals::follow_signals`]: hears what the other replicas change.
//! - [`workflows::Workflows`]: starts workflow runs and moves them on as their steps finish.
//! - [`secrets::Secrets`]: projects' secrets, sealed at rest and opened for the tasks that
//!   refer to them.
//! - [`webhooks::Webhooks`]: turns verified GitHub deliveries into runs by the configured rules.

pub mod access;
pub mod background;
mod batch;
pub mod deployments;
pub mod joining;
pub mod nodes;
pub mod replicas;
pub mod retention;
pub mod schedules;
pub mod secrets;
pub mod signals;
pub mod webhooks;
pub mod work;
pub mod workflows;

pub use access::{Access, Bootstrap, Issued, Refusal, TokenRequest};
pub use background::{Background, Cause, Reconciler, drive};
pub use deployments::{DeploymentStatus, ResourceStatus, deployment_status};
pub use joining::{Admission, JoinTokenRequest, JoinTokens};
pub use nodes::{Heartbeat, NodeRegistry, Registered, RegistryError, RegistrySettings, TickReport};
pub use replicas::Replica;
pub use retention::{Retention, RetentionPolicy};
pub use schedules::Scheduler;
pub use secrets::{SecretError, SecretKey, Secrets};
pub use signals::follow_signals;
pub use webhooks::{GithubDelivery, WebhookError, Webhooks};
pub use work::{AttemptResult, WorkError, WorkQueue};
pub use workflows::{
    Plan, Progress, Reads, Seen, StartRequest, StartRun, StepState, Told, WorkflowError, Workflows,
    plan,
};

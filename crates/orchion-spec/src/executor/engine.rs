//! The spec of a deployment engine's task: apply or destroy one resource of a deployment. The
//! engines themselves (`terraform`, `helm`, `pulumi`, `crossplane`) live in `orchion-engines`
//! and run on agents that offer them; the spec is here so the server checks it like any other.

use serde::{Deserialize, Serialize};

/// The deployment engines Orchion knows, each an executor an agent may offer.
pub const ENGINES: &[&str] = &["terraform", "helm", "pulumi", "crossplane"];

/// What to do to the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineAction {
    /// Create or update it, and report its outputs.
    Apply,
    /// Remove it (a rollback, or a deleted deployment).
    Destroy,
}

/// One resource of a deployment, for its engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    pub action: EngineAction,
    pub deployment: String,
    pub composer: String,
    pub environment: String,
    pub resource: String,
    /// The catalog entry, `name:version`.
    pub catalog_ref: String,
    /// What the engine applies, as the deployment gave it (templates resolved).
    #[serde(default)]
    pub config: serde_json::Value,
}

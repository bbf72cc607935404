//! Deployments as the deployment service takes them: resources with dependencies, each applied
//! by an engine. A deployment is checked as a whole and becomes a workflow: one step per
//! resource (`action: apply` on its engine), `needs` from the dependencies, and a rollback per
//! resource (`action: destroy`), so a failure undoes what was applied in reverse order.
//!
//! A resource's config may read the outputs of the resources it depends on:
//! `${{ resources.database.outputs.endpoint }}`.

use std::collections::BTreeSet;

use orchion_domain::{FieldError, ValidationErrors};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::workflow::{RollbackDefinition, StepDefinition, Workflow, WorkflowDefinition};

pub use crate::executor::ENGINES;

/// A resource to deploy.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequest {
    /// Unique in the deployment: letters, digits, `_`, `-`.
    #[schema(example = "database")]
    pub name: String,
    /// The catalog entry this resource instantiates, `name:version`.
    #[serde(rename = "catalogRef")]
    #[schema(example = "aws-rds-mysql:1.0.0")]
    pub catalog_ref: String,
    /// What the engine applies; strings may read the outputs of resources this one depends on.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: Value,
    /// `terraform`, `helm`, `pulumi` or `crossplane`.
    #[schema(example = "crossplane")]
    pub engine: String,
}

/// `from` must be deployed before `to`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DependencyRequest {
    pub from: String,
    pub to: String,
}

/// A deployment request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRequest {
    /// Chosen by the client: letters, digits, `.`, `_`, `-`, at most 200.
    #[schema(example = "team-alpha-web-app-v1")]
    pub id: String,
    /// The team (composer) deploying. One deployment per composer and environment runs at a
    /// time.
    #[schema(example = "team-alpha")]
    pub composer: String,
    pub resources: Vec<ResourceRequest>,
    #[serde(default)]
    pub dependencies: Vec<DependencyRequest>,
    #[schema(example = "production")]
    pub environment: String,
    /// Undo what was applied when a resource fails (default true).
    pub rollback: Option<bool>,
}

fn valid_id(text: &str, max: usize, extra: &[char]) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

impl DeploymentRequest {
    /// The workflow this deployment runs (and its definition as JSON, to keep with the run), or
    /// every problem with it. `enabled` says whether an engine is enabled on this server.
    pub fn compile(
        &self,
        enabled: impl Fn(&str) -> bool,
    ) -> Result<(Workflow, Value), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if !valid_id(&self.id, 200, &['.']) {
            errors.push(FieldError::new(
                "id",
                "id must be 1 to 200 letters, digits, `.`, `_` or `-`",
            ));
        }
        for (field, value) in [
            ("composer", &self.composer),
            ("environment", &self.environment),
        ] {
            if !valid_id(value, 100, &['.']) {
                errors.push(FieldError::new(
                    field,
                    format!("{field} must be 1 to 100 letters, digits, `.`, `_` or `-`"),
                ));
            }
        }
        if self.resources.is_empty() {
            errors.push(FieldError::new(
                "resources",
                "a deployment needs at least one resource",
            ));
        }
        let names: BTreeSet<&str> = self.resources.iter().map(|r| r.name.as_str()).collect();
        for (i, resource) in self.resources.iter().enumerate() {
            if !ENGINES.contains(&resource.engine.as_str()) {
                errors.push(FieldError {
                    pointer: format!("/resources/{i}/engine"),
                    message: format!(
                        "unknown engine `{}`: expected one of {}",
                        resource.engine,
                        ENGINES.join(", ")
                    ),
                });
            } else if !enabled(&resource.engine) {
                errors.push(FieldError {
                    pointer: format!("/resources/{i}/engine"),
                    message: format!(
                        "engine `{}` is disabled on this server (engines.{}.enabled)",
                        resource.engine, resource.engine
                    ),
                });
            }
            if !catalog_ref_ok(&resource.catalog_ref) {
                errors.push(FieldError {
                    pointer: format!("/resources/{i}/catalogRef"),
                    message: "catalogRef must name a catalog entry as `name:version`, e.g. aws-rds-mysql:1.0.0 (a name of a-z, 0-9, `.`, `_`, `/` and `-`, a version of letters, digits, `.`, `+`, `_` and `-`, neither starting with `-`)"
                        .into(),
                });
            }
            if resource.engine == "helm" {
                errors.0.extend(helm_config_problems(i, &resource.config));
            }
        }
        for (i, dependency) in self.dependencies.iter().enumerate() {
            for (field, name) in [("from", &dependency.from), ("to", &dependency.to)] {
                if !names.contains(name.as_str()) {
                    errors.push(FieldError {
                        pointer: format!("/dependencies/{i}/{field}"),
                        message: format!("dependency {field} `{name}`: no resource has that name"),
                    });
                }
            }
        }
        if !errors.0.is_empty() {
            // Unknown names in dependencies would be reported again by the graph check.
            return Err(errors);
        }
        let definition = self.definition();
        let json = serde_json::to_value(&definition).unwrap_or(Value::Null);
        let workflow = definition.compile().map_err(|e| {
            // The graph's pointers name steps; point at the deployment's own fields instead.
            // A resource's apply and destroy share its config, so its problems come twice.
            let mut errors: Vec<FieldError> = Vec::new();
            for mut error in e.0 {
                error.pointer = deployment_pointer(&error.pointer);
                if !errors.contains(&error) {
                    errors.push(error);
                }
            }
            ValidationErrors(errors)
        })?;
        Ok((workflow, json))
    }

    /// The workflow definition: a step per resource, applied by its engine, with a rollback
    /// that destroys it.
    fn definition(&self) -> WorkflowDefinition {
        let spec = |resource: &ResourceRequest, action: &str| {
            json!({
                "action": action,
                "deployment": self.id,
                "composer": self.composer,
                "environment": self.environment,
                "resource": resource.name,
                "catalog_ref": resource.catalog_ref,
                "config": resource.config,
            })
        };
        let mut needs: std::collections::HashMap<&str, Vec<String>> = Default::default();
        for dependency in &self.dependencies {
            needs
                .entry(dependency.to.as_str())
                .or_default()
                .push(dependency.from.clone());
        }
        let steps = self
            .resources
            .iter()
            .map(|resource| StepDefinition {
                name: resource.name.clone(),
                needs: needs.remove(resource.name.as_str()).unwrap_or_default(),
                executor: resource.engine.clone(),
                spec: spec(resource, "apply"),
                retry: None,
                timeouts: None,
                placement: None,
                when: None,
                for_each: None,
                rollback: Some(RollbackDefinition {
                    executor: resource.engine.clone(),
                    spec: spec(resource, "destroy"),
                    retry: None,
                    timeouts: None,
                }),
            })
            .collect();
        WorkflowDefinition {
            name: format!("deployment.{}", self.id),
            description: None,
            project_id: None,
            steps,
            rollback: Some(self.rollback.unwrap_or(true)),
        }
    }
}

/// Whether `text` is a catalog reference: `name` or `name:version`, neither able to pass for a
/// command-line flag.
fn catalog_ref_ok(text: &str) -> bool {
    let (name, version) = match text.rsplit_once(':') {
        Some((name, version)) => (name, Some(version)),
        None => (text, None),
    };
    let name_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b));
    name_ok && version.is_none_or(version_ok)
}

/// A chart version: letters, digits, `.`, `+`, `_` and `-`, starting with a letter or digit.
fn version_ok(version: &str) -> bool {
    version
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && version.len() <= 100
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+_-".contains(&b))
}

/// What `helm` is given from a resource's config (`chart`, `version`, `namespace`), checked so
/// that no value can become a flag or leave its place.
fn helm_config_problems(i: usize, config: &Value) -> Vec<FieldError> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: &str| {
        problems.push(FieldError {
            pointer: format!("/resources/{i}/config/{field}"),
            message: format!("config.{field} {message}"),
        });
    };
    if let Some(chart) = config.get("chart") {
        let ok = chart.as_str().is_some_and(|c| {
            c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.len() <= 500
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._/:@+-".contains(&b))
        });
        if !ok {
            problem(
                "chart",
                "must be a chart reference (`repo/name`, `oci://…`, a path): letters, digits and `._/:@+-`, starting with a letter or digit",
            );
        }
    }
    if let Some(version) = config.get("version") {
        if !version.as_str().is_some_and(version_ok) {
            problem(
                "version",
                "must be a chart version: letters, digits, `.`, `+`, `_` and `-`, starting with a letter or digit",
            );
        }
    }
    if let Some(namespace) = config.get("namespace") {
        let ok = namespace.as_str().is_some_and(|n| {
            !n.is_empty()
                && n.len() <= 63
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !n.starts_with('-')
                && !n.ends_with('-')
        });
        if !ok {
            problem(
                "namespace",
                "must be a Kubernetes namespace: 1 to 63 of a-z, 0-9 and `-`, not starting or ending with `-`",
            );
        }
    }
    problems
}

/// `/steps/2/spec/config/x` → `/resources/2/config/x`; `/steps/1/needs…` → `/dependencies`.
fn deployment_pointer(pointer: &str) -> String {
    let Some(rest) = pointer.strip_prefix("/steps/") else {
        return pointer.to_owned();
    };
    let (index, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if tail.starts_with("needs") {
        return "/dependencies".into();
    }
    let tail = tail
        .strip_prefix("spec/")
        .or_else(|| tail.strip_prefix("rollback/spec/"))
        .unwrap_or(tail);
    let tail = match tail {
        "name" => "name".to_owned(),
        "catalog_ref" => "catalogRef".to_owned(),
        other => other.to_owned(),
    };
    format!("/resources/{index}/{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value: Value) -> DeploymentRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn resources_become_steps_that_need_their_dependencies() {
        let deployment = request(json!({
            "id": "team-alpha-web-app-v1", "composer": "team-alpha", "environment": "production",
            "resources": [
                {"name": "database", "catalogRef": "aws-rds-mysql:1.0.0", "engine": "terraform", "config": {}},
                {"name": "app", "catalogRef": "k8s-deployment:2.1.0", "engine": "helm",
                 "config": {"values": {"db": "${{ resources.database.outputs.endpoint }}"}}},
            ],
            "dependencies": [{"from": "database", "to": "app"}],
        }));
        let (workflow, json) = deployment.compile(|_| true).unwrap();
        assert_eq!(json["steps"][1]["needs"], json!(["database"]));
        assert_eq!(workflow.dag.waves(), [vec!["database"], vec!["app"]]);
        let app = workflow.step("app").unwrap();
        assert_eq!(app.executor, "helm");
        assert_eq!(app.spec["action"], "apply");
        assert_eq!(app.rollback.as_ref().unwrap().spec["action"], "destroy");
        assert!(workflow.rollback);
    }

    #[test]
    fn every_problem_is_listed_with_the_deployments_own_pointers() {
        let deployment = request(json!({
            "id": "bad id", "composer": "", "environment": "prod",
            "resources": [
                {"name": "a", "catalogRef": "x:1", "engine": "ansible"},
                {"name": "b", "catalogRef": "", "engine": "terraform"},
                {"name": "c", "catalogRef": "y:1", "engine": "pulumi"},
            ],
            "dependencies": [{"from": "a", "to": "nope"}],
        }));
        let errors = deployment.compile(|engine| engine != "pulumi").unwrap_err();
        let pointers: Vec<&str> = errors.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/id",
                "/composer",
                "/resources/0/engine",
                "/resources/1/catalogRef",
                "/resources/2/engine",
                "/dependencies/0/to"
            ]
        );
        assert!(errors.0[4].message.contains("disabled"));

        let cyclic = request(json!({
            "id": "x", "composer": "t", "environment": "e",
            "resources": [
                {"name": "a", "catalogRef": "x:1", "engine": "helm"},
                {"name": "a", "catalogRef": "x:1", "engine": "helm"},
                {"name": "b", "catalogRef": "x:1", "engine": "helm", "config": {"v": "${{ resources.zzz.outputs.x }}"}},
                {"name": "c", "catalogRef": "x:1", "engine": "helm"},
            ],
            "dependencies": [{"from": "b", "to": "c"}, {"from": "c", "to": "b"}],
        }));
        let errors = cyclic.compile(|_| true).unwrap_err();
        let messages: Vec<String> = errors
            .0
            .iter()
            .map(|e| format!("{} {}", e.pointer, e.message))
            .collect();
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("/resources/1/name duplicate step name `a`")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m == "/dependencies cycle: b -> c -> b"),
            "{messages:?}"
        );
    }
}

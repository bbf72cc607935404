//! `crossplane`: the resource's config is a Crossplane claim (`apiVersion`, `kind`, `spec`),
//! applied through the Kubernetes API with `kubectl` (server-side apply), waited on until its
//! `Ready` condition holds, and deleted on rollback. The claim is named `<deployment>-<resource>`
//! in the namespace `metadata.namespace` (default: the environment) unless the config names it.
//! `kubectl` talks to the cluster its kubeconfig names on the agent.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::{Engine, EngineError, Resource, Tools, parse_json, write_json};

/// The `crossplane` engine.
pub struct Crossplane;

/// How long a claim may take to become ready, unless the config says `timeout`.
const READY_TIMEOUT: &str = "300s";

/// Writes the claim (name, namespace and Orchion's labels filled in) as `claim.json`.
fn write_claim(resource: &Resource) -> Result<(), EngineError> {
    let spec = &resource.spec;
    let mut claim = spec.config.get("claim").unwrap_or(&spec.config).clone();
    let Value::Object(fields) = &mut claim else {
        return Err(EngineError(
            "config must be a Crossplane claim (an object with apiVersion, kind and spec)".into(),
        ));
    };
    for required in ["apiVersion", "kind"] {
        if !fields.get(required).is_some_and(Value::is_string) {
            return Err(EngineError(format!("the claim has no {required}")));
        }
    }
    let metadata = fields
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| EngineError("the claim's metadata is not an object".into()))?;
    metadata.entry("name").or_insert_with(|| {
        json!(orchion_executor::dns_label(
            &[&spec.deployment, &spec.resource],
            63
        ))
    });
    metadata
        .entry("namespace")
        .or_insert_with(|| json!(orchion_executor::dns_label(&[&spec.environment], 63)));
    let labels = metadata
        .entry("labels")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| EngineError("the claim's labels are not an object".into()))?;
    labels.insert(
        "orchion.io/deployment".into(),
        json!(orchion_executor::dns_label(&[&spec.deployment], 63)),
    );
    labels.insert(
        "orchion.io/resource".into(),
        json!(orchion_executor::dns_label(&[&spec.resource], 63)),
    );
    write_json(&resource.dir.join("claim.json"), &claim)
}

#[async_trait]
impl Engine for Crossplane {
    fn name(&self) -> &'static str {
        "crossplane"
    }

    fn tool(&self) -> &'static str {
        "kubectl"
    }

    async fn apply(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        write_claim(resource)?;
        tools
            .run(
                &resource.dir,
                "kubectl",
                &[
                    "apply",
                    "--server-side",
                    "--field-manager=orchion",
                    "-f",
                    "claim.json",
                    "-o",
                    "json",
                ],
            )
            .await?;
        let timeout = format!(
            "--timeout={}",
            resource.spec.config["timeout"]
                .as_str()
                .unwrap_or(READY_TIMEOUT)
        );
        tools
            .run(
                &resource.dir,
                "kubectl",
                &[
                    "wait",
                    "--for=condition=Ready",
                    &timeout,
                    "-f",
                    "claim.json",
                ],
            )
            .await
            .map(drop)
    }

    async fn outputs(
        &self,
        resource: &Resource,
        tools: &Tools,
    ) -> Result<Map<String, Value>, EngineError> {
        let text = tools
            .run(
                &resource.dir,
                "kubectl",
                &["get", "-f", "claim.json", "-o", "json"],
            )
            .await?;
        let claim = parse_json("kubectl get", &text)?;
        // The claim's status fields, except its conditions; connection details stay in the
        // secret the claim writes (never read here).
        let mut outputs: Map<String, Value> = claim["status"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "conditions")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        outputs.insert("name".into(), claim["metadata"]["name"].clone());
        outputs.insert("namespace".into(), claim["metadata"]["namespace"].clone());
        outputs.insert("kind".into(), claim["kind"].clone());
        Ok(outputs)
    }

    async fn destroy(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        write_claim(resource)?;
        tools
            .run(
                &resource.dir,
                "kubectl",
                &[
                    "delete",
                    "-f",
                    "claim.json",
                    "--wait=true",
                    "--ignore-not-found=true",
                ],
            )
            .await
            .map(drop)
    }
}

//! `pulumi`: the resource's config is a Pulumi YAML program (`resources`, `variables`,
//! `outputs`), written as `Pulumi.yaml` in the resource's working dir; the stack is the
//! environment. State stays in the working dir (`file://` backend) unless `PULUMI_BACKEND_URL`
//! is set on the agent.

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::{Engine, EngineError, Resource, Tools, parse_json, write_json};

/// The `pulumi` engine.
pub struct Pulumi;

/// The environment every `pulumi` command gets: the agent's `PULUMI_BACKEND_URL`, or a local
/// state dir when it has none, and the empty passphrase a local stack's secrets need.
fn pulumi_env(resource: &Resource) -> Result<Vec<(&'static str, String)>, EngineError> {
    let mut env = vec![
        ("PULUMI_SKIP_UPDATE_CHECK", "true".to_owned()),
        ("PULUMI_CONFIG_PASSPHRASE", String::new()),
    ];
    let backend = match std::env::var("PULUMI_BACKEND_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let state = resource.dir.join(".state");
            std::fs::create_dir_all(&state)
                .map_err(|e| EngineError(format!("cannot create {}: {e}", state.display())))?;
            format!("file://{}", state.display())
        }
    };
    env.push(("PULUMI_BACKEND_URL", backend));
    Ok(env)
}

fn stack(resource: &Resource) -> String {
    orchion_executor::dns_label(&[&resource.spec.environment], 100)
}

impl Pulumi {
    /// Runs `pulumi args… --stack <environment> --non-interactive`.
    async fn pulumi(
        &self,
        resource: &Resource,
        tools: &Tools,
        args: &[&str],
    ) -> Result<String, EngineError> {
        let stack = stack(resource);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--stack", &stack, "--non-interactive"]);
        tools
            .run_with(&resource.dir, "pulumi", &all, &pulumi_env(resource)?)
            .await
    }

    /// Writes the program and selects (or creates) the stack.
    async fn prepare(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        let Value::Object(program) = &resource.spec.config else {
            return Err(EngineError(
                "config must be a Pulumi YAML program (an object with resources, outputs, …)"
                    .into(),
            ));
        };
        let mut project = program.clone();
        project.insert(
            "name".into(),
            Value::String(orchion_executor::dns_label(
                &[&resource.spec.deployment, &resource.spec.resource],
                100,
            )),
        );
        project.insert("runtime".into(), Value::String("yaml".into()));
        // JSON is YAML: Pulumi reads this file as its project.
        write_json(&resource.dir.join("Pulumi.yaml"), &Value::Object(project))?;
        tools
            .run_with(
                &resource.dir,
                "pulumi",
                &[
                    "stack",
                    "select",
                    "--create",
                    &stack(resource),
                    "--non-interactive",
                ],
                &pulumi_env(resource)?,
            )
            .await
            .map(drop)
    }
}

#[async_trait]
impl Engine for Pulumi {
    fn name(&self) -> &'static str {
        "pulumi"
    }

    fn tool(&self) -> &'static str {
        "pulumi"
    }

    async fn plan(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        self.prepare(resource, tools).await?;
        self.pulumi(resource, tools, &["preview"]).await.map(drop)
    }

    async fn apply(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        self.pulumi(resource, tools, &["up", "--yes", "--json"])
            .await
            .map(drop)
    }

    async fn outputs(
        &self,
        resource: &Resource,
        tools: &Tools,
    ) -> Result<Map<String, Value>, EngineError> {
        let text = self
            .pulumi(resource, tools, &["stack", "output", "--json"])
            .await?;
        match parse_json("pulumi stack output", &text)? {
            // Secret outputs print as "[secret]" without --show-secrets; they stay that way.
            Value::Object(outputs) => Ok(outputs),
            _ => Err(EngineError(
                "pulumi stack output --json printed something other than an object".into(),
            )),
        }
    }

    async fn destroy(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        self.prepare(resource, tools).await?;
        self.pulumi(resource, tools, &["destroy", "--yes"])
            .await
            .map(drop)
    }
}

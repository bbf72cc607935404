//! `terraform`: the resource's config is a Terraform JSON configuration, written to
//! `main.tf.json` in the resource's working dir, where the state stays between apply and
//! destroy (configure a remote backend in the config to share state between agents).

use std::path::Path;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::{Engine, EngineError, Resource, Tools, parse_json, write_json};

/// The `terraform` engine.
pub struct Terraform;

const AUTOMATION: [(&str, &str); 2] = [("TF_IN_AUTOMATION", "1"), ("TF_INPUT", "0")];

impl Terraform {
    async fn terraform(
        &self,
        tools: &Tools,
        dir: &Path,
        args: &[&str],
    ) -> Result<String, EngineError> {
        let env: Vec<(&str, String)> = AUTOMATION
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect();
        tools.run_with(dir, "terraform", args, &env).await
    }

    /// Writes the configuration and initializes the working dir.
    async fn init(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        if !resource.spec.config.is_object() {
            return Err(EngineError(
                "config must be a Terraform JSON configuration (an object with resource, output, …)"
                    .into(),
            ));
        }
        write_json(&resource.dir.join("main.tf.json"), &resource.spec.config)?;
        self.terraform(tools, &resource.dir, &["init", "-input=false", "-no-color"])
            .await
            .map(drop)
    }
}

#[async_trait]
impl Engine for Terraform {
    fn name(&self) -> &'static str {
        "terraform"
    }

    fn tool(&self) -> &'static str {
        "terraform"
    }

    async fn plan(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        self.init(resource, tools).await?;
        self.terraform(
            tools,
            &resource.dir,
            &["plan", "-input=false", "-no-color", "-out=tfplan"],
        )
        .await
        .map(drop)
    }

    async fn apply(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        self.terraform(
            tools,
            &resource.dir,
            &["apply", "-input=false", "-no-color", "-json", "tfplan"],
        )
        .await
        .map(drop)
    }

    async fn outputs(
        &self,
        resource: &Resource,
        tools: &Tools,
    ) -> Result<Map<String, Value>, EngineError> {
        let text = self
            .terraform(tools, &resource.dir, &["output", "-json", "-no-color"])
            .await?;
        let Value::Object(outputs) = parse_json("terraform output", &text)? else {
            return Err(EngineError(
                "terraform output -json printed something other than an object".into(),
            ));
        };
        Ok(outputs
            .into_iter()
            .map(|(name, output)| {
                let value = if output["sensitive"] == Value::Bool(true) {
                    Value::String("(sensitive)".into())
                } else {
                    output.get("value").cloned().unwrap_or(Value::Null)
                };
                (name, value)
            })
            .collect())
    }

    async fn destroy(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        self.init(resource, tools).await?;
        self.terraform(
            tools,
            &resource.dir,
            &["destroy", "-auto-approve", "-input=false", "-no-color"],
        )
        .await
        .map(drop)
    }
}

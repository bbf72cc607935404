//! `helm`: the catalog entry names the chart and its version (`chart:version`, or
//! `config.chart`); `config.values` are the release's values; the release is
//! `<deployment>-<resource>` in `config.namespace` (default: the environment).

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::{Engine, EngineError, Resource, Tools, catalog_parts, parse_json, write_json};

/// The `helm` engine.
pub struct Helm;

struct Release {
    name: String,
    namespace: String,
    chart: String,
    version: Option<String>,
}

fn release(resource: &Resource) -> Release {
    let spec = &resource.spec;
    let (chart, version) = catalog_parts(&spec.catalog_ref);
    Release {
        name: orchion_executor::dns_label(&[&spec.deployment, &spec.resource], 53),
        namespace: spec.config["namespace"].as_str().map_or_else(
            || orchion_executor::dns_label(&[&spec.environment], 63),
            str::to_owned,
        ),
        chart: spec.config["chart"].as_str().unwrap_or(chart).to_owned(),
        version: spec.config["version"]
            .as_str()
            .or(version)
            .map(str::to_owned),
    }
}

#[async_trait]
impl Engine for Helm {
    fn name(&self) -> &'static str {
        "helm"
    }

    fn tool(&self) -> &'static str {
        "helm"
    }

    async fn apply(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        let release = release(resource);
        let values = resource.dir.join("values.json");
        write_json(
            &values,
            resource.spec.config.get("values").unwrap_or(&json!({})),
        )?;
        let values = values.display().to_string();
        let mut args = vec![
            "upgrade",
            "--install",
            "--namespace",
            &release.namespace,
            "--create-namespace",
            "--values",
            &values,
            "--wait",
            "-o",
            "json",
        ];
        if let Some(version) = &release.version {
            args.extend(["--version", version]);
        }
        // Nothing after `--` is a flag, whatever the deployment named.
        args.extend(["--", &release.name, &release.chart]);
        let text = tools.run(&resource.dir, "helm", &args).await?;
        // Kept for outputs: the release as helm reported it.
        std::fs::write(resource.dir.join("release.json"), text)
            .map_err(|e| EngineError(format!("cannot keep helm's answer: {e}")))
    }

    async fn outputs(
        &self,
        resource: &Resource,
        _tools: &Tools,
    ) -> Result<Map<String, Value>, EngineError> {
        let text = std::fs::read_to_string(resource.dir.join("release.json"))
            .map_err(|e| EngineError(format!("helm's answer is gone: {e}")))?;
        let answer = parse_json("helm upgrade", &text)?;
        let mut outputs = Map::new();
        outputs.insert("release".into(), answer["name"].clone());
        outputs.insert("namespace".into(), answer["namespace"].clone());
        outputs.insert("revision".into(), answer["version"].clone());
        outputs.insert("status".into(), answer["info"]["status"].clone());
        Ok(outputs)
    }

    async fn destroy(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError> {
        let release = release(resource);
        tools
            .run(
                &resource.dir,
                "helm",
                &[
                    "uninstall",
                    "--namespace",
                    &release.namespace,
                    "--wait",
                    "--",
                    &release.name,
                ],
            )
            .await
            .map(drop)
    }
}

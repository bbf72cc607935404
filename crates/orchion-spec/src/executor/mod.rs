//! Each executor's spec — what a job or step says its executor should do — and its checks.
//! The API checks a job against these when it arrives ([`validate`]) and the agent runs the
//! same types (`orchion-executor`, `orchion-kubernetes`, `orchion-engines`): one definition,
//! so what is accepted is what can run. Pure: no process, no network.
//!
//! - `shell` ([`ShellSpec`]), `http` ([`HttpSpec`]), `noop` ([`NoopSpec`]);
//! - `kubernetes` ([`KubernetesSpec`]: image references, quantities, names as the API server
//!   checks them);
//! - `terraform`, `helm`, `pulumi`, `crossplane` ([`EngineSpec`]).

mod engine;
mod http;
mod kubernetes;
mod kubernetes_allow;
mod shell;

use orchion_domain::{FieldError, ValidationErrors};
use serde::de::DeserializeOwned;

pub use self::{
    engine::{ENGINES, EngineAction, EngineSpec},
    http::HttpSpec,
    kubernetes::{
        KubernetesSpec, Quantities, Resources, SecretKeyRef, check_image, check_label_name,
        dns_label, parse_quantity,
    },
    kubernetes_allow::{KubernetesNames, KubernetesPolicy},
    shell::{SCRIPT_TEMPLATE_REFUSED, ShellSpec, script_templates},
};

/// A job, schedule or workflow type naming a deployment engine as its executor: refused (at
/// `{prefix}/executor`), since an engine runs only the resources a deployment gives it, in a
/// working directory of that deployment's own.
pub fn engine_refused(executor: &str, prefix: &str) -> Option<FieldError> {
    ENGINES.contains(&executor).then(|| FieldError {
        pointer: format!("{prefix}/executor"),
        message: format!(
            "executor `{executor}` runs only the resources of a deployment (POST /api/v1/deployments); a job or workflow step cannot name it"
        ),
    })
}

/// Where `spec` (of `executor`) splices a `${{ … }}` template into code a program runs (the
/// script of `sh -c`, `python -c`, `node -e`, …): each a problem at `{prefix}/spec/args/{i}`
/// saying to pass the value through `env`. Templates are checked when a definition is made,
/// never only when it runs.
pub fn refuse_script_templates(
    executor: &str,
    spec: &serde_json::Value,
    prefix: &str,
) -> Vec<FieldError> {
    if executor != "shell" {
        return Vec::new();
    }
    let (Some(command), Some(args)) = (spec["command"].as_str(), spec["args"].as_array()) else {
        return Vec::new();
    };
    script_templates(command, args)
        .into_iter()
        .map(|i| FieldError {
            pointer: format!("{prefix}/spec/args/{i}"),
            message: format!("`args[{i}]`: {SCRIPT_TEMPLATE_REFUSED}"),
        })
        .collect()
}

/// The executors Orchion has, by name: the built-in ones and the deployment engines.
pub const KNOWN: &[&str] = &[
    "shell",
    "http",
    "noop",
    "kubernetes",
    "terraform",
    "helm",
    "pulumi",
    "crossplane",
];

/// Checks a job's executor and spec, and returns the spec in canonical JSON. Every problem is
/// reported, with pointers under `/spec`. Secret references (`{"secret": "NAME"}`) stay
/// references where the executor takes them ([`crate::secret`]).
pub fn validate(executor: &str, spec: &serde_json::Value) -> Result<String, ValidationErrors> {
    let uses = crate::secret::secret_uses(executor, spec)?;
    if uses.is_empty() {
        return validate_plain(executor, spec);
    }
    let canonical = validate_plain(executor, &crate::secret::placeholders(executor, spec))?;
    let mut canonical: serde_json::Value =
        serde_json::from_str(&canonical).unwrap_or(serde_json::Value::Null);
    crate::secret::restore(&mut canonical, &uses);
    Ok(canonical.to_string())
}

fn validate_plain(executor: &str, spec: &serde_json::Value) -> Result<String, ValidationErrors> {
    match executor {
        "shell" => parse::<ShellSpec>(spec)
            .and_then(|s| s.check().map(|()| s))
            .map(|s| to_json(&s)),
        "http" => parse::<HttpSpec>(spec)
            .and_then(|s| s.check().map(|()| s))
            .map(|s| to_json(&s)),
        "noop" => parse::<NoopSpec>(spec).map(|s| to_json(&s)),
        "kubernetes" => parse::<KubernetesSpec>(spec)
            .and_then(|s| s.check().map(|()| s))
            .map(|s| to_json(&s)),
        engine if ENGINES.contains(&engine) => parse::<EngineSpec>(spec).map(|s| to_json(&s)),
        other => Err(ValidationErrors(vec![FieldError::new(
            "executor",
            format!(
                "unknown executor `{other}`: expected one of {}",
                KNOWN.join(", ")
            ),
        )])),
    }
}

/// The `noop` executor's spec: nothing, or the outputs it should produce.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<serde_json::Map<String, serde_json::Value>>,
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn parse<T: DeserializeOwned>(spec: &serde_json::Value) -> Result<T, ValidationErrors> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let pointer = format!("/spec{}", pointer_of(e.path(), &e.inner().to_string()));
        ValidationErrors(vec![FieldError {
            pointer,
            message: format!("spec: {}", e.into_inner()),
        }])
    })
}

/// The JSON pointer (RFC 6901) a deserialization error is about: its path (`steps[2].name` is
/// `/steps/2/name`), plus the field a "missing field" message names, since serde reports a
/// missing field at the object that should hold it. `""` for the whole document.
pub fn pointer_of(path: &serde_path_to_error::Path, message: &str) -> String {
    use serde_path_to_error::Segment;
    let escape = orchion_domain::pointer_escape;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } => pointer.push_str(&format!("/{}", escape(key))),
            Segment::Enum { variant } => pointer.push_str(&format!("/{}", escape(variant))),
            Segment::Unknown => {}
        }
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        pointer.push_str(&format!("/{}", escape(field)));
    }
    pointer
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_executors_are_named() {
        let err = validate("python", &json!({})).unwrap_err();
        assert_eq!(err.0[0].pointer, "/executor");
        assert!(err.0[0].message.contains("`python`"));
    }

    #[test]
    fn spec_problems_point_into_the_spec() {
        let err = validate("shell", &json!({"command": 5})).unwrap_err();
        assert_eq!(err.0[0].pointer, "/spec/command");
        let err = validate("shell", &json!({"command": "ls", "colour": 1})).unwrap_err();
        assert_eq!(err.0[0].pointer, "/spec/colour");
        let err = validate("shell", &json!({})).unwrap_err();
        assert_eq!(err.0[0].pointer, "/spec/command");
        let err = validate("shell", &json!({"command": "ls", "args": [["nested"]]})).unwrap_err();
        assert_eq!(err.0[0].pointer, "/spec/args/0");
    }

    #[test]
    fn scalar_args_and_env_values_count_as_text() {
        let spec = validate(
            "shell",
            &json!({"command": "sleep", "args": [3, true], "env": {"N": 2.5}}),
        )
        .unwrap();
        assert_eq!(
            spec,
            r#"{"command":"sleep","args":["3","true"],"env":{"N":"2.5"},"working_dir":null}"#
        );
    }

    #[test]
    fn an_http_body_is_text_or_json_not_both() {
        let spec = validate("http", &json!({"url": "http://x", "json": {"a": [1]}})).unwrap();
        assert!(spec.contains(r#""json":{"a":[1]}"#), "{spec}");
        let err =
            validate("http", &json!({"url": "http://x", "json": {}, "body": "x"})).unwrap_err();
        assert_eq!(err.0[0].pointer, "/spec/json");
    }

    #[test]
    fn noop_takes_an_empty_spec_only() {
        assert_eq!(validate("noop", &json!({})).unwrap(), "{}");
        assert_eq!(
            validate("noop", &json!({"x": 1})).unwrap_err().0[0].pointer,
            "/spec/x"
        );
    }
}

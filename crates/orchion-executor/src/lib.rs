//! Executors: what runs a task on an agent. One [`Executor`] trait, a [`Registry`] of the ones an
//! agent offers, and for each executor its spec type, which the server uses to validate a job at
//! the edge ([`validate`]) and the agent uses to run it — one definition, so what is accepted is
//! what can run.
//!
//! - `shell`: a process in its own process group; stdout and stderr stream line by line;
//!   cancellation is SIGTERM to the group, SIGKILL after a grace period.
//! - `http`: one HTTP request; the response body is the output.
//! - `noop`: succeeds at once, with the `outputs` its spec names; for smoke tests and
//!   benchmarks of Orchion's own overhead.
//! - `kubernetes`: one container as a Kubernetes Job; its spec ([`KubernetesSpec`]) is checked
//!   here, and it runs from `orchion-kubernetes`.
//! - `terraform`, `helm`, `pulumi`, `crossplane`: deployment engines; their spec
//!   ([`EngineSpec`]) is checked here, and they run from `orchion-engines`.

mod engine;
mod http;
mod kubernetes;
mod shell;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use orchion_domain::{FieldError, ValidationErrors};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::{
    engine::{ENGINES, EngineAction, EngineSpec},
    http::HttpSpec,
    kubernetes::{
        KubernetesSpec, Quantities, Resources, SecretKeyRef, check_image, check_label_name,
        dns_label, parse_quantity,
    },
    shell::{ShellSpec, run_command},
};

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

/// One line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// `stdout`, `stderr` or `system`.
    pub stream: &'static str,
    pub line: String,
    pub at: time::OffsetDateTime,
}

/// The longest line kept; longer lines are cut and marked.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// How much of a process's stdout is kept as the task's output (its tail).
pub const MAX_OUTPUT_TAIL: usize = 64 * 1024;

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded {
        output: Option<String>,
        /// Named results a workflow's later steps can read, a JSON object.
        outputs: Option<String>,
    },
    Failed {
        exit_code: Option<i32>,
        error: String,
        output: Option<String>,
    },
    Cancelled,
    TimedOut,
}

/// What an execution gets besides its spec.
#[derive(Debug, Clone)]
pub struct Context {
    /// Where output lines go (bounded: a slow consumer slows the task, never grows memory).
    pub output: mpsc::Sender<OutputLine>,
    /// Cancelled when the task must stop.
    pub cancel: CancellationToken,
    /// How long the execution may take (`timeouts.start_to_close`).
    pub deadline: Option<Duration>,
    /// Environment variables Orchion adds (e.g. `ORCHION_JOB_ID`, `TRACEPARENT`).
    pub env: BTreeMap<String, String>,
    /// After a cancel or deadline, how long before the work is killed outright.
    pub kill_grace: Duration,
}

/// Something that runs a task.
#[async_trait]
pub trait Executor: Send + Sync {
    /// The name jobs use to pick it.
    fn name(&self) -> &'static str;

    /// Runs one task described by `spec` (JSON, already validated by [`validate`]).
    async fn run(&self, spec: &str, context: Context) -> Outcome;
}

/// The executors an agent offers.
#[derive(Clone, Default)]
pub struct Registry {
    executors: BTreeMap<&'static str, Arc<dyn Executor>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Registry").field(&self.names()).finish()
    }
}

impl Registry {
    /// Every executor Orchion has.
    pub fn all() -> Self {
        let mut registry = Self::default();
        registry.add(Arc::new(shell::Shell));
        registry.add(Arc::new(http::Http::new()));
        registry.add(Arc::new(Noop));
        registry
    }

    pub fn add(&mut self, executor: Arc<dyn Executor>) {
        self.executors.insert(executor.name(), executor);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Executor>> {
        self.executors.get(name).cloned()
    }

    /// The names offered, sorted.
    pub fn names(&self) -> Vec<String> {
        self.executors.keys().map(|k| (*k).to_owned()).collect()
    }
}

/// Checks a job's executor and spec, and returns the spec in canonical JSON. Every problem is
/// reported, with pointers under `/spec`.
pub fn validate(executor: &str, spec: &serde_json::Value) -> Result<String, ValidationErrors> {
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

struct Noop;

#[async_trait]
impl Executor for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }

    async fn run(&self, spec: &str, _context: Context) -> Outcome {
        let outputs = parse_checked::<NoopSpec>(spec)
            .ok()
            .and_then(|s| s.outputs)
            .map(|o| serde_json::Value::Object(o).to_string());
        Outcome::Succeeded {
            output: None,
            outputs,
        }
    }
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
    let escape = |s: &str| s.replace('~', "~0").replace('/', "~1");
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

/// Parses a spec the server validated (the agent side).
pub(crate) fn parse_checked<T: DeserializeOwned>(spec: &str) -> Result<T, String> {
    serde_json::from_str(spec).map_err(|e| format!("the job's spec cannot be read: {e}"))
}

/// Cuts a line to [`MAX_LINE_BYTES`] on a character boundary, marking the cut.
pub fn cut_line(mut line: String) -> String {
    const MARK: &str = " [… line cut by orchion]";
    if line.len() <= MAX_LINE_BYTES {
        return line;
    }
    let mut cut = MAX_LINE_BYTES - MARK.len();
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    line.truncate(cut);
    line.push_str(MARK);
    line
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

    #[test]
    fn long_lines_are_cut_and_marked() {
        let line = cut_line("x".repeat(MAX_LINE_BYTES * 2));
        assert!(line.len() <= MAX_LINE_BYTES);
        assert!(line.ends_with("cut by orchion]"));
    }
}

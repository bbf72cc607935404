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

mod egress;
pub mod fence;
mod http;
mod mask;
mod shell;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The specs are `orchion-spec`'s, so the server checks jobs without compiling the runtimes.
pub use orchion_spec::executor::{
    ENGINES, EngineAction, EngineSpec, HttpSpec, KNOWN, KubernetesSpec, NoopSpec, Quantities,
    Resources, SecretKeyRef, ShellSpec, check_image, check_label_name, dns_label, parse_quantity,
    pointer_of, validate,
};

pub use crate::{
    egress::Egress,
    mask::{MASK, Masker},
    shell::run_command,
};

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
/// The most a task's named outputs may hold, as JSON (what the server accepts).
pub const MAX_OUTPUTS_BYTES: usize = 1024 * 1024;

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
    /// Cancelled (with `cancel`) when the agent itself is going away: work that runs outside
    /// the agent (a Kubernetes Job) is left running for the next attempt to adopt, where a
    /// cancel alone would end it.
    pub leaving: CancellationToken,
    /// How long the execution may take (`timeouts.start_to_close`).
    pub deadline: Option<Duration>,
    /// What a command's environment starts from, before its spec's `env` (which may override
    /// it): [`inherited_env`]. Nothing else of the agent's (or, under `orchion dev`, the
    /// server's) environment reaches a task.
    pub inherited: Arc<BTreeMap<String, String>>,
    /// Environment variables Orchion adds (e.g. `ORCHION_JOB_ID`, `TRACEPARENT`), set last.
    pub env: BTreeMap<String, String>,
    /// Where the task's HTTP requests may go besides public addresses.
    pub egress: Egress,
    /// After a cancel or deadline, how long before the work is killed outright.
    pub kill_grace: Duration,
    /// Until when the attempt may run, kept current by the agent as it renews the lease; a
    /// command's process group is killed by its fence (`fence.rs`) when it passes. `None`
    /// runs without a fence.
    pub fence: Option<tokio::sync::watch::Receiver<std::time::Instant>>,
}

/// The variables of the agent's own environment every task gets: enough for a command to find
/// programs, its home and its language.
pub const INHERITED: [&str; 3] = ["PATH", "HOME", "LANG"];

/// `PATH` when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What tasks start from: [`INHERITED`] and the variables named in `names` (an agent's
/// `--inherit-env`), each with the agent's value where it has one; `PATH` defaults to the
/// usual system directories. A value that is not UTF-8 is left out.
pub fn inherited_env(names: &[String]) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = INHERITED
        .iter()
        .copied()
        .map(str::to_owned)
        .chain(names.iter().cloned())
        .filter_map(|name| std::env::var(&name).ok().map(|value| (name, value)))
        .collect();
    env.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    env
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
        registry.add(Arc::new(http::Http));
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
    use super::*;

    #[test]
    fn long_lines_are_cut_and_marked() {
        let line = cut_line("x".repeat(MAX_LINE_BYTES * 2));
        assert!(line.len() <= MAX_LINE_BYTES);
        assert!(line.ends_with("cut by orchion]"));
    }
}

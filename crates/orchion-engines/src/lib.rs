//! Deployment engines: what applies and destroys one resource of a deployment. One [`Engine`]
//! trait (plan, apply, outputs, destroy); [`EngineExecutor`] runs an engine as an agent
//! executor of the same name, so a deployment's resources are tasks claimed by the agents that
//! offer the engine — those with its tool installed ([`available`]).
//!
//! - `terraform`: a working dir per resource holding `main.tf.json` (the resource's config);
//!   `init`, `plan -out`, `apply -json`, `output -json`, `destroy`; `TF_IN_AUTOMATION=1`.
//! - `helm`: `upgrade --install --wait -o json` of the catalog entry's chart, `uninstall`.
//! - `pulumi`: a YAML program (the config) per resource, a stack per environment;
//!   `up --yes --json`, `stack output --json`, `destroy`.
//! - `crossplane`: a claim (the config) applied through the Kubernetes API with `kubectl`
//!   (server-side apply), waited on until `Ready`, deleted on rollback.
//!
//! Every tool's lines stream into the task's log. Outputs a tool marks sensitive are replaced
//! by `"(sensitive)"`: they never reach the server.

mod crossplane;
mod helm;
mod pulumi;
mod terraform;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use orchion_executor::{
    Context, EngineAction, EngineSpec, Executor, Outcome, OutputLine, ShellSpec,
};
use serde_json::{Map, Value};

pub use crate::{crossplane::Crossplane, helm::Helm, pulumi::Pulumi, terraform::Terraform};

/// How an engine step went wrong: what the tool said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError(pub String);

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The resource an engine works on, and where.
#[derive(Debug, Clone)]
pub struct Resource {
    pub spec: EngineSpec,
    /// The resource's own working directory, kept between apply and destroy.
    pub dir: PathBuf,
}

/// A deployment engine.
#[async_trait]
pub trait Engine: Send + Sync {
    /// The engine's name, which is also the executor's.
    fn name(&self) -> &'static str;
    /// The command-line tool it drives.
    fn tool(&self) -> &'static str;
    /// Checks what applying would do; the default does nothing.
    async fn plan(&self, _resource: &Resource, _tools: &Tools) -> Result<(), EngineError> {
        Ok(())
    }
    /// Creates or updates the resource.
    async fn apply(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError>;
    /// What the applied resource exposes (endpoints, ids, …).
    async fn outputs(
        &self,
        resource: &Resource,
        tools: &Tools,
    ) -> Result<Map<String, Value>, EngineError>;
    /// Removes the resource.
    async fn destroy(&self, resource: &Resource, tools: &Tools) -> Result<(), EngineError>;
}

/// Runs an engine's tool for one task: each command through the shell executor's machinery,
/// with the task's context (log lines, cancellation, deadline).
pub struct Tools {
    context: Context,
    env: BTreeMap<String, String>,
}

impl Tools {
    /// Runs `program args…` in `dir`; returns its stdout (tail) or what went wrong.
    pub async fn run(
        &self,
        dir: &Path,
        program: &str,
        args: &[&str],
    ) -> Result<String, EngineError> {
        self.run_with(dir, program, args, &[]).await
    }

    /// [`Tools::run`] with variables added to the environment.
    pub async fn run_with(
        &self,
        dir: &Path,
        program: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<String, EngineError> {
        let mut vars = self.env.clone();
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let spec = ShellSpec {
            command: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vars,
            working_dir: Some(dir.display().to_string()),
        };
        // Lines go on to the task's log; the last stderr lines also explain a failure.
        let (lines, mut seen) = tokio::sync::mpsc::channel::<OutputLine>(1024);
        let log = self.context.output.clone();
        let keeper = tokio::spawn(async move {
            let mut stderr: std::collections::VecDeque<String> = std::collections::VecDeque::new();
            while let Some(line) = seen.recv().await {
                if line.stream == "stderr" {
                    if stderr.len() == ERROR_LINES {
                        stderr.pop_front();
                    }
                    stderr.push_back(line.line.clone());
                }
                let _ = log.send(line).await;
            }
            stderr.into_iter().collect::<Vec<_>>().join("\n")
        });
        let context = Context {
            output: lines,
            ..self.context.clone()
        };
        let outcome = orchion_executor::run_command(&spec, context).await;
        let stderr = keeper.await.unwrap_or_default();
        let what = format!("`{program} {}`", args.first().copied().unwrap_or_default());
        match outcome {
            Outcome::Succeeded { output, .. } => Ok(output.unwrap_or_default()),
            Outcome::Failed { error, .. } if stderr.is_empty() => {
                Err(EngineError(format!("{what} failed: {error}")))
            }
            Outcome::Failed { error, .. } => {
                Err(EngineError(format!("{what} failed ({error}): {stderr}")))
            }
            Outcome::Cancelled => Err(EngineError(format!("{what} was cancelled"))),
            Outcome::TimedOut => Err(EngineError(format!(
                "{what} ran past the step's time limit"
            ))),
        }
    }
}

/// How many of a failed tool's last stderr lines its error quotes.
const ERROR_LINES: usize = 5;

/// Writes `value` as pretty JSON to `path`.
pub(crate) fn write_json(path: &Path, value: &Value) -> Result<(), EngineError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    std::fs::write(path, text)
        .map_err(|e| EngineError(format!("cannot write {}: {e}", path.display())))
}

/// Parses a tool's JSON output.
pub(crate) fn parse_json(tool: &str, text: &str) -> Result<Value, EngineError> {
    serde_json::from_str(text.trim())
        .map_err(|e| EngineError(format!("{tool} printed output that is not JSON: {e}")))
}

/// `name:version` → (`name`, `Some(version)`).
pub(crate) fn catalog_parts(catalog_ref: &str) -> (&str, Option<&str>) {
    match catalog_ref.rsplit_once(':') {
        Some((name, version)) if !version.is_empty() => (name, Some(version)),
        _ => (catalog_ref, None),
    }
}

/// An engine as an executor: parses the [`EngineSpec`], prepares the resource's working dir
/// under `root`, and applies (plan, apply, outputs) or destroys.
pub struct EngineExecutor {
    engine: Arc<dyn Engine>,
    root: PathBuf,
}

impl EngineExecutor {
    /// An executor for `engine` working under `root` (made absolute: tools run in the
    /// resource's own directory).
    pub fn new(engine: Arc<dyn Engine>, root: PathBuf) -> Self {
        let root = std::path::absolute(&root).unwrap_or(root);
        Self { engine, root }
    }
}

#[async_trait]
impl Executor for EngineExecutor {
    fn name(&self) -> &'static str {
        self.engine.name()
    }

    async fn run(&self, spec: &str, context: Context) -> Outcome {
        let failed = |error: String| Outcome::Failed {
            exit_code: None,
            error,
            output: None,
        };
        let spec: EngineSpec = match serde_json::from_str(spec) {
            Ok(spec) => spec,
            Err(e) => return failed(format!("the engine spec cannot be read: {e}")),
        };
        let dir = working_dir(&self.root, self.engine.name(), &spec);
        if let Err(e) = prepare_dir(&self.root, self.engine.name(), &spec, &dir) {
            return failed(format!("cannot create {}: {e}", dir.display()));
        }
        let resource = Resource { spec, dir };
        let tools = Tools {
            env: context.env.clone(),
            context,
        };
        let engine = &self.engine;
        let result = match resource.spec.action {
            EngineAction::Apply => async {
                engine.plan(&resource, &tools).await?;
                engine.apply(&resource, &tools).await?;
                engine.outputs(&resource, &tools).await
            }
            .await
            .map(Some),
            EngineAction::Destroy => engine.destroy(&resource, &tools).await.map(|()| None),
        };
        match result {
            Ok(outputs) => Outcome::Succeeded {
                output: None,
                outputs: outputs.map(|o| Value::Object(o).to_string()),
            },
            Err(e) => failed(e.0),
        }
    }
}

/// One path component that only `value` can give: letters, digits and `-` as they are, every
/// other byte (and upper case, and `%`) as `%XX`, so no two values share a component; a value
/// whose encoding would be long is named by its SHA-256 instead, under another prefix.
fn component(value: &str) -> String {
    use std::fmt::Write as _;
    let mut encoded = String::with_capacity(value.len() + 2);
    encoded.push_str("n-");
    for byte in value.bytes() {
        if byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    if encoded.len() <= 120 {
        return encoded;
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(value.as_bytes());
    let mut hashed = String::from("h-");
    for byte in digest {
        let _ = write!(hashed, "{byte:02x}");
    }
    hashed
}

/// The resource's own working directory: `<root>/<engine>/<composer>/<environment>/
/// <deployment>/<resource>`, each part [`component`]-encoded, so two distinct deployments (or
/// resources) never share one, and tools of two deployments never run in one directory.
fn working_dir(root: &Path, engine: &str, spec: &EngineSpec) -> PathBuf {
    [
        &spec.composer,
        &spec.environment,
        &spec.deployment,
        &spec.resource,
    ]
    .into_iter()
    .fold(root.join(engine), |dir, part| dir.join(component(part)))
}

/// Makes `dir`, moving into it the directory an earlier version used for this resource
/// (`<root>/<engine>/<deployment>/<resource>` in DNS-label form), so its state is kept.
fn prepare_dir(root: &Path, engine: &str, spec: &EngineSpec, dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        let legacy = root
            .join(engine)
            .join(orchion_executor::dns_label(&[&spec.deployment], 200))
            .join(orchion_executor::dns_label(&[&spec.resource], 100));
        if legacy.is_dir() {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if std::fs::rename(&legacy, dir).is_ok() {
                tracing::info!(from = %legacy.display(), to = %dir.display(), "moved a resource's working directory to its own path");
            }
        }
    }
    std::fs::create_dir_all(dir)
}

/// Every engine Orchion has.
pub fn all() -> Vec<Arc<dyn Engine>> {
    vec![
        Arc::new(Terraform),
        Arc::new(Helm),
        Arc::new(Pulumi),
        Arc::new(Crossplane),
    ]
}

/// The engines whose tool is on `PATH` (as given), so this agent can offer them.
pub fn available(path: Option<&std::ffi::OsStr>) -> Vec<Arc<dyn Engine>> {
    all()
        .into_iter()
        .filter(|engine| {
            path.is_some_and(|path| {
                std::env::split_paths(path).any(|dir| is_executable(&dir.join(engine.tool())))
            })
        })
        .collect()
}

/// Every executor an agent can offer: the built-in ones, and each engine whose tool is on this
/// process's `PATH`, working under `root` (a directory per engine, deployment and resource).
pub fn executors(root: &Path) -> orchion_executor::Registry {
    let mut registry = orchion_executor::Registry::all();
    for engine in available(std::env::var_os("PATH").as_deref()) {
        tracing::info!(
            engine = engine.name(),
            "offering a deployment engine: its tool is installed"
        );
        registry.add(Arc::new(EngineExecutor::new(engine, root.to_owned())));
    }
    registry
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(composer: &str, environment: &str, deployment: &str, resource: &str) -> EngineSpec {
        EngineSpec {
            action: EngineAction::Apply,
            deployment: deployment.into(),
            composer: composer.into(),
            environment: environment.into(),
            resource: resource.into(),
            catalog_ref: "x:1".into(),
            config: Value::Null,
        }
    }

    #[test]
    fn distinct_deployments_never_share_a_working_directory() {
        let root = Path::new("/var/engines");
        let dirs: Vec<PathBuf> = [
            spec("team", "prod", "web-v1", "db"),
            spec("team", "prod", "web_v1", "db"),
            spec("team", "prod", "Web-v1", "db"),
            spec("team", "prod", "web.v1", "db"),
            spec("other", "prod", "web-v1", "db"),
            spec("team", "staging", "web-v1", "db"),
            spec("team", "prod", "web-v1", "db2"),
            spec("team", "prod", &"a".repeat(100), "db"),
            spec("team", "prod", &format!("{}b", "a".repeat(99)), "db"),
        ]
        .iter()
        .map(|s| working_dir(root, "terraform", s))
        .collect();
        let distinct: std::collections::BTreeSet<&PathBuf> = dirs.iter().collect();
        assert_eq!(distinct.len(), dirs.len(), "{dirs:?}");
        for dir in &dirs {
            assert!(dir.starts_with("/var/engines/terraform"));
            assert!(dir.components().all(|c| c.as_os_str().len() <= 120));
        }
        assert_eq!(
            working_dir(root, "helm", &spec("t", "p", "web_v1", "db")),
            Path::new("/var/engines/helm/n-t/n-p/n-web%5Fv1/n-db")
        );
    }

    #[test]
    fn catalog_refs_and_tool_names() {
        assert_eq!(
            catalog_parts("k8s-deployment:2.1.0"),
            ("k8s-deployment", Some("2.1.0"))
        );
        assert_eq!(catalog_parts("plain"), ("plain", None));
        assert_eq!(
            orchion_executor::dns_label(&["Team_Alpha.web-app-v1", "database"], 53),
            "team-alpha-web-app-v1-database"
        );
        assert_eq!(orchion_executor::dns_label(&["x"; 40], 10), "x-x-x-x-x");
    }
}

//! The `kubernetes` executor: a task becomes a `batch/v1` Job ([`manifest`]), which is then
//! followed to its end ([`follow`]): the Job is watched (the watch resumes from its last
//! resource version when the connection drops), the pod is looked at for what the Job does not
//! say (`ImagePullBackOff`, `OOMKilled`, exit codes), and the pod's log streams into the task's
//! output. Cancelling the task deletes the Job with foreground propagation, so its pods go too.
//!
//! The server runs it (see `orchion`'s `kubernetes` module): the executor is offered by a local
//! agent that joins once the cluster answers [`probe`], so a server without Kubernetes access
//! still serves everything else and reports the executor unhealthy.

mod follow;
pub mod manifest;

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use kube::{Api, api::ListParams};
use orchion_executor::{Context, Executor, KubernetesSpec, Outcome, check_image, parse_quantity};

pub use kube::Client;

pub use crate::manifest::Attempt;

/// The executor's defaults and pacing, checked once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub namespace: String,
    pub image: String,
    pub ttl_seconds: u32,
    pub memory_request: String,
    pub memory_limit: String,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub image_pull_timeout: Duration,
    pub poll_interval: Duration,
}

impl Settings {
    /// The settings of `kubernetes.*`, or every problem with them, each naming its key.
    pub fn from_config(config: &orchion_config::KubernetesConfig) -> Result<Self, String> {
        let mut problems = Vec::new();
        if let Err(why) = orchion_executor::check_label_name(&config.namespace) {
            problems.push(format!(
                "kubernetes.namespace `{}` is not a namespace name: {why}",
                config.namespace
            ));
        }
        if let Err(why) = check_image(&config.image) {
            problems.push(format!("kubernetes.image `{}` {why}", config.image));
        }
        for (key, value) in [
            ("memory_request", &config.memory_request),
            ("memory_limit", &config.memory_limit),
            ("cpu_request", &config.cpu_request),
            ("cpu_limit", &config.cpu_limit),
        ] {
            if let Err(why) = parse_quantity(value) {
                problems.push(format!("kubernetes.{key} `{value}` {why}"));
            }
        }
        for (resource, request, limit) in [
            ("memory", &config.memory_request, &config.memory_limit),
            ("cpu", &config.cpu_request, &config.cpu_limit),
        ] {
            if let (Ok(r), Ok(l)) = (parse_quantity(request), parse_quantity(limit))
                && r > l
            {
                problems.push(format!(
                    "kubernetes.{resource}_request `{request}` is more than kubernetes.{resource}_limit `{limit}`"
                ));
            }
        }
        if config.poll_interval.is_zero() {
            problems.push("kubernetes.poll_interval must be more than 0".into());
        }
        if !problems.is_empty() {
            return Err(format!("configuration: {}", problems.join("; ")));
        }
        Ok(Self {
            namespace: config.namespace.clone(),
            image: config.image.clone(),
            ttl_seconds: config.ttl_seconds,
            memory_request: config.memory_request.clone(),
            memory_limit: config.memory_limit.clone(),
            cpu_request: config.cpu_request.clone(),
            cpu_limit: config.cpu_limit.clone(),
            image_pull_timeout: config.image_pull_timeout,
            poll_interval: config.poll_interval,
        })
    }
}

/// A client for the cluster this process can reach: in-cluster (the pod's service account),
/// else `KUBECONFIG` or `~/.kube/config`.
pub async fn connect() -> Result<kube::Client, String> {
    let config = kube::Config::infer().await.map_err(|e| {
        format!(
            "no Kubernetes configuration: not running in a cluster, and no usable KUBECONFIG ({e})"
        )
    })?;
    kube::Client::try_from(config).map_err(|e| format!("cannot set up the Kubernetes client: {e}"))
}

/// Whether the executor can work: the cluster answers and lets this identity list Jobs in the
/// namespace. `Err` says why not, for the health report.
pub async fn probe(client: &kube::Client, namespace: &str) -> Result<(), String> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    match tokio::time::timeout(
        Duration::from_secs(10),
        jobs.list(&ListParams::default().limit(1)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "cannot list Jobs in namespace `{namespace}`: {}",
            describe(&e)
        )),
        Err(_) => Err("the Kubernetes API server did not answer within 10s".into()),
    }
}

/// A kube error in one line, with the API server's own message when there is one.
pub(crate) fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}

/// The `kubernetes` executor.
pub struct Kubernetes {
    client: kube::Client,
    settings: Settings,
}

impl Kubernetes {
    pub fn new(client: kube::Client, settings: Settings) -> Self {
        Self { client, settings }
    }
}

#[async_trait]
impl Executor for Kubernetes {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn run(&self, spec: &str, context: Context) -> Outcome {
        let failed = |error: String| Outcome::Failed {
            exit_code: None,
            error,
            output: None,
        };
        let spec: KubernetesSpec = match serde_json::from_str(spec) {
            Ok(spec) => spec,
            Err(e) => return failed(format!("the job's spec cannot be read: {e}")),
        };
        let attempt = match Attempt::from_env(&context.env) {
            Ok(attempt) => attempt,
            Err(e) => return failed(e),
        };
        let job = match manifest::job(&spec, &self.settings, &attempt, context.deadline) {
            Ok(job) => job,
            Err(e) => return failed(e),
        };
        follow::Follow::new(self.client.clone(), &self.settings, attempt, context)
            .run(job)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_ones_are_named() {
        let defaults = orchion_config::KubernetesConfig::default();
        assert!(Settings::from_config(&defaults).is_ok());
        let bad = orchion_config::KubernetesConfig {
            memory_request: "2GB".into(),
            cpu_request: "4".into(),
            image: "Not/An/Image".into(),
            namespace: "Prod".into(),
            ..defaults
        };
        let err = Settings::from_config(&bad).unwrap_err();
        for named in [
            "kubernetes.namespace `Prod`",
            "kubernetes.image `Not/An/Image`",
            "kubernetes.memory_request `2GB`",
            "kubernetes.cpu_request `4` is more than kubernetes.cpu_limit `2`",
        ] {
            assert!(err.contains(named), "{named} in {err}");
        }
    }
}

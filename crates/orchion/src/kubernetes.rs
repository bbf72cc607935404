//! The server's `kubernetes` executor: a supervisor that probes the cluster every
//! `kubernetes.probe_interval`, publishes the result (`GET /api/v1/executors`), and once the
//! cluster answers starts a local agent that offers only `kubernetes`, with
//! `kubernetes.max_jobs` slots, over the server's own gRPC API. Tasks then flow through the same
//! claims, leases, logs and cancellation as any agent's.
//!
//! Without a cluster the server serves everything else; the executor is reported unhealthy
//! with the reason, and its tasks wait queued until the cluster answers.

use std::{path::Path, sync::Arc};

use orchion_api::executors::{Probe, Probes};
use orchion_config::KubernetesConfig;
use orchion_kubernetes::Settings;
use tokio_util::sync::CancellationToken;

use crate::process::LocalAgent;

const EXECUTOR: &str = "kubernetes";

/// What the supervisor needs to start its agent.
pub struct Supervised {
    pub config: KubernetesConfig,
    pub settings: Settings,
    pub grpc: String,
    pub join_token: String,
    pub state_dir: std::path::PathBuf,
    pub probes: Probes,
}

/// Checks `kubernetes.*` at start: a bad default refuses to start the server, naming the key.
pub fn settings(config: &KubernetesConfig) -> anyhow::Result<Settings> {
    Settings::from_config(config).map_err(anyhow::Error::msg)
}

/// Runs the supervisor until `stop`; its agent leaves then.
pub fn spawn(supervised: Supervised, stop: CancellationToken) -> LocalAgent {
    let task = tokio::spawn(supervise(supervised, stop.clone()));
    LocalAgent::from_parts(stop, task)
}

async fn supervise(s: Supervised, stop: CancellationToken) {
    if !s.config.enabled {
        s.probes.set(EXECUTOR, Probe::Disabled);
        return;
    }
    let mut client: Option<orchion_kubernetes::Client> = None;
    let mut agent: Option<LocalAgent> = None;
    let mut was_healthy: Option<bool> = None;
    loop {
        let checked = match &client {
            Some(client) => Ok(client.clone()),
            None => orchion_kubernetes::connect().await,
        };
        let result = match checked {
            Ok(c) => {
                let probed = orchion_kubernetes::probe(&c, &s.settings.namespace).await;
                client = Some(c.clone());
                probed.map(|()| c)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(reachable) => {
                if was_healthy != Some(true) {
                    tracing::info!(namespace = %s.settings.namespace, "the kubernetes executor's cluster answers");
                }
                was_healthy = Some(true);
                s.probes.set(
                    EXECUTOR,
                    Probe::Healthy {
                        detail: format!(
                            "Jobs can be listed in namespace `{}`",
                            s.settings.namespace
                        ),
                    },
                );
                if agent.is_none() {
                    match start_agent(&s, reachable) {
                        Ok(started) => agent = Some(started),
                        Err(e) => tracing::error!(
                            error = format!("{e:#}"),
                            "cannot start the kubernetes agent"
                        ),
                    }
                }
            }
            Err(detail) => {
                if was_healthy != Some(false) {
                    tracing::warn!(error = %detail, "the kubernetes executor is unhealthy; its tasks wait");
                }
                was_healthy = Some(false);
                s.probes.set(EXECUTOR, Probe::Unhealthy { detail });
            }
        }
        tokio::select! {
            () = tokio::time::sleep(s.config.probe_interval) => {}
            () = stop.cancelled() => break,
        }
    }
    if let Some(agent) = agent {
        agent.stop().await;
    }
}

fn start_agent(s: &Supervised, client: orchion_kubernetes::Client) -> anyhow::Result<LocalAgent> {
    let mut executors = orchion_executor::Registry::default();
    executors.add(Arc::new(orchion_kubernetes::Kubernetes::new(
        client,
        s.settings.clone(),
    )));
    let config = orchion_agent::AgentConfig {
        servers: vec![s.grpc.clone()],
        tls: Default::default(),
        join_token: s.join_token.clone(),
        name: format!("kubernetes@{}", crate::process::host_name()),
        labels: [("orchion.io/executor".to_owned(), EXECUTOR.to_owned())].into(),
        state_dir: s.state_dir.clone(),
        executors,
        slots: usize::from(s.config.max_jobs.max(1)),
        // Its executor runs containers, which never see the agent's environment.
        inherit_env: Vec::new(),
    };
    LocalAgent::spawn(config)
}

/// Where the kubernetes agent keeps its node id.
pub fn state_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("kubernetes-agent")
}

//! What the process's commands share: its shutdown signal, the host's name, and agents run
//! inside the server's process (`orchion dev`'s, and the `kubernetes` executor's). Depends on
//! no other command's module, so `agent`, `server` and `kubernetes` depend on it and not on
//! each other.

use std::future::Future;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// The machine's host name, for a node name nobody chose.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

/// Completes on SIGTERM or SIGINT. The handlers are installed by this call, not when the
/// future is first polled: call it before announcing readiness, so a signal that follows the
/// announcement at once is never missed (and never kills the process with the default action).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGINT and SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// An agent run inside the server's process: `orchion dev`'s, or the `kubernetes` executor's
/// supervisor with its agent.
pub struct LocalAgent {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LocalAgent {
    /// Runs an agent over the server's own gRPC API until stopped.
    pub fn spawn(config: orchion_agent::AgentConfig) -> anyhow::Result<Self> {
        let agent = orchion_agent::Agent::new(config).context("cannot start the local agent")?;
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                if let Err(e) = agent.run(stop).await {
                    tracing::error!(error = %e, "the local agent stopped");
                }
            }
        });
        Ok(Self { stop, task })
    }

    pub fn from_parts(stop: CancellationToken, task: tokio::task::JoinHandle<()>) -> Self {
        Self { stop, task }
    }

    /// Stops the agent, which tells the server it leaves.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the local agent panicked");
        }
    }
}

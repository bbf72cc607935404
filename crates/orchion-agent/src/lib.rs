//! The node agent: joins a server with the cluster's join token, keeps its node id and
//! credential in a state directory so a restart rejoins as the same node, sends heartbeats with
//! jitter at the interval the server asks for, reconnects with capped exponential backoff while
//! the server is away, and tells the server it leaves when shut down.
//!
//! The agent's loop has one `select!` over a closed [`Event`] set; what each event does is in
//! [`Agent::handle`].

mod machine;
mod servers;
mod state;
mod work;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use orchion_proto::v1::{self as pb, node_service_client::NodeServiceClient};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};

pub use crate::{machine::detect_capacity, servers::AgentTls};
use crate::{
    servers::Servers,
    state::{Credentials, StateDir},
};

/// How the agent joins.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The servers' gRPC addresses, e.g. `http://127.0.0.1:50051`: replicas of one control
    /// plane, tried in turn (see `servers.rs`).
    pub servers: Vec<String>,
    pub join_token: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Where the node id and credential are kept between runs.
    pub state_dir: PathBuf,
    /// Executors this agent offers.
    pub executors: orchion_executor::Registry,
    /// How many tasks run at once.
    pub slots: usize,
    /// How `https://` servers are reached.
    pub tls: AgentTls,
    /// Variables of the agent's environment its tasks get besides `PATH`, `HOME` and `LANG`
    /// (`--inherit-env`); no other reaches a task.
    pub inherit_env: Vec<String>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server refused the join token: {0}")]
    JoinRejected(String),
    #[error(
        "the server refused this node's own credential: {0} (to join as a new node instead, \
         remove node.json from the agent's state directory)"
    )]
    CredentialRejected(String),
    #[error("the server refused the registration: {0}")]
    Invalid(String),
    #[error("invalid server address `{0}`: {1}")]
    BadServer(String, String),
    #[error(
        "cannot make a TLS connection to {0}: {1} (is it serving TLS, and does --ca name the \
         authority that signed its certificate?)"
    )]
    Tls(String, String),
    #[error("state directory {0}: {1}")]
    State(PathBuf, std::io::Error),
}

/// What led to an error, cause by cause (`a: b: c`), for a log line that says why.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = error.source();
    while let Some(e) = next {
        parts.push(e.to_string());
        next = e.source();
    }
    parts.join(": ")
}

/// The first wait after a failure, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long the goodbye to the server may take at shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// The deadline of every call but a claim's long poll.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the node's attempts may run on after a heartbeat was sent and answered, as the
/// server says; a server that does not say (older than fencing) leaves it to the leases.
fn fence_after(ms: u64) -> Duration {
    if ms == 0 {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        Duration::from_millis(ms)
    }
}

/// The agent's one retry policy — reconnecting, claiming, reporting — for waits from `first`
/// up to `max`: exponential, each wait jittered within the upper half of its step (backon adds
/// up to 100 % to each delay, so the steps are halved), unbounded in number. Start it afresh
/// after a success.
pub(crate) fn backoff(first: Duration, max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(first / 2)
        .with_max_delay(max / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The next wait of `backoff`; `max` should it ever end.
pub(crate) fn next_wait(backoff: &mut backon::ExponentialBackoff, max: Duration) -> Duration {
    backoff.next().unwrap_or(max).min(max)
}

/// What the loop reacts to.
enum Event {
    /// Time to (re)register or send a heartbeat.
    Due,
    Shutdown,
}

/// What the agent does when the next event is due.
enum Next {
    Register,
    Heartbeat,
}

/// The work loop running under the current registration.
struct Worker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A running agent.
pub struct Agent {
    config: AgentConfig,
    servers: Servers,
    worker: Option<Worker>,
    client: NodeServiceClient<Servers>,
    state: StateDir,
    credentials: Option<Credentials>,
    next: Next,
    wait: Duration,
    interval: Duration,
    backoff: backon::ExponentialBackoff,
    /// Until when the servers take this node to be alive (its attempts' fence).
    node_until: work::NodeUntil,
    /// What every task's environment starts from.
    inherited: Arc<BTreeMap<String, String>>,
}

impl Agent {
    /// Prepares an agent: reads its state directory, sets up a lazily connecting channel.
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        let servers = Servers::new(&config.servers, work::CLAIM_WAIT + RPC_TIMEOUT, &config.tls)
            .map_err(|(url, why)| AgentError::BadServer(url, why))?;
        let state = StateDir::open(&config.state_dir)?;
        let credentials = state.load()?;
        let inherited = Arc::new(orchion_executor::inherited_env(&config.inherit_env));
        Ok(Self {
            inherited,
            client: NodeServiceClient::new(servers.clone()),
            servers,
            worker: None,
            config,
            state,
            credentials,
            next: Next::Register,
            wait: Duration::ZERO,
            interval: Duration::from_secs(10),
            backoff: backoff(BACKOFF_FIRST, BACKOFF_MAX),
            node_until: work::NodeUntil::new(std::time::Instant::now()),
        })
    }

    /// Runs until `shutdown`, then tells the server the node leaves.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        loop {
            let event = tokio::select! {
                () = tokio::time::sleep(self.wait) => Event::Due,
                () = shutdown.cancelled() => Event::Shutdown,
            };
            match event {
                Event::Due => self.handle().await?,
                Event::Shutdown => break,
            }
        }
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
        self.leave().await;
        Ok(())
    }

    async fn handle(&mut self) -> Result<(), AgentError> {
        match self.next {
            Next::Register => self.register().await,
            Next::Heartbeat => {
                self.heartbeat().await;
                Ok(())
            }
        }
    }

    fn authorized<T>(message: T, token: &str) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(RPC_TIMEOUT);
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// Joins as a new node with the join token, or registers again under the saved id with
    /// the node's own credential.
    async fn register(&mut self) -> Result<(), AgentError> {
        let capacity = detect_capacity();
        let (node_id, bearer) = match &self.credentials {
            Some(saved) => (saved.node_id.clone(), saved.credential.clone()),
            None => (String::new(), self.config.join_token.clone()),
        };
        let rejoining = !node_id.is_empty();
        let message = pb::RegisterNodeRequest {
            node_id: node_id.clone(),
            name: self.config.name.clone(),
            labels: self.config.labels.clone().into_iter().collect(),
            capacity: Some(capacity),
            executors: self.config.executors.names(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            address: String::new(),
        };
        let request = Self::authorized(message, &bearer);
        let sent = std::time::Instant::now();
        let result = self.client.register_node(request).await;
        if let Err(status) = &result
            && matches!(
                status.code(),
                Code::Unknown | Code::Unavailable | Code::Cancelled
            )
            && let Some(why) = self.config.tls.refusal(self.servers.url()).await
        {
            return Err(AgentError::Tls(self.servers.url().to_owned(), why));
        }
        match result {
            Ok(response) => {
                let response = response.into_inner();
                self.node_until
                    .renew(sent + fence_after(response.fence_after_ms));
                let credentials = Credentials {
                    node_id: response.node_id,
                    credential: response.credential,
                };
                self.state.save(&credentials)?;
                tracing::info!(node_id = %credentials.node_id, server = %self.servers.url(), "registered");
                self.restart_worker(credentials.clone()).await;
                self.credentials = Some(credentials);
                self.interval = Duration::from_millis(response.heartbeat_interval_ms.max(50));
                self.backoff = backoff(BACKOFF_FIRST, BACKOFF_MAX);
                self.next = Next::Heartbeat;
                self.wait = self.jittered();
                Ok(())
            }
            Err(status) if rejoining && status.code() == Code::NotFound => {
                tracing::warn!(%node_id, "the server no longer knows this node (it was deleted): joining as a new node");
                self.credentials = None;
                self.wait = Duration::ZERO;
                Ok(())
            }
            Err(status) if rejoining && status.code() == Code::Unauthenticated => {
                Err(AgentError::CredentialRejected(status.message().to_owned()))
            }
            Err(status) if status.code() == Code::Unauthenticated => {
                Err(AgentError::JoinRejected(status.message().to_owned()))
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument | Code::PermissionDenied
                ) =>
            {
                Err(AgentError::Invalid(status.message().to_owned()))
            }
            Err(status) => {
                self.wait = next_wait(&mut self.backoff, BACKOFF_MAX);
                tracing::warn!(code = ?status.code(), error = status.message(), cause = %causes(&status), retry_in = ?self.wait, "cannot register; retrying");
                Ok(())
            }
        }
    }

    /// (Re)starts the work loop under `credentials`.
    async fn restart_worker(&mut self, credentials: Credentials) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
        if self.config.executors.names().is_empty() {
            return;
        }
        let stop = CancellationToken::new();
        let config = work::WorkConfig {
            credentials,
            executors: self.config.executors.clone(),
            slots: self.config.slots,
            node_until: self.node_until.clone(),
            inherited: self.inherited.clone(),
        };
        let task = tokio::spawn(work::run(self.servers.clone(), config, stop.clone()));
        self.worker = Some(Worker { stop, task });
    }

    async fn heartbeat(&mut self) {
        let Some(credentials) = &self.credentials else {
            self.next = Next::Register;
            return;
        };
        let message = pb::HeartbeatRequest {
            node_id: credentials.node_id.clone(),
        };
        let request = Self::authorized(message, &credentials.credential);
        let sent = std::time::Instant::now();
        match self.client.heartbeat(request).await {
            Ok(response) => {
                let response = response.into_inner();
                self.node_until
                    .renew(sent + fence_after(response.fence_after_ms));
                self.interval = Duration::from_millis(response.heartbeat_interval_ms.max(50));
                self.backoff = backoff(BACKOFF_FIRST, BACKOFF_MAX);
                self.wait = self.jittered();
                if response.commands.contains(&i32::from(pb::Command::Restart)) {
                    tracing::info!("the server asked for a restart: registering again");
                    self.next = Next::Register;
                    self.wait = Duration::ZERO;
                }
            }
            Err(status) if matches!(status.code(), Code::NotFound | Code::Unauthenticated) => {
                tracing::warn!(
                    error = status.message(),
                    "the server does not know this node's credential: registering again"
                );
                self.next = Next::Register;
                self.wait = Duration::ZERO;
            }
            Err(status) => {
                self.wait = next_wait(&mut self.backoff, BACKOFF_MAX).min(self.interval);
                tracing::warn!(code = ?status.code(), error = status.message(), retry_in = ?self.wait, "heartbeat failed");
            }
        }
    }

    async fn leave(&mut self) {
        let Some(credentials) = &self.credentials else {
            return;
        };
        let message = pb::LeaveNodeRequest {
            node_id: credentials.node_id.clone(),
        };
        let request = Self::authorized(message, &credentials.credential);
        match tokio::time::timeout(LEAVE_TIMEOUT, self.client.leave_node(request)).await {
            Ok(Ok(_)) => tracing::info!(node_id = %credentials.node_id, "left the cluster"),
            Ok(Err(status)) => tracing::warn!(
                error = status.message(),
                "could not tell the server this node leaves"
            ),
            Err(_) => tracing::warn!("the server did not answer the goodbye in time"),
        }
    }

    /// The heartbeat interval with ±10 % jitter, so restarted fleets do not beat in step.
    fn jittered(&self) -> Duration {
        self.interval.mul_f64(rand::rng().random_range(0.9..=1.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut waits_of = backoff(BACKOFF_FIRST, BACKOFF_MAX);
        let waits: Vec<Duration> = (0..12)
            .map(|_| next_wait(&mut waits_of, BACKOFF_MAX))
            .collect();
        assert!(waits[0] <= BACKOFF_FIRST && waits[0] >= BACKOFF_FIRST / 2);
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX));
        assert!(
            waits[11] >= BACKOFF_MAX / 2,
            "capped, with jitter: {waits:?}"
        );
        let mut fresh = backoff(BACKOFF_FIRST, BACKOFF_MAX);
        assert!(next_wait(&mut fresh, BACKOFF_MAX) <= BACKOFF_FIRST);
    }
}

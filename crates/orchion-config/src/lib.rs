//! Orchion's typed configuration.
//!
//! Layers, each overriding the one before: built-in defaults → a TOML or YAML file
//! (`--config`) → the seeds' environment variables ([`SEED_ENV`]) → `ORCHION_SECTION__KEY`
//! environment variables → command-line flags. The result is validated once, at start, and
//! passed down explicitly; nothing reads the environment later.
//!
//! Invariant: an unknown key in any layer is an error that names it, and so is a value of the
//! wrong type. Secrets (passwords in database URLs) never appear in `Debug` output or in
//! [`Config::to_redacted_toml`].

mod secret;

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment, Metadata, Profile, Provider,
    providers::{Format, Serialized, Toml, Yaml},
    value::{Dict, Map},
};
use serde::{Deserialize, Serialize};

pub use figment::value::Value;

pub use crate::secret::{DatabaseUrl, Secret};

/// The whole configuration of a server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
    pub database: DatabaseConfig,
    pub enqueue: EnqueueConfig,
    pub egress: EgressConfig,
    pub secrets: SecretsConfig,
    /// Deployment engines by name (`terraform`, `helm`, `pulumi`, `crossplane`), as in the
    /// deployment service's configuration. An engine not listed is enabled.
    pub engines: std::collections::BTreeMap<String, EngineConfig>,
    pub webhooks: WebhooksConfig,
    pub kubernetes: KubernetesConfig,
    pub telemetry: TelemetryConfig,
    pub log: LogConfig,
    pub retention: RetentionConfig,
    /// Accepted for compatibility with the workflow service's `config.yaml`, and ignored:
    /// Orchion needs no Redis. A warning says so at start.
    #[serde(skip_serializing)]
    pub redis: Option<serde_json::Value>,
    /// Accepted for compatibility with the workflow service's `config.yaml`, and ignored:
    /// Orchion is its own workflow engine. A warning says so at start.
    #[serde(skip_serializing)]
    pub temporal: Option<serde_json::Value>,
}

/// The HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The address the HTTP API listens on.
    pub host: String,
    /// The HTTP API's port (`--http-port`; `port` in the workflow service's config.yaml).
    pub http_port: u16,
    /// Where the server keeps its files: the SQLite database when no URL is given.
    pub data_dir: PathBuf,
    /// After SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// After SIGTERM/SIGINT, how long to keep accepting requests with `/readyz` answering 503,
    /// so load balancers stop routing here before the listener closes.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// The largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// The gRPC port agents connect to (`--port`, as in the control-plane seed).
    pub grpc_port: u16,
    /// The largest gRPC message accepted, in bytes.
    pub grpc_max_message_bytes: usize,
    /// How many streams (`/api/v1/events`, `/api/v1/ws`, and logs followed) may be open at
    /// once; more are answered 503.
    pub max_event_streams: usize,
    /// How many streams one client address may hold open at once; more are answered 429.
    pub max_event_streams_per_client: usize,
    /// How many HTTP connections are served at once; one more is closed on arrival.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers before its connection is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection may carry nothing, either way, before it is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a request may take to be answered (its body read and its handler run; a
    /// stream's answer then flows for as long as it lasts); longer ones are answered 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Whether `/metrics` is served on `metrics_port` (the workflow service's key).
    pub enable_metrics: bool,
    /// The port of the Prometheus endpoint (`--metrics-port`; `0` picks a free one).
    pub metrics_port: u16,
    /// Host names the HTTP API answers for (a request with another `Host` gets 403, against
    /// DNS rebinding); empty: loopback names when it listens on loopback, any otherwise.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://ops.example.com`) besides the server's own whose pages may make
    /// state-changing requests or open event WebSockets; any other gets 403.
    pub allowed_origins: Vec<String>,
    /// TLS for the HTTP and gRPC APIs; plaintext when absent.
    pub tls: Option<TlsConfig>,
}

/// The server's certificate, and the authority whose client certificates agents must present.
/// The files are read again on SIGHUP and when they change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, gRPC clients (agents) must present a certificate this authority (PEM)
    /// signed: mutual TLS. The HTTP API still takes any client.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            http_port: 8080,
            data_dir: PathBuf::from(".orchion"),
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            body_limit_bytes: 1024 * 1024,
            grpc_port: 50051,
            grpc_max_message_bytes: 4 * 1024 * 1024,
            max_event_streams: 1000,
            max_event_streams_per_client: 100,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
            enable_metrics: true,
            metrics_port: 9090,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            tls: None,
        }
    }
}

/// Who may use the API (docs/security.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// An admin API token to accept (16 characters or more), for deployments that provision
    /// it (a mounted secret). When neither this nor `admin_token_file` is set, the first start
    /// makes one, prints it once and writes it to `<data_dir>/admin-token` (mode 0600).
    pub admin_token: Option<Secret>,
    /// A file holding the admin token (a Kubernetes Secret mounted as a file).
    pub admin_token_file: Option<PathBuf>,
    /// Failed sign-ins one client address may make per minute before it is refused (429).
    pub max_failures_per_minute: u32,
    /// Signing in to the dashboard through an OpenID Connect provider.
    pub oidc: Option<OidcConfig>,
}

/// An OpenID Connect provider the dashboard signs in through (authorization code with PKCE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL (`https://accounts.example.com`); its discovery document is at
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// For a confidential client.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// This server's callback as registered at the provider:
    /// `https://orchion.example.com/auth/oidc/callback`.
    pub redirect_url: String,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim mapped to a role (a string or a list of strings; a dotted path
    /// reaches into objects).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Claim value → `viewer`, `operator` or `admin`. An identity none of whose values is
    /// listed cannot sign in.
    pub roles: std::collections::BTreeMap<String, String>,
    /// The sign-in button's label.
    #[serde(default = "default_oidc_name")]
    pub name: String,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

fn default_role_claim() -> String {
    "groups".into()
}

fn default_oidc_name() -> String {
    "single sign-on".into()
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            admin_token_file: None,
            max_failures_per_minute: 20,
            oidc: None,
        }
    }
}

/// Node membership and liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The secret agents present to join. When absent, `orchion server` generates one and
    /// keeps it in `<data_dir>/join-token`.
    pub join_token: Option<Secret>,
    /// A node not heard from for longer than this becomes `unreachable`
    /// (`--heartbeat-timeout`). Agents are told to send heartbeats three times as often.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// How often liveness is checked (at most 10 s).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// How much longer an unreachable node has before it becomes `down`.
    #[serde(with = "humantime_serde")]
    pub down_after: Duration,
    /// No longer used: the nodes each server heard are written every `check_interval`, as
    /// the liveness every replica shares. Still accepted, so older configuration files load;
    /// a value other than the default is warned about at start.
    #[serde(with = "humantime_serde")]
    pub heartbeat_persist_interval: Duration,
}

/// `cluster.heartbeat_persist_interval`'s default, the one value not warned about.
pub const DEFAULT_HEARTBEAT_PERSIST_INTERVAL: Duration = Duration::from_secs(60);

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            join_token: None,
            heartbeat_timeout: Duration::from_secs(30),
            check_interval: Duration::from_secs(5),
            down_after: Duration::from_secs(120),
            heartbeat_persist_interval: DEFAULT_HEARTBEAT_PERSIST_INTERVAL,
        }
    }
}

/// The key projects' secrets are sealed with at rest (docs/secrets.md).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// 32 bytes as base64 (`openssl rand -base64 32`). When neither this nor `key_file` is
    /// set, the server makes one and keeps it in `<data_dir>/secrets.key` (mode 0600).
    pub key: Option<Secret>,
    /// A file holding the key (a mounted Kubernetes Secret); the same on every replica.
    pub key_file: Option<PathBuf>,
}

/// Where tasks' HTTP requests (`http` jobs and steps, `/enqueue`'s forwards) may go besides
/// public addresses. Loopback, link-local, private and other special addresses are refused
/// unless named here.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// For every project: networks (`10.0.0.0/8`), addresses (`127.0.0.1`) and host names
    /// (`worker.internal`, whatever it resolves to).
    pub allow: Vec<String>,
    /// For one project (its id) besides: `egress.projects.<id>.allow`.
    pub projects: std::collections::BTreeMap<String, ProjectEgress>,
}

/// One project's own egress allowances.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectEgress {
    pub allow: Vec<String>,
}

/// Whether `name` is a Kubernetes object name (a DNS subdomain, as Secrets and service
/// accounts are; a namespace is the stricter label, which this also accepts).
fn kubernetes_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && !part.starts_with('-')
                && !part.ends_with('-')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Whether `entry` is something `egress.allow` can hold: a network, an address or a host name.
fn egress_entry_ok(entry: &str) -> bool {
    let network = entry.split_once('/').is_some_and(|(ip, bits)| {
        ip.parse::<std::net::IpAddr>().is_ok_and(|ip| {
            bits.parse::<u8>()
                .is_ok_and(|b| b <= if ip.is_ipv4() { 32 } else { 128 })
        })
    });
    let host = !entry.is_empty()
        && entry.len() <= 253
        && entry.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    network || entry.parse::<std::net::IpAddr>().is_ok() || host
}

/// The job enqueue service's compatibility endpoint, `POST /enqueue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnqueueConfig {
    /// The worker service jobs are forwarded to (`WORKER_NODE_URL`); each job POSTs
    /// `{"placeId"}` to `<worker_url>/enqueue` through the `http` executor, with retries.
    pub worker_url: String,
    /// How many times a forward is tried.
    pub max_attempts: u32,
    /// The project (its id) the forwarding jobs belong to. Absent: the default project.
    pub project: Option<String>,
}

impl Default for EnqueueConfig {
    fn default() -> Self {
        Self {
            worker_url: "http://localhost:3000".into(),
            max_attempts: 5,
            project: None,
        }
    }
}

/// One deployment engine. Engines run on the agents that have their tool installed; the server
/// uses `enabled` to accept or refuse deployments that name the engine. Other keys (the
/// deployment service's `endpoint`, `timeout`, `backend`, `parallelism`, …) are kept and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(flatten)]
    pub settings: std::collections::BTreeMap<String, serde_json::Value>,
}

fn enabled_by_default() -> bool {
    true
}

impl Config {
    /// Whether deployments may use `engine`.
    pub fn engine_enabled(&self, engine: &str) -> bool {
        self.engines.get(engine).is_none_or(|e| e.enabled)
    }
}

/// The `kubernetes` executor: steps run as Jobs in the cluster the server reaches in-cluster
/// (its service account) or through `KUBECONFIG`. The `JOB_*` keys are the defaults a step's
/// spec may override, named as the webhook service's variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Whether this server runs Jobs. Without access to a cluster it still serves everything
    /// else, and reports the executor unhealthy.
    pub enabled: bool,
    /// Where Jobs go (`KUBERNETES_NAMESPACE`).
    pub namespace: String,
    /// The image of a step that names none (`JOB_IMAGE`).
    pub image: String,
    /// How long a finished Job stays (`JOB_TTL_SECONDS`).
    pub ttl_seconds: u32,
    /// Quantities such as `2Gi` or `500m` (`JOB_MEMORY_REQUEST`, `JOB_MEMORY_LIMIT`,
    /// `JOB_CPU_REQUEST`, `JOB_CPU_LIMIT`).
    #[serde(deserialize_with = "quantity")]
    pub memory_request: String,
    #[serde(deserialize_with = "quantity")]
    pub memory_limit: String,
    #[serde(deserialize_with = "quantity")]
    pub cpu_request: String,
    #[serde(deserialize_with = "quantity")]
    pub cpu_limit: String,
    /// How many Jobs this server runs at once; more wait queued.
    pub max_jobs: u16,
    /// How long a pod may be unable to pull its image before the task fails.
    #[serde(with = "humantime_serde")]
    pub image_pull_timeout: Duration,
    /// How often a running Job's pods are looked at.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often the cluster is checked for the executor's health.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// What every project's Jobs may name besides `namespace` (docs/kubernetes.md).
    pub allow: KubernetesAllow,
    /// What one project's Jobs may name besides: `kubernetes.projects.<id>`.
    pub projects: std::collections::BTreeMap<String, KubernetesAllow>,
    /// The control plane's own service accounts and Secrets, which no Job may use whatever the
    /// lists say.
    pub control_plane: ControlPlane,
}

/// Namespaces, service accounts and Secrets (`secret_env`) `kubernetes` Jobs may name; `*`
/// allows any.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesAllow {
    pub namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub secrets: Vec<String>,
}

/// What the control plane runs as and keeps its own secrets in (the names of
/// `deploy/kubernetes/orchion.yaml`); in a cluster, the service account the server runs as is
/// added to these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlane {
    pub service_accounts: Vec<String>,
    pub secrets: Vec<String>,
}

impl Default for ControlPlane {
    fn default() -> Self {
        Self {
            service_accounts: vec!["orchion".into()],
            secrets: vec!["orchion".into()],
        }
    }
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            namespace: "default".into(),
            image: "anthropic/claude-code:latest".into(),
            ttl_seconds: 1800,
            memory_request: "2Gi".into(),
            memory_limit: "4Gi".into(),
            cpu_request: "1".into(),
            cpu_limit: "2".into(),
            max_jobs: 100,
            image_pull_timeout: Duration::from_secs(120),
            poll_interval: Duration::from_secs(2),
            probe_interval: Duration::from_secs(30),
            allow: KubernetesAllow::default(),
            projects: std::collections::BTreeMap::new(),
            control_plane: ControlPlane::default(),
        }
    }
}

/// Tracing: spans exported over OTLP when an endpoint is set, off otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Whether traces are exported (the workflow service's key); an endpoint is needed too.
    pub enabled: bool,
    /// The OTLP/HTTP endpoint, e.g. `http://localhost:4318` (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the spans.
    pub service_name: String,
    /// The `deployment.environment` of the spans.
    pub environment: Option<String>,
    /// Accepted for compatibility with the workflow service's `config.yaml`. Orchion exports
    /// OTLP, which Jaeger accepts; a warning at start says so.
    #[serde(skip_serializing)]
    pub jaeger: Option<serde_json::Value>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            otlp_endpoint: None,
            service_name: "orchion".into(),
            environment: None,
            jaeger: None,
        }
    }
}

impl TelemetryConfig {
    /// Where spans go, if anywhere.
    pub fn exporting_to(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .filter(|e| self.enabled && !e.trim().is_empty())
    }
}

/// A quantity: text, or a bare number (`JOB_CPU_REQUEST=1`) as its text.
fn quantity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Quantity {
        Text(String),
        Integer(u64),
        Float(f64),
    }
    Ok(match Quantity::deserialize(d)? {
        Quantity::Text(text) => text,
        Quantity::Integer(n) => n.to_string(),
        Quantity::Float(n) => n.to_string(),
    })
}

/// How long what the server records is kept; older is deleted in the background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Finished jobs and workflow runs, with their tasks, attempts, logs and outputs, after
    /// they finish. Deployments' runs are kept.
    #[serde(with = "humantime_serde")]
    pub finished: Duration,
    /// The event log; a stream resuming from before what is kept is refused (410).
    #[serde(with = "humantime_serde")]
    pub events: Duration,
    /// Webhook deliveries (at least `webhooks.github.replay_window`).
    #[serde(with = "humantime_serde")]
    pub deliveries: Duration,
    /// Idempotency keys: the same key after this makes a new resource (at most `finished`).
    #[serde(with = "humantime_serde")]
    pub idempotency_keys: Duration,
    /// The audit log (its newest entry is always kept).
    #[serde(with = "humantime_serde")]
    pub audit: Duration,
    /// Nodes down this long are forgotten.
    #[serde(with = "humantime_serde")]
    pub down_nodes: Duration,
    /// Per project id: how long its finished runs are kept, instead of `finished`.
    pub projects: std::collections::BTreeMap<String, ProjectRetention>,
}

/// One project's retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRetention {
    #[serde(with = "humantime_serde")]
    pub finished: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let day = Duration::from_secs(24 * 3600);
        Self {
            finished: 30 * day,
            events: 7 * day,
            deliveries: 30 * day,
            idempotency_keys: 7 * day,
            audit: 365 * day,
            down_nodes: 7 * day,
            projects: Default::default(),
        }
    }
}

/// Incoming webhooks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    pub github: GithubWebhooks,
}

/// `POST /webhook/github`: verified GitHub deliveries, turned into runs by rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubWebhooks {
    /// The secret deliveries are signed with (`GITHUB_WEBHOOK_SECRET`). Without any secret,
    /// every delivery is refused.
    pub secret: Option<Secret>,
    /// Secrets for one repository (`owner/name`) or organisation (`owner`): a delivery
    /// signed with one of them is accepted only for that repository or organisation.
    pub secrets: std::collections::BTreeMap<String, Secret>,
    /// What each event starts, in order; every matching rule starts its run.
    pub rules: Vec<WebhookRule>,
    /// The project (its id) the rules' runs and jobs belong to; they act as an operator of it
    /// alone. Absent: the default project.
    pub project: Option<String>,
    /// How long a signed body is remembered: the same bytes again under another delivery id
    /// within it are a replay, answered and recorded as one, and start nothing.
    #[serde(with = "humantime_serde")]
    pub replay_window: Duration,
}

impl Default for GithubWebhooks {
    fn default() -> Self {
        Self {
            secret: None,
            secrets: Default::default(),
            rules: Vec::new(),
            project: None,
            replay_window: Duration::from_secs(72 * 3600),
        }
    }
}

/// Maps GitHub events to a workflow run or a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRule {
    pub name: String,
    /// The `X-GitHub-Event`: `issues`, `pull_request`, `push`, …
    pub event: String,
    /// The payload's `action`s it wants (`opened`, `labeled`, …); any when empty.
    #[serde(default)]
    pub actions: Vec<String>,
    /// `owner/name` repositories; any when empty.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Branches (push ref, pull request base, workflow run branch); any when empty.
    #[serde(default)]
    pub branches: Vec<String>,
    /// Labels of the issue or pull request, one of which must be present; any when empty.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Start a run of this workflow type, with `input` (templates read `${{ event.… }}`).
    pub workflow: Option<String>,
    #[serde(default)]
    pub input: serde_json::Value,
    /// Or enqueue this job (as `POST /api/v1/jobs` takes it; templates read `${{ event.… }}`).
    pub job: Option<serde_json::Value>,
}

/// The store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:PATH` or `postgres://…`; SQLite in `server.data_dir` when absent.
    pub url: Option<DatabaseUrl>,
    /// The most connections the server opens (`max_open_conns` in the workflow service's
    /// config.yaml).
    pub max_connections: u32,
    /// Accepted for compatibility with the workflow service's config.yaml; sqlx pools keep
    /// idle connections themselves.
    #[serde(skip_serializing)]
    pub max_idle_conns: Option<u32>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
            max_idle_conns: None,
        }
    }
}

impl DatabaseConfig {
    /// The URL to connect to: the configured one, or SQLite in `data_dir`.
    pub fn effective_url(&self, data_dir: &Path) -> String {
        match &self.url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite:{}", data_dir.join("orchion.db").display()),
        }
    }
}

/// Logging. `ORCHION_LOG` or `RUST_LOG`, when set, override `level`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `orchion=debug,sqlx=warn`.
    pub level: String,
    /// `auto` (JSON lines unless stdout is a terminal), `json` or `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// The seeds' environment variables and the key each sets, in increasing precedence. They
/// override the file; `ORCHION_SECTION__KEY` variables override them.
pub const SEED_ENV: &[(&str, &str)] = &[
    ("PORT", "server.http_port"),
    ("SERVER_HOST", "server.host"),
    ("SERVER_PORT", "server.http_port"),
    ("ORCHESTRATOR_SERVER_HOST", "server.host"),
    ("ORCHESTRATOR_SERVER_PORT", "server.http_port"),
    ("ORCHESTRATOR_DATABASE_URL", "database.url"),
    ("WORKER_NODE_URL", "enqueue.worker_url"),
    ("GITHUB_WEBHOOK_SECRET", "webhooks.github.secret"),
    ("ORCHESTRATOR_TELEMETRY_ENABLED", "telemetry.enabled"),
    (
        "ORCHESTRATOR_TELEMETRY_JAEGER_COLLECTOR_ENDPOINT",
        "telemetry.jaeger.collector_endpoint",
    ),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
    ("OTEL_SERVICE_NAME", "telemetry.service_name"),
    ("KUBERNETES_NAMESPACE", "kubernetes.namespace"),
    ("JOB_IMAGE", "kubernetes.image"),
    ("JOB_TTL_SECONDS", "kubernetes.ttl_seconds"),
    ("JOB_MEMORY_REQUEST", "kubernetes.memory_request"),
    ("JOB_MEMORY_LIMIT", "kubernetes.memory_limit"),
    ("JOB_CPU_REQUEST", "kubernetes.cpu_request"),
    ("JOB_CPU_LIMIT", "kubernetes.cpu_limit"),
];

/// The prefix of Orchion's own configuration variables; `__` separates section and key.
pub const ENV_PREFIX: &str = "ORCHION_";

/// A configuration error, as one line that names what is wrong and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Where the configuration comes from, besides the defaults.
#[derive(Debug, Default)]
pub struct Sources {
    /// A TOML (`.toml`) or YAML (`.yaml`, `.yml`) file.
    pub file: Option<PathBuf>,
    /// The process environment (only the variables named above are read).
    pub env: Vec<(String, String)>,
    /// Values set by command-line flags, as `(dotted key, value)`.
    pub flags: Vec<(&'static str, Value)>,
}

impl Config {
    /// Layers the sources over the defaults, then validates the result.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &sources.file {
            figment = figment.merge(Layer::file(path)?);
        }
        for (var, key) in SEED_ENV {
            if let Some((_, value)) = sources.env.iter().find(|(name, _)| name == var) {
                figment = figment.merge(Layer::env(var, key, value));
            }
        }
        for (var, value) in &sources.env {
            if let Some(key) = orchion_env_key(var) {
                figment = figment.merge(Layer::env(var, &key, value));
            }
        }
        for (key, value) in &sources.flags {
            figment = figment.merge(Layer {
                name: format!("command-line flag for `{key}`"),
                dict: nest(key, value.clone()),
            });
        }
        let config: Config = figment.extract().map_err(|e| ConfigError(one_line(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot, reporting every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.server.host.trim().is_empty() {
            problems.push("server.host must not be empty".to_owned());
        }
        if self.server.shutdown_grace > Duration::from_secs(3600) {
            problems.push("server.shutdown_grace must be at most 1h".to_owned());
        }
        if self.server.drain_delay > Duration::from_secs(600) {
            problems.push("server.drain_delay must be at most 10m".to_owned());
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.server.body_limit_bytes) {
            problems.push("server.body_limit_bytes must be between 1024 and 1073741824".to_owned());
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.server.grpc_max_message_bytes) {
            problems.push(
                "server.grpc_max_message_bytes must be between 1024 and 268435456".to_owned(),
            );
        }
        let cluster = &self.cluster;
        if !(Duration::from_millis(500)..=Duration::from_secs(3600))
            .contains(&cluster.heartbeat_timeout)
        {
            problems.push("cluster.heartbeat_timeout must be between 500ms and 1h".to_owned());
        }
        if !(Duration::from_millis(50)..=Duration::from_secs(10)).contains(&cluster.check_interval)
        {
            problems.push("cluster.check_interval must be between 50ms and 10s".to_owned());
        }
        if cluster.down_after > Duration::from_secs(7 * 24 * 3600) {
            problems.push("cluster.down_after must be at most 7 days".to_owned());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&cluster.heartbeat_persist_interval)
        {
            problems
                .push("cluster.heartbeat_persist_interval must be between 1s and 1h".to_owned());
        }
        let server = &self.server;
        for (key, value, range) in [
            (
                "server.header_read_timeout",
                server.header_read_timeout,
                Duration::from_secs(1)..=Duration::from_secs(300),
            ),
            (
                "server.idle_timeout",
                server.idle_timeout,
                Duration::from_secs(5)..=Duration::from_secs(3600),
            ),
            (
                "server.request_timeout",
                server.request_timeout,
                Duration::from_secs(1)..=Duration::from_secs(3600),
            ),
        ] {
            if !range.contains(&value) {
                problems.push(format!(
                    "{key} must be between {} and {}, got {}",
                    humantime::format_duration(*range.start()),
                    humantime::format_duration(*range.end()),
                    humantime::format_duration(value)
                ));
            }
        }
        if server.max_connections == 0 {
            problems.push("server.max_connections must be at least 1".to_owned());
        }
        let retention = &self.retention;
        let kept = [
            ("retention.finished".to_owned(), retention.finished),
            ("retention.events".to_owned(), retention.events),
            ("retention.deliveries".to_owned(), retention.deliveries),
            (
                "retention.idempotency_keys".to_owned(),
                retention.idempotency_keys,
            ),
            ("retention.audit".to_owned(), retention.audit),
            ("retention.down_nodes".to_owned(), retention.down_nodes),
        ]
        .into_iter()
        .chain(
            retention
                .projects
                .iter()
                .map(|(id, p)| (format!("retention.projects.{id}.finished"), p.finished)),
        );
        for (key, value) in kept {
            if value < Duration::from_secs(60) {
                problems.push(format!(
                    "{key} must be at least 1m (it is how long things are kept), got {}",
                    humantime::format_duration(value)
                ));
            }
        }
        if retention.deliveries < self.webhooks.github.replay_window {
            problems.push(format!(
                "retention.deliveries ({}) must be at least webhooks.github.replay_window ({}): a replay is recognised by the deliveries kept",
                humantime::format_duration(retention.deliveries),
                humantime::format_duration(self.webhooks.github.replay_window)
            ));
        }
        let finished = std::iter::once(("retention.finished".to_owned(), retention.finished))
            .chain(
                retention
                    .projects
                    .iter()
                    .map(|(id, p)| (format!("retention.projects.{id}.finished"), p.finished)),
            );
        for (key, finished) in finished {
            if retention.idempotency_keys > finished {
                problems.push(format!(
                    "retention.idempotency_keys ({}) must be at most {key} ({}): a key must not outlive what it names",
                    humantime::format_duration(retention.idempotency_keys),
                    humantime::format_duration(finished)
                ));
            }
        }
        if server.max_event_streams_per_client == 0 {
            problems.push("server.max_event_streams_per_client must be at least 1".to_owned());
        }
        if self.secrets.key.is_some() && self.secrets.key_file.is_some() {
            problems.push("secrets: set secrets.key or secrets.key_file, not both".to_owned());
        }
        let kubernetes_lists =
            std::iter::once(("kubernetes.allow".to_owned(), &self.kubernetes.allow)).chain(
                self.kubernetes
                    .projects
                    .iter()
                    .map(|(project, allow)| (format!("kubernetes.projects.{project}"), allow)),
            );
        for (key, allow) in kubernetes_lists {
            for (kind, names) in [
                ("namespaces", &allow.namespaces),
                ("service_accounts", &allow.service_accounts),
                ("secrets", &allow.secrets),
            ] {
                for name in names.iter().filter(|n| *n != "*" && !kubernetes_name_ok(n)) {
                    problems.push(format!(
                        "{key}.{kind}: `{name}` is not a Kubernetes name (lowercase letters, digits, `-` and `.`), nor `*`"
                    ));
                }
            }
        }
        let egress_lists = std::iter::once(("egress.allow".to_owned(), &self.egress.allow)).chain(
            self.egress
                .projects
                .iter()
                .map(|(project, p)| (format!("egress.projects.{project}.allow"), &p.allow)),
        );
        for (key, entries) in egress_lists {
            for entry in entries.iter().filter(|e| !egress_entry_ok(e)) {
                problems.push(format!(
                    "{key}: `{entry}` is not a network (10.0.0.0/8), an address or a host name"
                ));
            }
        }
        for (i, rule) in self.webhooks.github.rules.iter().enumerate() {
            if rule.workflow.is_some() == rule.job.is_some() {
                problems.push(format!(
                    "webhooks.github.rules[{i}] ({}): give exactly one of workflow or job",
                    rule.name
                ));
            }
            if let Some(job) = &rule.job {
                let executor = job["executor"].as_str().unwrap_or_default();
                for problem in orchion_spec::refuse_script_templates(executor, &job["spec"], "") {
                    problems.push(format!(
                        "webhooks.github.rules[{i}] ({}): job{}: {}",
                        rule.name, problem.pointer, problem.message
                    ));
                }
            }
        }
        if let Some(token) = &cluster.join_token {
            if let Err(problem) = token.validate_token() {
                problems.push(format!("cluster.join_token {problem}"));
            }
        }
        if let Some(oidc) = &self.auth.oidc {
            for (key, value) in [
                ("auth.oidc.issuer", &oidc.issuer),
                ("auth.oidc.redirect_url", &oidc.redirect_url),
            ] {
                if !url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                    problems.push(format!(
                        "{key} `{value}` must be an http:// or https:// URL"
                    ));
                }
            }
            if oidc.client_id.trim().is_empty() {
                problems.push("auth.oidc.client_id must not be empty".to_owned());
            }
            if !oidc.scopes.iter().any(|s| s == "openid") {
                problems.push("auth.oidc.scopes must include `openid`".to_owned());
            }
            if oidc.roles.is_empty() {
                problems.push(
                    "auth.oidc.roles must map at least one claim value to a role, or nobody can sign in"
                        .to_owned(),
                );
            }
            for (value, role) in &oidc.roles {
                if !matches!(role.as_str(), "viewer" | "operator" | "admin") {
                    problems.push(format!(
                        "auth.oidc.roles.{value} is `{role}`: expected viewer, operator or admin"
                    ));
                }
            }
        }
        match url::Url::parse(&self.enqueue.worker_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => problems.push(format!(
                "enqueue.worker_url `{}` must be an http:// or https:// URL",
                self.enqueue.worker_url
            )),
        }
        if !(1..=1000).contains(&self.enqueue.max_attempts) {
            problems.push("enqueue.max_attempts must be between 1 and 1000".to_owned());
        }
        if !(1..=1000).contains(&self.database.max_connections) {
            problems.push("database.max_connections must be between 1 and 1000".to_owned());
        }
        if let Some(url) = &self.database.url {
            if let Err(problem) = url.validate() {
                problems.push(format!("database.url {problem}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(format!(
                "invalid configuration: {}",
                problems.join("; ")
            )))
        }
    }

    /// The HTTP listen address.
    pub fn http_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen_addr(self.server.http_port)
    }

    /// The Prometheus endpoint's listen address, when metrics are enabled.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if !self.server.enable_metrics {
            return Ok(None);
        }
        self.listen_addr(self.server.metrics_port).map(Some)
    }

    /// The gRPC listen address.
    pub fn grpc_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen_addr(self.server.grpc_port)
    }

    fn listen_addr(&self, port: u16) -> Result<SocketAddr, ConfigError> {
        (self.server.host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                ConfigError(format!(
                    "server.host `{}` does not resolve to an address",
                    self.server.host
                ))
            })
    }

    /// Sections present only for compatibility, which the server ignores; it warns about each.
    pub fn ignored_sections(&self) -> Vec<&'static str> {
        let mut ignored = Vec::new();
        if self.redis.is_some() {
            ignored.push("redis (Orchion needs no Redis)");
        }
        if self.temporal.is_some() {
            ignored.push("temporal (Orchion is its own workflow engine)");
        }
        if self.telemetry.jaeger.is_some() {
            ignored.push(
                "telemetry.jaeger (Orchion exports OTLP, which Jaeger accepts: set telemetry.otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)",
            );
        }
        if self.database.max_idle_conns.is_some() {
            ignored.push("database.max_idle_conns (the pool manages idle connections)");
        }
        ignored
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError(e.to_string()))
    }
}

/// The key an `ORCHION_SECTION__KEY` variable sets, e.g. `server.http_port`.
fn orchion_env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if !rest.contains("__") {
        // ORCHION_LOG and friends are not configuration keys.
        return None;
    }
    Some(
        rest.to_ascii_lowercase()
            .split("__")
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// One layer: a dictionary with a name that error messages cite.
struct Layer {
    name: String,
    dict: Dict,
}

/// Keys of the workflow service's config.yaml that Orchion spells differently: `(theirs, ours)`
/// within a section. Renamed as a file is read, so either spelling works and both never clash.
const FILE_ALIASES: &[(&str, &str, &str)] = &[
    ("server", "port", "http_port"),
    ("database", "max_open_conns", "max_connections"),
];

impl Layer {
    fn file(path: &Path) -> Result<Self, ConfigError> {
        if let Err(e) = std::fs::metadata(path) {
            return Err(ConfigError(format!(
                "cannot read config file {}: {e}",
                path.display()
            )));
        }
        let data = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Toml::file_exact(path).data(),
            Some("yaml" | "yml") => Yaml::file_exact(path).data(),
            _ => {
                return Err(ConfigError(format!(
                    "config file {} must end in .toml, .yaml or .yml",
                    path.display()
                )));
            }
        };
        let mut dict = data
            .map_err(|e| {
                ConfigError(format!(
                    "invalid configuration: {}: {}",
                    path.display(),
                    e.to_string().replace('\n', " ")
                ))
            })?
            .remove(&Profile::Default)
            .unwrap_or_default();
        for (section, theirs, ours) in FILE_ALIASES {
            if let Some(Value::Dict(_, section)) = dict.get_mut(*section) {
                if let Some(value) = section.remove(*theirs) {
                    section.entry((*ours).to_owned()).or_insert(value);
                }
            }
        }
        Ok(Layer {
            name: format!("config file {}", path.display()),
            dict,
        })
    }

    fn env(var: &str, key: &str, value: &str) -> Self {
        let value = value.parse::<Value>().unwrap_or_else(|e| match e {});
        Layer {
            name: format!("environment variable {var}"),
            dict: nest(key, value),
        }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

fn nest(key: &str, value: Value) -> Dict {
    match figment::util::nest(key, value) {
        Value::Dict(_, dict) => dict,
        _ => Dict::new(),
    }
}

/// A figment error as one line, without figment's `default.` profile prefix.
fn one_line(error: figment::Error) -> String {
    let messages: Vec<String> = error
        .into_iter()
        .map(|e| e.to_string().replace("\"default.", "\"").replace('\n', " "))
        .collect();
    format!("invalid configuration: {}", messages.join("; "))
}

#[cfg(test)]
mod tests;

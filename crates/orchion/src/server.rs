//! `orchion server` and `orchion dev`: configuration → [`Server::build`] → [`Server::run`] until
//! SIGTERM or SIGINT. The server runs the HTTP API, the gRPC API for agents, the node liveness
//! reconciler, the lease reaper, the cron scheduler and the workflow engine.
//!
//! Shutdown: on the signal `/readyz` turns 503 at once; the listeners keep accepting for
//! `server.drain_delay`, then close; in-flight requests get `server.shutdown_grace` to finish;
//! the reconciler writes the last heartbeats; then the store is closed and the process exits 0.
//! `orchion dev` first stops its local agent, which tells the server it leaves.

use std::{net::SocketAddr, path::Path, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use orchion_api::{AppState, Lifecycle, Limits, executors::Probes};
use orchion_config::{Config, Sources};
use orchion_control::{
    Access, Background, Bootstrap, NodeRegistry, RegistrySettings, Replica, Scheduler, WorkQueue,
    Workflows,
};
use orchion_domain::LivenessPolicy;
use orchion_store::Store;
use rand::RngCore;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::{DevArgs, ServeArgs, ServerArgs},
    process::{LocalAgent, shutdown_signal},
    telemetry,
};

/// The file a generated join token is kept in, inside the data directory.
const JOIN_TOKEN_FILE: &str = "join-token";
/// The file the first admin token is kept in, inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Where the secrets key is kept when none is configured.
const SECRETS_KEY_FILE: &str = "secrets.key";

/// A server with its store open and its listeners bound, ready to run.
pub struct Server {
    config: Config,
    store: Arc<dyn Store>,
    registry: Arc<NodeRegistry>,
    /// This server's row among the replicas sharing the store.
    replica: Arc<Replica>,
    join_token: String,
    listener: TcpListener,
    grpc_listener: TcpListener,
    /// With TLS on, a plaintext gRPC listener on loopback for the agents this process runs
    /// itself (the `kubernetes` one, `orchion dev`'s): they need no certificate of their own.
    /// Like the main listener it admits only the join token and node credentials.
    local_grpc_listener: Option<TcpListener>,
    /// `/metrics`, unless metrics are disabled.
    metrics_listener: Option<TcpListener>,
    /// The `kubernetes` executor's defaults, checked at start.
    kubernetes: orchion_kubernetes::Settings,
    probes: Probes,
    access: Arc<Access>,
    secrets: Arc<orchion_control::Secrets>,
    /// An admin token this server knows the text of (made now, kept in the data directory, or
    /// configured): `orchion dev` gives it to the CLI.
    admin_token: Option<String>,
    /// The certificate HTTP and gRPC are served with, when `server.tls` is set.
    tls: Option<Arc<orchion_tls::ServerTls>>,
}

impl Server {
    /// Opens the store (creating the data directory for SQLite), loads the node registry and
    /// binds both listeners.
    pub async fn build(config: Config) -> anyhow::Result<Server> {
        if let Some(unknown) = config
            .engines
            .keys()
            .find(|name| !orchion_executor::ENGINES.contains(&name.as_str()))
        {
            anyhow::bail!(
                "configuration: engines.{unknown} is not an engine; expected one of {}",
                orchion_executor::ENGINES.join(", ")
            );
        }
        let kubernetes = crate::kubernetes::settings(&config.kubernetes)?;
        let data_dir = &config.server.data_dir;
        if config.database.url.is_none() {
            private_dir(data_dir)?;
        }
        let url = config.database.effective_url(data_dir);
        let store = orchion_store::connect(&url, config.database.max_connections)
            .await
            .with_context(|| {
                let shown = config
                    .database
                    .url
                    .as_ref()
                    .map_or_else(|| url.clone(), |u| u.redacted());
                format!("cannot open the store at {shown}")
            })?;
        let cluster = &config.cluster;
        let settings = RegistrySettings {
            policy: LivenessPolicy {
                timeout: cluster.heartbeat_timeout,
                down_after: cluster.down_after,
            },
            check_interval: cluster.check_interval,
        };
        if cluster.heartbeat_persist_interval != orchion_config::DEFAULT_HEARTBEAT_PERSIST_INTERVAL
        {
            tracing::warn!(
                "cluster.heartbeat_persist_interval is no longer used: the nodes heard are written every cluster.check_interval"
            );
        }
        let registry = Arc::new(
            NodeRegistry::load(store.clone(), settings)
                .await
                .context("cannot load the node registry")?,
        );
        let join_token = match &cluster.join_token {
            Some(token) => token.expose().to_owned(),
            None => join_token_in(data_dir)?,
        };
        let replica_name = format!("{}:{}", crate::process::host_name(), std::process::id());
        let replica = match Replica::start(
            store.clone(),
            &replica_name,
            &join_token,
            cluster.check_interval,
        )
        .await
        {
            Ok(replica) => Arc::new(replica),
            Err(orchion_store::StoreError::Conflict(why)) => anyhow::bail!("{why}"),
            Err(e) => return Err(e).context("cannot record this server among the replicas"),
        };
        let tls = match &config.server.tls {
            Some(files) => Some(Arc::new(
                orchion_tls::ServerTls::load(orchion_tls::TlsFiles {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                    client_ca: files.client_ca.clone(),
                })
                .context("server.tls")?,
            )),
            None => None,
        };
        let access = Arc::new(Access::new(store.clone()));
        let admin_token = bootstrap_admin(&access, &config).await?;
        let secrets = Arc::new(orchion_control::Secrets::new(
            store.clone(),
            secrets_key(&config)?,
        ));
        let addr = config.http_addr()?;
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} (is another server running? choose another --http-port)"
            )
        })?;
        let grpc_addr = config.grpc_addr()?;
        let grpc_listener = TcpListener::bind(grpc_addr).await.with_context(|| {
            format!("cannot listen on {grpc_addr} for gRPC (choose another --port)")
        })?;
        let local_grpc_listener = match &tls {
            Some(_) => Some(
                TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                    .await
                    .context("cannot listen on loopback for the server's own agents")?,
            ),
            None => None,
        };
        let metrics_listener = match config.metrics_addr()? {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for metrics (choose another --metrics-port, or set server.enable_metrics = false)")
            })?),
            None => None,
        };
        Ok(Server {
            config,
            store,
            registry,
            replica,
            join_token,
            listener,
            grpc_listener,
            local_grpc_listener,
            metrics_listener,
            kubernetes,
            probes: Probes::default(),
            access,
            secrets,
            admin_token,
            tls,
        })
    }

    /// An admin token's text, when this server knows one.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// The address the HTTP API is bound to.
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The address the gRPC API is bound to.
    pub fn grpc_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.grpc_listener.local_addr()?)
    }

    /// The gRPC URL the agents this process runs itself connect to.
    fn local_grpc_url(&self) -> anyhow::Result<String> {
        let listener = self
            .local_grpc_listener
            .as_ref()
            .unwrap_or(&self.grpc_listener);
        Ok(format!("http://{}", listener.local_addr()?))
    }

    /// `https` when the APIs are served over TLS, `http` otherwise.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Starts the `kubernetes` executor's supervisor (see [`crate::kubernetes`]).
    fn supervise_kubernetes(&self, data_dir: &Path) -> anyhow::Result<LocalAgent> {
        let supervised = crate::kubernetes::Supervised {
            config: self.config.kubernetes.clone(),
            settings: self.kubernetes.clone(),
            grpc: self.local_grpc_url()?,
            join_token: self.join_token.clone(),
            state_dir: crate::kubernetes::state_dir(data_dir),
            probes: self.probes.clone(),
        };
        Ok(crate::kubernetes::spawn(
            supervised,
            CancellationToken::new(),
        ))
    }

    /// The address `/metrics` is served on, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The token agents join with.
    pub fn join_token(&self) -> &str {
        &self.join_token
    }

    /// Serves until `shutdown` completes, then drains as the module documentation describes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            config,
            store,
            registry,
            replica,
            join_token,
            listener,
            grpc_listener,
            local_grpc_listener,
            metrics_listener,
            kubernetes: _,
            probes,
            access,
            secrets,
            admin_token: _,
            tls,
        } = self;
        let lifecycle = Arc::new(Lifecycle::new());
        let join_tokens = Arc::new(orchion_control::JoinTokens::new(store.clone(), &join_token));
        let webhook_project = configured_project(
            &store,
            "webhooks.github.project",
            config.webhooks.github.project.as_deref(),
        )
        .await?;
        let enqueue_project =
            configured_project(&store, "enqueue.project", config.enqueue.project.as_deref())
                .await?;
        let egress = egress_allow(&store, &config, enqueue_project).await?;
        let kubernetes_policy = Arc::new(kubernetes_policy(&store, &config).await?);
        let oidc = match &config.auth.oidc {
            Some(settings) => Some(Arc::new(oidc_login(&store, settings).await?)),
            None => None,
        };
        let retention = Arc::new(
            orchion_control::Retention::new(
                store.clone(),
                retention_policy(&store, &config.retention).await?,
            )
            .with_duty(replica.duty("retention", orchion_control::retention::RETENTION_INTERVAL)),
        );
        let work = Arc::new(WorkQueue::new(store.clone(), registry.clone()));
        let scheduler = Arc::new(Scheduler::new(store.clone(), work.clone()));
        let workflows = Arc::new(
            Workflows::new(store.clone(), work.clone()).with_periodic_pass(
                replica.duty("workflow_pass", orchion_control::workflows::PASS_INTERVAL),
            ),
        );
        let events = Arc::new(
            orchion_api::events::EventHub::new(
                store.clone(),
                config.server.max_event_streams,
                config.server.max_event_streams_per_client,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the event log: {e}"))?,
        );
        let app = orchion_api::router(
            AppState::new(orchion_api::Services {
                store: store.clone(),
                nodes: registry.clone(),
                work: work.clone(),
                scheduler: scheduler.clone(),
                workflows: workflows.clone(),
                webhooks: Arc::new(orchion_control::Webhooks::new(
                    config.webhooks.github.clone(),
                    webhook_project,
                    store.clone(),
                    work.clone(),
                    workflows.clone(),
                )),
                engines: Arc::new(
                    config
                        .engines
                        .iter()
                        .map(|(name, engine)| (name.clone(), engine.enabled))
                        .collect(),
                ),
                probes,
                events: events.clone(),
                lifecycle: lifecycle.clone(),
                enqueue: Arc::new(orchion_api::enqueue::EnqueueSettings {
                    worker_url: config.enqueue.worker_url.clone(),
                    max_attempts: config.enqueue.max_attempts,
                    project: enqueue_project,
                }),
                access: access.clone(),
                oidc,
                join_tokens: join_tokens.clone(),
                secrets: secrets.clone(),
                kubernetes: kubernetes_policy.clone(),
                throttle: Arc::new(orchion_api::auth::Throttle::new(
                    config.auth.max_failures_per_minute,
                )),
            }),
            Limits {
                body_limit_bytes: config.server.body_limit_bytes,
                request_timeout: config.server.request_timeout,
            },
            orchion_api::browser::Browser {
                allowed_hosts: config.server.allowed_hosts.clone(),
                allowed_origins: config.server.allowed_origins.clone(),
                loopback: listener.local_addr()?.ip().is_loopback(),
            },
        );
        let addr = listener.local_addr()?;
        let grpc_addr = grpc_listener.local_addr()?;
        let background = Background::new();
        let stopping = background.stopping();
        background.reconcile(replica);
        background.reconcile(registry.clone());
        background.reconcile(work.clone());
        background.reconcile(scheduler.clone());
        background.reconcile(workflows);
        background.reconcile(retention);
        background.spawn(orchion_control::follow_signals(
            store.clone(),
            work.clone(),
            scheduler,
            access.clone(),
            secrets.clone(),
            events.appended(),
            stopping.clone(),
        ));
        background.reconcile(events);
        background.reconcile(access);
        if let Some(listener) = metrics_listener {
            let addr = listener.local_addr()?;
            tracing::info!(%addr, "metrics listening on http://{addr}/metrics");
            let scrape = crate::metrics::Scrape {
                store: store.clone(),
                nodes: registry.clone(),
                lifecycle: lifecycle.clone(),
            };
            background.spawn(crate::metrics::serve(listener, scrape, stopping.clone()));
        }
        if let Some(tls) = &tls {
            background.spawn(orchion_tls::watch(tls.clone(), stopping.clone()));
        }
        if let Some(listener) = local_grpc_listener {
            background.spawn(orchion_grpc::serve(
                listener,
                None,
                orchion_grpc::NodeService::new(registry.clone(), join_tokens.clone()),
                orchion_grpc::WorkService::new(work.clone())
                    .with_egress(egress.clone())
                    .with_secrets(secrets.clone())
                    .with_kubernetes(kubernetes_policy.clone()),
                config.server.grpc_max_message_bytes,
                stopping.clone(),
            ));
        }
        let grpc = tokio::spawn(orchion_grpc::serve(
            grpc_listener,
            tls.clone(),
            orchion_grpc::NodeService::new(registry, join_tokens),
            orchion_grpc::WorkService::new(work)
                .with_egress(egress)
                .with_secrets(secrets)
                .with_kubernetes(kubernetes_policy),
            config.server.grpc_max_message_bytes,
            stopping.clone(),
        ));
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, backend = ?store.backend(), "HTTP API listening on {scheme}://{addr}");
        tracing::info!(addr = %grpc_addr, "gRPC API listening on {grpc_addr}");

        let closing = Arc::new(Notify::new());
        let drain_delay = config.server.drain_delay;
        let graceful = {
            let closing = closing.clone();
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                lifecycle.start_draining();
                tracing::info!(?drain_delay, "shutdown requested: draining");
                tokio::time::sleep(drain_delay).await;
                stopping.cancel();
                closing.notify_one();
            }
        };
        let limits = crate::http::ConnectionLimits {
            header_read_timeout: config.server.header_read_timeout,
            idle_timeout: config.server.idle_timeout,
            max_connections: config.server.max_connections,
        };
        let serve: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match tls {
            None => Box::pin(crate::http::serve(listener, app, limits, graceful)),
            Some(tls) => Box::pin(crate::http::serve(
                orchion_tls::accept(listener, move || tls.http()),
                app,
                limits,
                graceful,
            )),
        };
        let grace = config.server.shutdown_grace;
        tokio::select! {
            () = serve => {}
            () = deadline(&closing, grace) => {
                tracing::warn!(?grace, "in-flight requests did not finish within the shutdown grace; closing them");
            }
        }
        stopping.cancel();
        match tokio::time::timeout(grace, grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "the gRPC server failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "the gRPC server panicked"),
            Err(_) => tracing::warn!(
                ?grace,
                "gRPC calls did not finish within the shutdown grace"
            ),
        }
        // Every background task ends; the liveness reconciler writes the last heartbeats.
        if tokio::time::timeout(grace, background.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "background tasks did not stop within the shutdown grace"
            );
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Where tasks' HTTP requests may go besides public addresses: `egress.allow` for every
/// project, `egress.projects.<id>.allow` for one (a project that does not exist stops the
/// server), and for `/enqueue`'s forwards alone the configured worker's host, which they must
/// reach.
async fn egress_allow(
    store: &Arc<dyn Store>,
    config: &Config,
    enqueue_project: orchion_domain::ProjectId,
) -> anyhow::Result<orchion_grpc::EgressAllow> {
    let mut projects: std::collections::HashMap<orchion_domain::ProjectId, Vec<String>> =
        std::collections::HashMap::new();
    for (id, project) in &config.egress.projects {
        let key = format!("egress.projects.{id}");
        let id = configured_project(store, &key, Some(id)).await?;
        projects
            .entry(id)
            .or_default()
            .extend(project.allow.iter().cloned());
    }
    let forward = url::Url::parse(&config.enqueue.worker_url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
        .map(|host| orchion_grpc::Forward {
            project: enqueue_project,
            url: orchion_api::enqueue::forward_url(&config.enqueue.worker_url),
            host,
        });
    Ok(orchion_grpc::EgressAllow::new(
        config.egress.allow.clone(),
        projects,
        forward,
    ))
}

/// What `kubernetes` jobs may name (`kubernetes.allow`, `kubernetes.projects.<id>`, and never
/// `kubernetes.control_plane`'s names nor, in a cluster, the service account this server runs
/// as); a project that does not exist stops the server.
async fn kubernetes_policy(
    store: &Arc<dyn Store>,
    config: &Config,
) -> anyhow::Result<orchion_spec::executor::KubernetesPolicy> {
    use orchion_spec::executor::{KubernetesNames, KubernetesPolicy};
    let names = |allow: &orchion_config::KubernetesAllow| KubernetesNames {
        namespaces: allow.namespaces.clone(),
        service_accounts: allow.service_accounts.clone(),
        secrets: allow.secrets.clone(),
    };
    let mut projects = std::collections::BTreeMap::new();
    for (id, allow) in &config.kubernetes.projects {
        let key = format!("kubernetes.projects.{id}");
        projects.insert(
            configured_project(store, &key, Some(id)).await?,
            names(allow),
        );
    }
    let mut service_accounts = config.kubernetes.control_plane.service_accounts.clone();
    service_accounts.extend(own_service_account());
    Ok(KubernetesPolicy {
        namespace: config.kubernetes.namespace.clone(),
        everyone: names(&config.kubernetes.allow),
        projects,
        control_plane: KubernetesNames {
            service_accounts,
            secrets: config.kubernetes.control_plane.secrets.clone(),
            namespaces: Vec::new(),
        },
    })
}

/// The service account this server runs as, in a cluster: the `sub` of the token Kubernetes
/// mounts (`system:serviceaccount:<namespace>:<name>`).
fn own_service_account() -> Option<String> {
    use base64::Engine as _;
    let token =
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/token").ok()?;
    let payload = token.trim().split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?,
    )
    .ok()?;
    let subject = claims["sub"].as_str()?;
    subject
        .strip_prefix("system:serviceaccount:")?
        .split(':')
        .nth(1)
        .map(str::to_owned)
}

/// The project a configured identity acts in (`webhooks.github.project`, `enqueue.project`):
/// the default project when none is set; one that does not exist stops the server, naming the
/// key.
async fn configured_project(
    store: &Arc<dyn Store>,
    key: &str,
    value: Option<&str>,
) -> anyhow::Result<orchion_domain::ProjectId> {
    let Some(value) = value else {
        return Ok(orchion_domain::ProjectId::DEFAULT);
    };
    let id: orchion_domain::ProjectId = value
        .parse()
        .map_err(|e| anyhow::anyhow!("{key} `{value}`: {e}"))?;
    match store.get_project(id).await {
        Ok(_) => Ok(id),
        Err(orchion_store::StoreError::NotFound { .. }) => {
            anyhow::bail!(
                "{key}: there is no project `{id}` (make it first: orchion project create)"
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the project of {key}")),
    }
}

/// The dashboard's identity provider, as `auth.oidc` configures it. Its discovery document is
/// read at the first sign-in, so a provider that is down does not stop the server.
async fn oidc_login(
    store: &Arc<dyn Store>,
    settings: &orchion_config::OidcConfig,
) -> anyhow::Result<orchion_api::oidc::OidcLogin> {
    let mut roles = std::collections::BTreeMap::new();
    for (value, role) in &settings.roles {
        let role: orchion_domain::Role = role
            .parse()
            .map_err(|e| anyhow::anyhow!("auth.oidc.roles.{value}: {e}"))?;
        roles.insert(value.clone(), role);
    }
    let provider = orchion_oidc::Provider::new(orchion_oidc::Settings {
        issuer: settings.issuer.clone(),
        client_id: settings.client_id.clone(),
        client_secret: settings
            .client_secret
            .as_ref()
            .map(|s| s.expose().to_owned()),
        redirect_url: settings.redirect_url.clone(),
        scopes: settings.scopes.clone(),
        role_claim: settings.role_claim.clone(),
        roles,
    })
    .context("auth.oidc")?;
    let mut fresh = [0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    let key = store
        .cluster_secret(orchion_api::oidc::COOKIE_KEY, &fresh)
        .await
        .context("cannot read the sign-in cookie key")?;
    Ok(orchion_api::oidc::OidcLogin {
        provider,
        issuer: settings.issuer.clone(),
        name: settings.name.clone(),
        key,
    })
}

/// The retention policy of `retention`, each project it names checked to exist.
async fn retention_policy(
    store: &Arc<dyn Store>,
    retention: &orchion_config::RetentionConfig,
) -> anyhow::Result<orchion_control::RetentionPolicy> {
    let mut projects = Vec::new();
    for (id, kept) in &retention.projects {
        let key = format!("retention.projects.{id}");
        projects.push((
            configured_project(store, &key, Some(id)).await?,
            kept.finished,
        ));
    }
    Ok(orchion_control::RetentionPolicy {
        finished: retention.finished,
        projects,
        events: retention.events,
        deliveries: retention.deliveries,
        idempotency_keys: retention.idempotency_keys,
        audit: retention.audit,
        down_nodes: retention.down_nodes,
    })
}

/// The join token kept in `<data_dir>/join-token`, generated on first use. The file is readable
/// by its owner only; the token is never logged.
fn join_token_in(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(JOIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &token)?;
    tracing::info!(path = %path.display(), "generated the cluster join token");
    Ok(token)
}

/// The key secrets are sealed with: `secrets.key`, the file `secrets.key_file`, or the one
/// kept in `<data_dir>/secrets.key`, made on first use (mode 0600). Never logged; its id is.
fn secrets_key(config: &Config) -> anyhow::Result<orchion_control::SecretKey> {
    use orchion_control::SecretKey;
    let (text, from) = match (&config.secrets.key, &config.secrets.key_file) {
        (Some(key), _) => (key.expose().to_owned(), "secrets.key".to_owned()),
        (None, Some(path)) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read secrets.key_file {}", path.display()))?,
            format!("secrets.key_file {}", path.display()),
        ),
        (None, None) => {
            let path = config.server.data_dir.join(SECRETS_KEY_FILE);
            match std::fs::read_to_string(&path) {
                Ok(text) => (text, path.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let (key, text) = SecretKey::generate().map_err(anyhow::Error::msg)?;
                    write_private(&path, &text)?;
                    tracing::info!(path = %path.display(), key_id = %key.id(), "generated the secrets key");
                    return Ok(key);
                }
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        }
    };
    let key = SecretKey::from_text(&text).map_err(|why| anyhow::anyhow!("{from}: {why}"))?;
    tracing::info!(key_id = %key.id(), "secrets are sealed with the key from {from}");
    Ok(key)
}

/// The admin token configured (`auth.admin_token`, or the file `auth.admin_token_file`).
fn configured_admin_token(auth: &orchion_config::AuthConfig) -> anyhow::Result<Option<String>> {
    let text = match (&auth.admin_token, &auth.admin_token_file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("configuration: set auth.admin_token or auth.admin_token_file, not both")
        }
        (Some(token), None) => token.expose().trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read auth.admin_token_file {}", path.display()))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if text.chars().count() < orchion_control::access::MIN_CONFIGURED_TOKEN_CHARS {
        anyhow::bail!(
            "configuration: the admin token must be at least {} characters",
            orchion_control::access::MIN_CONFIGURED_TOKEN_CHARS
        );
    }
    Ok(Some(text))
}

/// Makes sure an admin token exists (see [`Access::bootstrap`]). The first one the cluster
/// makes is printed once and kept in `<data_dir>/admin-token` (mode 0600).
async fn bootstrap_admin(access: &Access, config: &Config) -> anyhow::Result<Option<String>> {
    let configured = configured_admin_token(&config.auth)?;
    let path = config.server.data_dir.join(ADMIN_TOKEN_FILE);
    let outcome = access
        .bootstrap(configured.as_deref())
        .await
        .context("cannot set up the admin token")?;
    Ok(match outcome {
        Bootstrap::Configured => configured,
        Bootstrap::ConfiguredRevoked => {
            tracing::warn!("the configured admin token was revoked; it stays refused");
            None
        }
        Bootstrap::Made(text) => {
            match write_private(&path, &text) {
                Ok(()) => eprintln!(
                    "Made the first admin token (shown this once; also kept in {}):\n  {text}\n",
                    path.display()
                ),
                Err(e) => {
                    eprintln!("Made the first admin token (shown this once; {e:#}):\n  {text}\n")
                }
            }
            Some(text)
        }
        Bootstrap::Existing => std::fs::read_to_string(&path)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
    })
}

/// Creates `dir` if needed and makes it this user's alone (0700): it holds the database, the
/// first admin token and the join token.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read data directory {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "cannot make data directory {} private (0700)",
                    dir.display()
                )
            },
        )?;
    }
    Ok(())
}

/// Writes `text` to a file only its owner may read.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{text}").with_context(|| format!("cannot write {}", path.display()))
}

/// Completes `grace` after the listener closes.
async fn deadline(closing: &Notify, grace: Duration) {
    closing.notified().await;
    tokio::time::sleep(grace).await;
}

/// Which command started the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Dev,
    Server,
}

/// `orchion dev`.
pub async fn dev(args: DevArgs) -> ExitCode {
    start(Mode::Dev, args.serve, args.inherit_env).await
}

/// `orchion server`.
pub async fn serve(args: ServerArgs) -> ExitCode {
    start(Mode::Server, args.serve, Vec::new()).await
}

/// The configuration flags set, as `(key, value)` layers over file and environment.
fn flag_layers(args: &ServeArgs) -> Vec<(&'static str, orchion_config::Value)> {
    let mut flags = Vec::new();
    if let Some(host) = &args.host {
        flags.push(("server.host", host.clone().into()));
    }
    if let Some(port) = args.http_port {
        flags.push(("server.http_port", port.into()));
    }
    if let Some(port) = args.port {
        flags.push(("server.grpc_port", port.into()));
    }
    if let Some(port) = args.metrics_port {
        flags.push(("server.metrics_port", port.into()));
    }
    if let Some(dir) = &args.data_dir {
        flags.push(("server.data_dir", dir.display().to_string().into()));
    }
    if let Some(url) = &args.database_url {
        flags.push(("database.url", url.clone().into()));
    }
    if let Some(timeout) = &args.heartbeat_timeout {
        flags.push(("cluster.heartbeat_timeout", timeout.clone().into()));
    }
    if let Some(token) = &args.join_token {
        flags.push(("cluster.join_token", token.clone().into()));
    }
    flags
}

/// `inherit_env` is what the local agent of `orchion dev` passes on to its tasks.
async fn start(mode: Mode, args: ServeArgs, inherit_env: Vec<String>) -> ExitCode {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let sources = Sources {
        file: args.config.clone(),
        env: env.clone(),
        flags: flag_layers(&args),
    };
    let config = match Config::load(&sources) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        return match config.to_redacted_toml() {
            Ok(toml) => {
                print!("{toml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let export = config
        .telemetry
        .exporting_to()
        .map(|endpoint| orchion_otel::Export {
            endpoint: endpoint.to_owned(),
            service_name: config.telemetry.service_name.clone(),
            environment: config.telemetry.environment.clone(),
        });
    let traces = match telemetry::init(&config.log, &env, export) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for section in config.ignored_sections() {
        tracing::warn!("configuration section ignored: {section}");
    }
    let data_dir = config.server.data_dir.clone();
    // Installed before anything is announced.
    let signal = shutdown_signal();
    let server = match Server::build(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot start");
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut agents = Vec::new();
    match server.supervise_kubernetes(&data_dir) {
        Ok(supervisor) => agents.push(supervisor),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    if mode == Mode::Dev {
        match start_local_agent(&server, &data_dir, inherit_env) {
            Ok(agent) => agents.push(agent),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    // The local agents leave before the server drains, so their nodes leave cleanly.
    let stop_agents_first = async move {
        signal.await;
        for agent in agents {
            agent.stop().await;
        }
    };
    let result = server.run(stop_agents_first).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    finish(result)
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "server failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Gives the CLI the dev server's admin token, as the context `dev` (made current unless the
/// user chose another); says what it did.
fn sign_in_cli(server: &str, token: &str) -> String {
    use crate::client::contexts::{CliConfig, Context};

    let mut config = match CliConfig::load() {
        Ok(config) => config,
        Err(e) => return format!("not signed in: {e}"),
    };
    if config.current.as_deref().is_some_and(|c| c != "dev") {
        return format!(
            "context `dev` not made current (you use `{}`); `orchion context use dev` after `orchion login --context dev --server {server}`",
            config.current.as_deref().unwrap_or_default()
        );
    }
    config.set(
        "dev",
        Context {
            server: server.to_owned(),
            token: Some(token.to_owned()),
            ca: None,
        },
    );
    match config.save() {
        Ok(path) => format!("signed in as admin (context `dev`, in {})", path.display()),
        Err(e) => format!("not signed in: {e}"),
    }
}

/// Prints where everything is (the join token included: this is the developer's own terminal),
/// and starts the local agent over real gRPC.
fn start_local_agent(
    server: &Server,
    data_dir: &Path,
    inherit_env: Vec<String>,
) -> anyhow::Result<LocalAgent> {
    let addr = server.http_addr()?;
    let grpc = server.grpc_addr()?;
    let local_grpc = server.local_grpc_url()?;
    let scheme = server.scheme();
    let data = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let metrics = server
        .metrics_addr()
        .map_or("off".to_owned(), |a| format!("http://{a}/metrics"));
    let cli = match server.admin_token() {
        Some(token) => sign_in_cli(&format!("{scheme}://{addr}"), token),
        None => format!(
            "the CLI needs a token: `orchion login --server {scheme}://{addr}` (the first admin token is in {})",
            data.join(ADMIN_TOKEN_FILE).display()
        ),
    };
    eprintln!(
        "\nOrchion dev server\n  Dashboard   {scheme}://{addr}/\n  API         {scheme}://{addr}/api/v1\n  API docs    {scheme}://{addr}/docs\n  Health      {scheme}://{addr}/readyz\n  Events      {scheme}://{addr}/api/v1/events\n  Metrics     {metrics}\n  gRPC        {grpc}\n  Join token  {}\n  Admin token in {} (curl -H \"Authorization: Bearer $(cat {})\" …)\n  CLI         {cli}\n  Data        {}\n\nA local agent has joined. More can join with:\n  orchion agent --server {scheme}://{grpc} --join-token <the token above>\n\nPress Ctrl-C to stop.\n",
        server.join_token(),
        data.join(ADMIN_TOKEN_FILE).display(),
        data.join(ADMIN_TOKEN_FILE).display(),
        data.display()
    );
    let config = orchion_agent::AgentConfig {
        servers: vec![local_grpc],
        tls: Default::default(),
        join_token: server.join_token().to_owned(),
        name: crate::process::host_name(),
        labels: Default::default(),
        state_dir: data_dir.join("agent"),
        executors: orchion_engines::executors(&data_dir.join("agent").join("engines")),
        slots: usize::from(crate::cli::DEFAULT_SLOTS),
        inherit_env,
    };
    LocalAgent::spawn(config)
}

//! `orchion server` and `orchion dev`: configuration → [`Server::build`] → [`Server::run`] until
//! SIGTERM or SIGINT.
//!
//! Shutdown: on the signal `/readyz` turns 503 at once; the listener keeps accepting for
//! `server.drain_delay`, then closes; in-flight requests get `server.shutdown_grace` to finish;
//! then the store is closed and the process exits 0.

use std::{future::Future, net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use orchion_api::{AppState, Lifecycle, Limits};
use orchion_config::{Config, Sources};
use orchion_store::Store;
use tokio::{net::TcpListener, sync::Notify};

use crate::{
    cli::{DevArgs, ServeArgs, ServerArgs},
    telemetry,
};

/// A server with its store open and its listener bound, ready to run.
pub struct Server {
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
}

impl Server {
    /// Opens the store (creating the data directory for SQLite) and binds the HTTP listener.
    pub async fn build(config: Config) -> anyhow::Result<Server> {
        let data_dir = &config.server.data_dir;
        if config.database.url.is_none() {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
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
        let addr = config.http_addr()?;
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} (is another server running? choose another --http-port)"
            )
        })?;
        Ok(Server {
            config,
            store,
            listener,
        })
    }

    /// The address the HTTP API is bound to.
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` completes, then drains as the module documentation describes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            config,
            store,
            listener,
        } = self;
        let lifecycle = Arc::new(Lifecycle::new());
        let app = orchion_api::router(
            AppState {
                store: store.clone(),
                lifecycle: lifecycle.clone(),
            },
            Limits {
                body_limit_bytes: config.server.body_limit_bytes,
            },
        );
        let addr = listener.local_addr()?;
        tracing::info!(%addr, backend = ?store.backend(), "HTTP API listening on http://{addr}");

        let closing = Arc::new(Notify::new());
        let drain_delay = config.server.drain_delay;
        let graceful = {
            let closing = closing.clone();
            async move {
                shutdown.await;
                lifecycle.start_draining();
                tracing::info!(?drain_delay, "shutdown requested: draining");
                tokio::time::sleep(drain_delay).await;
                closing.notify_one();
            }
        };
        let serve = axum::serve(listener, app).with_graceful_shutdown(graceful);
        let grace = config.server.shutdown_grace;
        tokio::select! {
            result = serve => result.context("the HTTP server failed")?,
            () = deadline(&closing, grace) => {
                tracing::warn!(?grace, "in-flight requests did not finish within the shutdown grace; closing them");
            }
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Completes `grace` after the listener closes.
async fn deadline(closing: &Notify, grace: Duration) {
    closing.notified().await;
    tokio::time::sleep(grace).await;
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Which command started the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Dev,
    Server,
}

/// `orchion dev`.
pub async fn dev(args: DevArgs) -> ExitCode {
    start(Mode::Dev, args.serve).await
}

/// `orchion server`.
pub async fn serve(args: ServerArgs) -> ExitCode {
    start(Mode::Server, args.serve).await
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
    if let Some(dir) = &args.data_dir {
        flags.push(("server.data_dir", dir.display().to_string().into()));
    }
    if let Some(url) = &args.database_url {
        flags.push(("database.url", url.clone().into()));
    }
    flags
}

async fn start(mode: Mode, args: ServeArgs) -> ExitCode {
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
    if let Err(e) = telemetry::init(&config.log, &env) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    for section in config.ignored_sections() {
        tracing::warn!("configuration section ignored: {section}");
    }
    let data_dir = config.server.data_dir.clone();
    let server = match Server::build(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot start");
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if mode == Mode::Dev {
        if let Ok(addr) = server.http_addr() {
            let data = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
            eprintln!(
                "\nOrchion dev server\n  API       http://{addr}/api/v1\n  API docs  http://{addr}/docs\n  Health    http://{addr}/readyz\n  Data      {}\n\nPress Ctrl-C to stop.\n",
                data.display()
            );
        }
    }
    match server.run(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "server failed");
            ExitCode::FAILURE
        }
    }
}

//! `orchion agent`: runs the node agent until SIGTERM or SIGINT, then leaves the cluster.

use std::process::ExitCode;

use orchion_agent::{Agent, AgentConfig};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::AgentArgs,
    process::{host_name, shutdown_signal},
    telemetry,
};

/// The server address as a URL: `host:port` gets `https://` when TLS options are given,
/// `http://` otherwise.
pub fn server_url(raw: &str, tls: bool) -> String {
    if raw.contains("://") {
        raw.to_owned()
    } else if tls {
        format!("https://{raw}")
    } else {
        format!("http://{raw}")
    }
}

pub async fn run(args: AgentArgs) -> ExitCode {
    let log = orchion_config::LogConfig {
        level: args.log.clone(),
        ..Default::default()
    };
    let export = args
        .otlp_endpoint
        .clone()
        .filter(|e| !e.trim().is_empty())
        .map(|endpoint| orchion_otel::Export {
            endpoint,
            service_name: args.service_name.clone(),
            environment: None,
        });
    let traces = match telemetry::init(&log, &[], export) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = orchion_agent::AgentTls {
        ca: args.ca,
        cert: args.cert,
        key: args.key,
    };
    let with_tls = tls.ca.is_some() || tls.cert.is_some();
    let config = AgentConfig {
        servers: args
            .server
            .iter()
            .map(|s| server_url(s.trim(), with_tls))
            .collect(),
        tls,
        join_token: args.join_token,
        name: args.name.unwrap_or_else(host_name),
        labels: args.labels.into_iter().collect(),
        executors: orchion_engines::executors(&args.state_dir.join("engines")),
        state_dir: args.state_dir,
        slots: usize::from(args.slots),
        inherit_env: args.inherit_env,
    };
    let agent = match Agent::new(config) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let signal = {
        let shutdown = shutdown.clone();
        let signal = shutdown_signal();
        async move {
            signal.await;
            shutdown.cancel();
        }
    };
    tokio::spawn(signal);
    let result = agent.run(shutdown).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent stopped");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

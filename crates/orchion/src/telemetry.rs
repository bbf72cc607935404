//! Logging and tracing. Logs: JSON lines when stdout is not a terminal, human-readable text when
//! it is; the level comes from `ORCHION_LOG`, else `RUST_LOG`, else the configuration. Traces:
//! exported over OTLP when an endpoint is configured (`orchion-otel`), under the same filter.

use std::io::IsTerminal;

use orchion_config::{LogConfig, LogFormat};
use orchion_otel::{Export, Exporter};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Installs the global subscriber, with the trace exporter when `export` names an endpoint.
/// Fails with a message naming the bad filter or endpoint. Keep the exporter and shut it down
/// at exit, so the last spans are sent.
pub fn init(
    config: &LogConfig,
    env: &[(String, String)],
    export: Option<Export>,
) -> anyhow::Result<Option<Exporter>> {
    let from_env = ["ORCHION_LOG", "RUST_LOG"]
        .iter()
        .find_map(|name| env.iter().find(|(k, v)| k == name && !v.is_empty()))
        .map(|(name, value)| (name.as_str(), value.as_str()));
    let (source, directives) = from_env.unwrap_or(("log.level", config.level.as_str()));
    let filter = EnvFilter::try_new(directives)
        .map_err(|e| anyhow::anyhow!("invalid log filter `{directives}` in {source}: {e}"))?;
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let (exporter, traces) = match export {
        Some(export) => {
            let (exporter, layer) = orchion_otel::exporter(&export).map_err(anyhow::Error::msg)?;
            (Some(exporter), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(exporter)
}

//! Logging: JSON lines when stdout is not a terminal, human-readable text when it is. The level
//! comes from `ORCHION_LOG`, else `RUST_LOG`, else the configuration.

use std::io::IsTerminal;

use orchion_config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Fails with a message naming the bad filter.
pub fn init(config: &LogConfig, env: &[(String, String)]) -> anyhow::Result<()> {
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

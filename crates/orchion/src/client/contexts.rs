//! Where the CLI talks to and as whom: named contexts (a server and a token, in the manner of
//! kubectl's and nomad's), kept in `cli.toml` under the user's configuration directory with mode
//! 0600, and `orchion login`, `orchion logout`, `orchion context`.
//!
//! A command's server is `--addr`/`ORCHION_ADDR`, else the current context's, else
//! `http://127.0.0.1:8080`. Its token is `--token`/`ORCHION_TOKEN`, else the context's — and a
//! context's token goes only to that context's own server, never to another `--addr`.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use serde::{Deserialize, Serialize};

use crate::{
    cli::{ClientArgs, ContextCommand, LoginArgs},
    client::CliError,
};

/// The server a command talks to when nothing names one.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:8080";

/// The CLI's own configuration file.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// The context commands use when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One server and the token to use there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The authority (PEM file) the server's certificate must chain to; the system's roots
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// Where a command goes, as whom, and whom it trusts.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub addr: String,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
}

impl Target {
    /// A client for this target; the CA file is read now, and a problem with it named.
    pub fn client(&self) -> Result<orchion_client::Client, CliError> {
        let ca = match &self.ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                CliError(format!("cannot read the CA file {}: {e}", path.display()))
            })?),
            None => None,
        };
        Ok(orchion_client::Client::with_ca(
            &self.addr,
            self.token.as_deref(),
            ca.as_deref(),
        )?)
    }
}

/// `$ORCHION_CLI_CONFIG`, else `$XDG_CONFIG_HOME/orchion/cli.toml`, else
/// `$HOME/.config/orchion/cli.toml`; `None` without a home.
pub fn config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORCHION_CLI_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("orchion").join("cli.toml"))
}

impl CliConfig {
    /// The configuration on disk; empty when there is none.
    pub fn load() -> Result<Self, CliError> {
        let Some(path) = config_path() else {
            return Ok(Self::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                CliError(format!(
                    "{} is not a valid CLI configuration: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(CliError(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Writes the configuration, readable by its owner only.
    pub fn save(&self) -> Result<PathBuf, CliError> {
        let path = config_path().ok_or_else(|| {
            CliError(
                "no home directory to keep the CLI configuration in; set ORCHION_CLI_CONFIG".into(),
            )
        })?;
        let text = toml::to_string_pretty(self)
            .map_err(|e| CliError(format!("cannot write the CLI configuration: {e}")))?;
        crate::server::write_private(&path, text.trim_end())
            .map_err(|e| CliError(format!("{e:#}")))?;
        Ok(path)
    }

    /// Adds or replaces a context and makes it the current one.
    pub fn set(&mut self, name: &str, context: Context) {
        self.contexts.insert(name.to_owned(), context);
        self.current = Some(name.to_owned());
    }
}

/// The server, token and authority a client command uses (see the module's documentation).
pub fn resolve(args: &ClientArgs) -> Result<Target, CliError> {
    let config = CliConfig::load()?;
    let named = args.context.as_deref().or(config.current.as_deref());
    let context = match named {
        Some(name) => match config.contexts.get(name) {
            Some(context) => Some(context.clone()),
            None if args.context.is_some() => {
                return Err(CliError(format!(
                    "there is no context `{name}`; see `orchion context ls`"
                )));
            }
            None => None,
        },
        None => None,
    };
    let addr = args
        .addr
        .clone()
        .or_else(|| context.as_ref().map(|c| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let own = context.filter(|c| same_server(&c.server, &addr));
    let token = args
        .token
        .clone()
        .or_else(|| own.as_ref().and_then(|c| c.token.clone()));
    let ca = args.ca.clone().or_else(|| own.and_then(|c| c.ca));
    Ok(Target { addr, token, ca })
}

fn same_server(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// `orchion login`: checks a token against the server and keeps both as a context.
pub async fn login(args: LoginArgs) -> ExitCode {
    let result = async {
        let server = args
            .server
            .clone()
            .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
        let token = match args.token {
            Some(token) => token,
            None => {
                eprint!("API token for {server}: ");
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| CliError(format!("cannot read the token: {e}")))?;
                line.trim().to_owned()
            }
        };
        if token.is_empty() {
            return Err(CliError("no token given".into()));
        }
        let target = Target {
            addr: server.clone(),
            token: Some(token),
            ca: args.ca.clone(),
        };
        let session = target.client()?.session().await?;
        let mut config = CliConfig::load()?;
        config.set(
            &args.context,
            Context {
                server: server.clone(),
                token: target.token,
                ca: target.ca,
            },
        );
        let path = config.save()?;
        let scope = session
            .project_id
            .map_or_else(|| "every project".to_owned(), |p| format!("project {p}"));
        println!(
            "Signed in to {server} as {} ({}, {scope}); context `{}` saved in {}",
            session.actor,
            session.role,
            args.context,
            path.display()
        );
        Ok::<(), CliError>(())
    }
    .await;
    exit(result)
}

/// `orchion logout`: forgets a context's token.
pub fn logout(context: Option<String>) -> ExitCode {
    let result = (|| {
        let mut config = CliConfig::load()?;
        let name = context
            .or_else(|| config.current.clone())
            .ok_or_else(|| CliError("no context is in use".into()))?;
        let entry = config
            .contexts
            .get_mut(&name)
            .ok_or_else(|| CliError(format!("there is no context `{name}`")))?;
        entry.token = None;
        config.save()?;
        println!(
            "Forgot the token of context `{name}` (revoke it with `orchion token revoke` if it leaked)"
        );
        Ok(())
    })();
    exit(result)
}

/// `orchion context ls|use|rm`.
pub fn context(command: ContextCommand) -> ExitCode {
    let result = (|| {
        let mut config = CliConfig::load()?;
        match command {
            ContextCommand::Ls => {
                let mut table = super::Table::new(vec!["CURRENT", "NAME", "SERVER", "TOKEN"]);
                for (name, context) in &config.contexts {
                    table.row(vec![
                        if config.current.as_deref() == Some(name) {
                            "*"
                        } else {
                            ""
                        }
                        .to_owned(),
                        name.clone(),
                        context.server.clone(),
                        if context.token.is_some() {
                            "set"
                        } else {
                            "none"
                        }
                        .to_owned(),
                    ]);
                }
                print!("{}", table.render());
            }
            ContextCommand::Use { name } => {
                if !config.contexts.contains_key(&name) {
                    return Err(CliError(format!(
                        "there is no context `{name}`; see `orchion context ls`"
                    )));
                }
                config.current = Some(name.clone());
                config.save()?;
                println!("Using context `{name}`");
            }
            ContextCommand::Rm { name } => {
                if config.contexts.remove(&name).is_none() {
                    return Err(CliError(format!("there is no context `{name}`")));
                }
                if config.current.as_deref() == Some(&name) {
                    config.current = None;
                }
                config.save()?;
                println!("Removed context `{name}`");
            }
        }
        Ok(())
    })();
    exit(result)
}

fn exit(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_token_goes_only_to_its_own_server() {
        assert!(same_server("http://a:1/", "http://a:1"));
        assert!(!same_server("http://a:1", "http://b:1"));
    }

    #[test]
    fn the_configuration_reads_back() {
        let mut config = CliConfig::default();
        config.set(
            "dev",
            Context {
                server: "http://127.0.0.1:8080".into(),
                token: Some("orc_x".into()),
                ca: Some("/etc/orchion/ca.pem".into()),
            },
        );
        let text = toml::to_string_pretty(&config).unwrap();
        assert_eq!(toml::from_str::<CliConfig>(&text).unwrap(), config);
    }
}

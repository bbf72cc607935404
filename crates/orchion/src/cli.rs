//! The command line: subcommands, their flags, and how flags become configuration.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Orchion: an orchestrator in one binary.
#[derive(Debug, Parser)]
#[command(name = "orchion", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server for local use: SQLite under ./.orchion, API and docs on localhost.
    Dev(DevArgs),
    /// Run the control plane.
    Server(ServerArgs),
    /// Manage projects.
    Project(ProjectArgs),
}

/// Flags every server mode takes.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML or YAML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The address the HTTP API listens on.
    #[arg(long)]
    pub host: Option<String>,
    /// The HTTP API's port (0 picks a free one).
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// Where the server keeps its files.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of the client verbs.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The Orchion server to talk to.
    #[arg(
        long,
        global = true,
        env = "ORCHION_ADDR",
        default_value = "http://127.0.0.1:8080"
    )]
    pub addr: String,
    /// How to print results.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct ProjectArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ProjectCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project.
    Create {
        /// The project's name.
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// A classifier such as `standard`.
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// Makes the command safe to repeat: the same key returns the same project.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show a project.
    Get { id: String },
    /// List projects.
    #[command(alias = "list")]
    Ls {
        /// Only projects with this status (`active` or `archived`).
        #[arg(long)]
        status: Option<String>,
        /// At most this many per page.
        #[arg(long)]
        limit: Option<u32>,
        /// Continue after a previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Follow every page to the end.
        #[arg(long, conflicts_with = "cursor")]
        all: bool,
    },
    /// Change a project's fields.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// `active` or `archived`.
        #[arg(long)]
        status: Option<String>,
    },
    /// Delete a project.
    #[command(alias = "delete")]
    Rm { id: String },
}

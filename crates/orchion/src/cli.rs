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
    /// Run a node agent: join a server, heartbeat, run work.
    Agent(AgentArgs),
    /// Inspect and manage nodes.
    Node(NodeArgs),
    /// Submit and manage jobs.
    Job(JobArgs),
    /// Manage cron schedules.
    Schedule(ScheduleArgs),
    /// Store and read workflow types: versioned DAGs of steps.
    WorkflowType(WorkflowTypeArgs),
    /// Start and manage workflow runs.
    Run(RunArgs),
    /// Deploy resources through engines, in dependency order, rolled back on failure.
    Deploy(DeployArgs),
    /// Measure Orchion: starts a real server and drives it over its public interfaces.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Manage projects.
    Project(ProjectArgs),
    /// Sign in to a server with an API token, kept as a named context.
    Login(LoginArgs),
    /// Forget a context's token.
    Logout {
        /// The context (default: the current one).
        #[arg(long)]
        context: Option<String>,
    },
    /// List and switch the servers the CLI talks to.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Make, list and revoke API tokens.
    Token(TokenArgs),
    /// Read the audit log: who changed what, and how it ended.
    Audit(AuditArgs),
    /// Make, list and revoke the join tokens agents join the cluster with.
    JoinToken(JoinTokenArgs),
    /// Set, list and remove a project's secrets (values go in, never come out).
    Secret(SecretArgs),
}

#[derive(Debug, Args)]
pub struct SecretArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The project (its id); default: the token's own project, else `default`.
    #[arg(long, global = true)]
    pub project: Option<String>,
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret's value (made, or its next version). The value is read from stdin unless
    /// `--from-file` is given, so it stays out of the shell's history; one trailing newline is
    /// dropped.
    Set {
        name: String,
        /// Read the value from this file instead (kept exactly, newlines and all).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// List the project's secrets: names, versions and who set them.
    #[command(alias = "list")]
    Ls,
    /// Remove a secret. Jobs that refer to it and have not run fail when claimed.
    #[command(alias = "delete")]
    Rm { name: String },
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: JoinTokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Make a join token; its text is printed this once. Give it to agents as `--join-token`.
    Create {
        /// What it is for (`rack-7`, `ci-runners`); unique among tokens not revoked.
        #[arg(long)]
        name: String,
        /// How long it admits new nodes (`24h`, `30d`); until revoked when absent. Nodes it
        /// admitted stay after it expires.
        #[arg(long)]
        ttl: Option<String>,
        /// A label a joining node may carry, with its one allowed value (`*`: any); repeat.
        /// When given, nodes may carry no other labels.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The most CPU a joining node may offer, in thousandths of a core.
        #[arg(long, value_name = "MILLIS", requires_all = ["max_memory_bytes", "max_gpus"])]
        max_cpu_millis: Option<u64>,
        /// The most memory a joining node may offer, in bytes.
        #[arg(long, value_name = "BYTES", requires_all = ["max_cpu_millis", "max_gpus"])]
        max_memory_bytes: Option<u64>,
        /// The most GPUs a joining node may offer.
        #[arg(long, value_name = "GPUS", requires_all = ["max_cpu_millis", "max_memory_bytes"])]
        max_gpus: Option<u32>,
    },
    /// List join tokens with their limits and last use.
    Ls {
        /// At most this many per page.
        #[arg(long)]
        limit: Option<u32>,
        /// The page after this cursor.
        #[arg(long)]
        cursor: Option<String>,
        /// Every page.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a join token: it admits no new node from now on.
    Revoke { id: String },
}

/// `orchion login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The server's HTTP address.
    #[arg(long, env = "ORCHION_ADDR", value_name = "URL")]
    pub server: Option<String>,
    /// The API token (read from stdin when absent, so it stays out of the shell's history).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// The context's name.
    #[arg(long, default_value = "default")]
    pub context: String,
    /// The authority (PEM) the server's certificate must chain to, kept with the context.
    #[arg(long, env = "ORCHION_CA_CERT", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List the contexts (tokens are not shown).
    Ls,
    /// Make a context the current one.
    Use { name: String },
    /// Remove a context.
    Rm { name: String },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; its text is printed this once.
    Create {
        /// What it is for (`ci`, `pm-agent`).
        #[arg(long, default_value = "cli")]
        name: String,
        /// `viewer`, `operator` or `admin`.
        #[arg(long)]
        role: String,
        /// Confine it to one project (its id).
        #[arg(long, value_name = "PROJECT_ID")]
        project: Option<String>,
        /// How long it lasts (`30d`, `12h`); until revoked when absent.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List tokens with their last use.
    Ls {
        /// At most this many per page.
        #[arg(long)]
        limit: Option<u32>,
        /// The page after this cursor.
        #[arg(long)]
        cursor: Option<String>,
        /// Every page.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token at once.
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit entries, oldest first.
    Ls {
        /// Entries of this actor (`token:<id>`).
        #[arg(long)]
        actor: Option<String>,
        /// Entries of this HTTP method.
        #[arg(long)]
        method: Option<String>,
        /// Entries whose route starts with this (`/api/v1/jobs`).
        #[arg(long)]
        route: Option<String>,
        /// Entries naming this id.
        #[arg(long)]
        resource: Option<String>,
        /// Entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Start after this sequence number.
        #[arg(long)]
        after: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
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
    /// The gRPC port agents connect to (0 picks a free one).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// The port of the Prometheus endpoint, /metrics (0 picks a free one).
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// A node not heard from for this long becomes unreachable (e.g. 30s, 1m).
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_timeout: Option<String>,
    /// The secret agents present to join (default: generated into <data-dir>/join-token).
    #[arg(
        long,
        env = "ORCHION_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub join_token: Option<String>,
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
    /// A variable of this environment the local agent's tasks get (besides PATH, HOME and
    /// LANG, which they always get); repeat or separate with commas. No other reaches a task.
    #[arg(long = "inherit-env", value_name = "NAME", value_delimiter = ',', value_parser = parse_env_name)]
    pub inherit_env: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The server's gRPC address, e.g. http://10.0.0.1:50051. Several replicas: a
    /// comma-separated list (or the flag repeated), tried in turn when one does not answer;
    /// a DNS name with several addresses is tried address by address.
    #[arg(long, env = "ORCHION_SERVER", value_name = "URL", value_delimiter = ',', num_args = 1.., required = true)]
    pub server: Vec<String>,
    /// The cluster's join token (`orchion dev` prints it; `orchion server` keeps it in
    /// <data-dir>/join-token).
    #[arg(
        long,
        env = "ORCHION_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub join_token: String,
    /// The node's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// A label for placement, `key=value`; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Where the agent keeps its node id and credential.
    #[arg(long, value_name = "DIR", default_value = ".orchion-agent")]
    pub state_dir: PathBuf,
    /// How many tasks run at once.
    #[arg(long, default_value_t = DEFAULT_SLOTS, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub slots: u16,
    /// A variable of the agent's environment its tasks get (besides PATH, HOME and LANG,
    /// which they always get); repeat or separate with commas. No other reaches a task.
    #[arg(long = "inherit-env", value_name = "NAME", value_delimiter = ',', value_parser = parse_env_name)]
    pub inherit_env: Vec<String>,
    /// The authority (PEM) an `https://` server's certificate must chain to (default: the
    /// system's roots).
    #[arg(long, env = "ORCHION_CA_CERT", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This agent's certificate (PEM), for a server that requires one
    /// (`server.tls.client_ca`).
    #[arg(
        long,
        env = "ORCHION_CLIENT_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// The key of `--cert` (PEM).
    #[arg(
        long,
        env = "ORCHION_CLIENT_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// Log filter, like RUST_LOG.
    #[arg(long, env = "ORCHION_LOG", default_value = "info")]
    pub log: String,
    /// Export traces over OTLP/HTTP to this collector, e.g. http://localhost:4318.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The traces' service.name.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "orchion-agent")]
    pub service_name: String,
}

/// How many tasks an agent runs at once unless told otherwise.
pub const DEFAULT_SLOTS: u16 = 16;

/// An environment variable's name: letters, digits and `_`, not starting with a digit.
fn parse_env_name(raw: &str) -> Result<String, String> {
    let mut chars = raw.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "`{raw}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"
        ))
    }
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{raw}` is not KEY=VALUE"))
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        /// Only nodes with this status (ready, draining, unreachable, down).
        #[arg(long)]
        status: Option<String>,
        /// Only nodes with these labels: key=value[,key=value...].
        #[arg(long, short = 'l')]
        label: Option<String>,
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
    /// Show a node.
    Get { id: String },
    /// Stop placing new work on a node; running work may end.
    Drain { id: String },
    /// Remove a node's record.
    #[command(alias = "delete")]
    Rm { id: String },
}

#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job: a shell command after `--`, or a whole job from a JSON or YAML file.
    Submit {
        /// A job as the API takes it (`POST /api/v1/jobs`), JSON or YAML; `-` reads stdin.
        #[arg(short, long, value_name = "FILE", conflicts_with = "command")]
        file: Option<PathBuf>,
        /// Higher runs first.
        #[arg(long)]
        priority: Option<i32>,
        /// A label the node must carry, `key=value`; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Makes the command safe to repeat: the same key returns the same job.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Tries in all.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Wait until the job ends, showing its progress; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// The command to run with the shell executor.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List jobs.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        executor: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, conflicts_with = "cursor")]
        all: bool,
    },
    /// Show a job with its attempts.
    Get { id: String },
    /// Cancel a job.
    Cancel { id: String },
    /// Run a failed or cancelled job again.
    Retry { id: String },
    /// Print a job's log.
    Logs {
        id: String,
        /// Keep printing new lines until the job ends.
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Debug, Args)]
pub struct WorkflowTypeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: WorkflowTypeCommand,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowTypeCommand {
    /// Store a workflow definition (JSON or YAML) as a new version of its name; an unchanged
    /// definition keeps its version.
    Apply {
        /// The definition; `-` reads stdin.
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Show a workflow type: its latest version, or `--type-version N`.
    Get {
        name: String,
        #[arg(long, value_name = "N")]
        type_version: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: RunCommand,
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of a stored workflow type.
    Start {
        /// The workflow type.
        #[arg(value_name = "TYPE")]
        workflow_type: String,
        /// The run's input: a JSON object, or `@FILE` for a JSON or YAML file (`@-` for stdin).
        #[arg(long, value_name = "JSON|@FILE")]
        input: Option<String>,
        /// The run's name (the type's name by default).
        #[arg(long)]
        name: Option<String>,
        /// The type's version (the latest by default).
        #[arg(long, value_name = "N")]
        type_version: Option<u32>,
        #[arg(long, value_name = "ID")]
        project: Option<String>,
        /// Makes the command safe to repeat: the same key returns the same run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until the run ends, showing each step as it moves; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// List runs.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this workflow type.
        #[arg(long = "type", value_name = "TYPE")]
        workflow_type: Option<String>,
        #[arg(long, value_name = "ID")]
        project: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, conflicts_with = "cursor")]
        all: bool,
    },
    /// Show a run with each step's state.
    Get { id: String },
    /// Cancel a running run.
    Cancel { id: String },
    /// Run a failed or cancelled run again from its failed steps.
    Retry {
        id: String,
        /// Wait until the run ends, showing each step as it moves.
        #[arg(long)]
        wait: bool,
    },
    /// Print the log lines of a run's steps.
    Logs {
        id: String,
        /// Only this step (`build`, or `build[2]` in a fan-out).
        #[arg(long)]
        step: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: DeployCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Start a deployment from a JSON or YAML file (`POST /api/v1/deployments`).
    Apply {
        /// The deployment; `-` reads stdin.
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
        /// Wait until it ends, showing each resource as it moves; exit 1 unless it is ready.
        #[arg(long)]
        wait: bool,
    },
    /// Show a deployment and its resources.
    Get { id: String },
    /// List deployments.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        composer: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, conflicts_with = "cursor")]
        all: bool,
    },
    /// Cancel a deployment and roll back (destroy) what it applied.
    #[command(alias = "delete")]
    Rm {
        id: String,
        /// Wait until the rollback ends.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ScheduleCommand,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule that starts a job at each instant: a shell command after `--`, or a
    /// job from a JSON or YAML file.
    Create {
        #[arg(long)]
        name: String,
        /// 5 fields (minute hour day month weekday), 6 with seconds first, or @hourly-style.
        #[arg(long)]
        cron: String,
        /// An IANA time zone (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// allow or skip (skip an instant while the previous job still runs).
        #[arg(long)]
        overlap: Option<String>,
        /// fire_once or skip (for instants missed while no server ran).
        #[arg(long)]
        misfire: Option<String>,
        /// The job, JSON or YAML, as `orchion job submit -f` takes it.
        #[arg(short, long, value_name = "FILE", conflicts_with = "command")]
        file: Option<PathBuf>,
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List schedules.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Delete a schedule.
    #[command(alias = "delete")]
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Simulated agents heartbeating over real gRPC against a real `orchion server`.
    Heartbeats(HeartbeatBenchArgs),
    /// Replicas on PostgreSQL under load, one SIGKILLed: how long until its agents work
    /// again, and how many jobs were lost or ran twice.
    Failover(FailoverBenchArgs),
    /// No-op jobs submitted over the REST API and run by real agents over gRPC.
    Jobs(JobBenchArgs),
    /// Workflow runs of no-op steps: a chain (step→step latency) or a wide fan-out.
    Dag(DagBenchArgs),
    /// A server with work queued and no agent: its CPU while it waits.
    Idle(IdleBenchArgs),
    /// Sustained load on a server with a short retention: whether its store, tables and
    /// memory level off or grow.
    Soak(SoakBenchArgs),
}

#[derive(Debug, Args)]
pub struct SoakBenchArgs {
    /// No-op jobs submitted a second (in batches, ten times a second).
    #[arg(long, default_value_t = 1_000)]
    pub rate: usize,
    /// How long to keep submitting.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// How long the server keeps finished jobs, events, idempotency keys and audit entries
    /// (at least 1m).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub keep: std::time::Duration,
    /// How often to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sample: std::time::Duration,
    /// How many agent processes run the jobs.
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// Tasks each agent runs at once.
    #[arg(long, default_value_t = 128)]
    pub slots: u16,
    /// Run the server on this PostgreSQL database (best a fresh one) instead of a SQLite file.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct IdleBenchArgs {
    /// Jobs to queue (half with a `schedule_to_start` an hour away).
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Workflow runs to start, each with its first step waiting.
    #[arg(long, default_value_t = 1_000)]
    pub runs: usize,
    /// How long to measure, once the server has settled.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Run the server on this PostgreSQL database instead of a SQLite file.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct JobBenchArgs {
    /// How many jobs.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// How many agent processes run them.
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// Tasks each agent runs at once.
    #[arg(long, default_value_t = 128)]
    pub slots: u16,
    /// Concurrent API clients submitting jobs.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Jobs per request: 1 submits each through `POST /api/v1/jobs`; more submit batches through
    /// `POST /api/v1/jobs/batch` (at most 1000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch: u16,
    /// Run the server on this PostgreSQL database instead of a SQLite file.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Also run a raw SQL enqueue→claim→complete loop on the same store, and print the ratio.
    #[arg(long)]
    pub baseline: bool,
    /// Server replicas on the PostgreSQL database (needs --database-url): the jobs are
    /// submitted round-robin to them, agent `i` talks to replica `i % N`, and the run is
    /// measured with one replica first, then with N, side by side.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// What each job is: `noop`; `shell`, a process printing one line of its environment
    /// (`sh -c 'echo "token=$TOKEN"'`, `TOKEN` a literal); or `shell-secret`, the same with
    /// `TOKEN` from a project secret, so every claim opens it and every line is masked.
    #[arg(long, value_enum, default_value_t = BenchJob::Noop)]
    pub job: BenchJob,
    /// Enqueue every job first, then start the agents: throughput is the drain of a queue
    /// already full (first start to last finish), as queue benchmarks measure it.
    #[arg(long)]
    pub drain: bool,
}

/// The job `orchion bench jobs` submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchJob {
    Noop,
    Shell,
    ShellSecret,
}

#[derive(Debug, Args)]
pub struct FailoverBenchArgs {
    /// The PostgreSQL database the replicas share.
    #[arg(long, value_name = "URL")]
    pub database_url: String,
    /// Server replicas (at least 2; the first dies).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Shell jobs, each appending its number to a file.
    #[arg(long, default_value_t = 3000)]
    pub jobs: usize,
    /// Agent processes, each knowing every replica; agent `i` starts with replica `i % N`.
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Tasks each agent runs at once.
    #[arg(long, default_value_t = 16)]
    pub slots: u16,
}

#[derive(Debug, Args)]
pub struct DagBenchArgs {
    /// Run a chain of this many steps, each needing the one before.
    #[arg(long, visible_alias = "steps", value_name = "N")]
    pub chain: Option<usize>,
    /// Run a root, this many parallel steps, and a join.
    #[arg(long, value_name = "N")]
    pub fanout: Option<usize>,
    /// Create a deployment of this many resources (each after the one before; no agent runs
    /// them) and four more of a quarter the size, and time creating, reading and listing them.
    #[arg(long, value_name = "N")]
    pub resources: Option<usize>,
    /// Runs to measure, one after another.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// How many agent processes run the steps.
    #[arg(long, default_value_t = 1)]
    pub agents: usize,
    /// Tasks each agent runs at once.
    #[arg(long, default_value_t = 128)]
    pub slots: u16,
    /// Run the server on this PostgreSQL database instead of a SQLite file.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct HeartbeatBenchArgs {
    /// How many simulated nodes.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Each node's heartbeat interval (with ±10 % jitter).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// How long to measure, after every node has registered.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// HTTP/2 connections the simulated nodes share.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Run the server on this PostgreSQL database instead of a SQLite file.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

/// Flags of the client verbs.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The Orchion server to talk to (default: the current context's, else
    /// http://127.0.0.1:8080).
    #[arg(long, global = true, env = "ORCHION_ADDR", value_name = "URL")]
    pub addr: Option<String>,
    /// The API token to send (default: the context's; see `orchion login`).
    #[arg(
        long,
        global = true,
        env = "ORCHION_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// The context to use instead of the current one.
    #[arg(long, global = true, env = "ORCHION_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// The authority (PEM) an https:// server's certificate must chain to (default: the
    /// context's, else the system's roots).
    #[arg(long, global = true, env = "ORCHION_CA_CERT", value_name = "FILE")]
    pub ca: Option<PathBuf>,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every subcommand's flags are consistent (clap checks names, conflicts and defaults).
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}

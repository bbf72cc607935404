//! The `orchion` binary: parses the command line and hands off. Exit status: 0 success,
//! 1 failure, 2 usage or configuration error.

mod agent;
mod bench;
mod cli;
mod client;
mod http;
mod kubernetes;
mod metrics;
mod process;
mod server;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // The agent's fence (`orchion __fence`), started beside its commands: plain threads, no
    // runtime, nothing parsed.
    if std::env::args().nth(1).as_deref() == Some(orchion_executor::fence::FENCE_COMMAND) {
        return orchion_executor::fence::watch();
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => server::dev(args).await,
            Command::Server(args) => server::serve(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Bench(cli::BenchCommand::Heartbeats(args)) => {
                bench::heartbeats::run(args).await
            }
            Command::Bench(cli::BenchCommand::Jobs(args)) => bench::jobs::run(args).await,
            Command::Bench(cli::BenchCommand::Dag(args)) => bench::dag::run(args).await,
            Command::Bench(cli::BenchCommand::Idle(args)) => bench::idle::run(args).await,
            Command::Bench(cli::BenchCommand::Soak(args)) => bench::soak::run(args).await,
            Command::Bench(cli::BenchCommand::Failover(args)) => bench::failover::run(args).await,
            Command::Project(args) => client::project::run(args).await,
            Command::Node(args) => client::node::run(args).await,
            Command::Job(args) => client::job::run(args).await,
            Command::Schedule(args) => client::schedule::run(args).await,
            Command::WorkflowType(args) => client::workflow::run_types(args).await,
            Command::Run(args) => client::workflow::run_runs(args).await,
            Command::Deploy(args) => client::deploy::run(args).await,
            Command::Login(args) => client::contexts::login(args).await,
            Command::Logout { context } => client::contexts::logout(context),
            Command::Context(command) => client::contexts::context(command),
            Command::Token(args) => client::access::run_tokens(args).await,
            Command::Audit(args) => client::access::run_audit(args).await,
            Command::JoinToken(args) => client::access::run_join_tokens(args).await,
            Command::Secret(args) => client::secret::run(args).await,
        }
    })
}

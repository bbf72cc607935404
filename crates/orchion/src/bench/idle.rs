//! `orchion bench idle`: how much a server works while nothing can run. It queues `--tasks N`
//! jobs (half of them with a `schedule_to_start` deadline an hour away) and `--runs N`
//! workflow runs whose first step waits too, starts no agent, lets the server settle, and
//! measures its CPU over `--duration`: waiting work should cost nothing.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use serde_json::{Value, json};

use super::BenchServer;
use crate::cli::IdleBenchArgs;

pub async fn run(args: IdleBenchArgs) -> ExitCode {
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn post(client: &reqwest::Client, url: String, body: &Value) -> anyhow::Result<()> {
    let answer = client.post(url).json(body).send().await?;
    let status = answer.status();
    anyhow::ensure!(
        status.is_success(),
        "answered {status}: {}",
        answer.text().await.unwrap_or_default()
    );
    Ok(())
}

async fn bench(args: IdleBenchArgs) -> anyhow::Result<()> {
    let mut extra = vec!["--join-token", super::TOKEN];
    if let Some(url) = &args.database_url {
        extra.extend(["--database-url", url.as_str()]);
    }
    let server = BenchServer::start(&extra).await?;
    let client = super::admin_client()?;
    let http = &server.http;
    let mut queued = 0;
    while queued < args.tasks {
        let n = (args.tasks - queued).min(1000);
        let jobs: Vec<Value> = (queued..queued + n)
            .map(|i| {
                let mut job = json!({"name": format!("idle-{i}"), "executor": "noop", "spec": {}});
                if i % 2 == 0 {
                    job["timeouts"] = json!({"schedule_to_start": "1h"});
                }
                job
            })
            .collect();
        post(
            &client,
            format!("{http}/api/v1/jobs/batch"),
            &json!({"jobs": jobs}),
        )
        .await?;
        queued += n;
    }
    if args.runs > 0 {
        let definition = json!({"name": "idle", "steps": [
            {"name": "first", "executor": "noop", "spec": {}},
            {"name": "second", "needs": ["first"], "executor": "noop", "spec": {}},
        ]});
        post(
            &client,
            format!("{http}/api/v1/workflow-types"),
            &definition,
        )
        .await?;
        for _ in 0..args.runs {
            post(
                &client,
                format!("{http}/api/v1/workflows"),
                &json!({"type": "idle", "input": {}}),
            )
            .await?;
        }
    }
    // Settle: the first sweeps and checkpoints after the burst.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = server
        .cpu_seconds()
        .context("reading the server's CPU time")?;
    tokio::time::sleep(args.duration).await;
    let used = server.cpu_seconds()? - before;
    let store = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!("orchion bench idle");
    println!("  store                 {store}");
    println!(
        "  waiting               {} queued jobs, {} workflow runs, no agent",
        args.tasks, args.runs
    );
    println!(
        "  server CPU            {:.2} % of a core over {:?} ({used:.3} s)",
        100.0 * used / args.duration.as_secs_f64(),
        args.duration
    );
    Ok(())
}

//! `orchion bench dag`: workflow runs of no-op steps on real agents against a real server.
//! `--chain N` runs a chain (each step needs the one before) and reports the step→step latency
//! — from one step's end to the next one's start, by the server's own timestamps — and the
//! whole run's time. `--fanout N` runs a root, N parallel steps (`for_each`) and a join, and
//! reports how long the fan-out took to start and to finish. Both report the workflow engine's
//! store reads per step (`orchion_workflow_engine_reads_total`). `--resources N` creates a
//! deployment of N resources and four of N/4, and times creating, reading and listing them.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{BenchServer, quantile};
use crate::cli::DagBenchArgs;

pub async fn run(args: DagBenchArgs) -> ExitCode {
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn at(task: &Value, key: &str) -> anyhow::Result<OffsetDateTime> {
    let text = task[key]
        .as_str()
        .with_context(|| format!("a task has no {key}"))?;
    Ok(OffsetDateTime::parse(text, &Rfc3339)?)
}

fn since(from: OffsetDateTime, to: OffsetDateTime) -> Duration {
    Duration::try_from(to - from).unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The chain `s0 → s1 → … → s{n-1}`.
fn chain(steps: usize) -> Value {
    let steps: Vec<Value> = (0..steps)
        .map(|i| {
            let needs: Vec<String> = if i == 0 {
                Vec::new()
            } else {
                vec![format!("s{}", i - 1)]
            };
            json!({"name": format!("s{i}"), "needs": needs, "executor": "noop", "spec": {}})
        })
        .collect();
    json!({"name": "bench_chain", "steps": steps})
}

/// `root → fan[0..n] → join`.
fn fanout(width: usize) -> Value {
    let items: Vec<usize> = (0..width).collect();
    json!({"name": "bench_fanout", "steps": [
        {"name": "root", "executor": "noop", "spec": {"outputs": {"items": items}}},
        {"name": "fan", "needs": ["root"], "for_each": "${{ steps.root.outputs.items }}",
         "executor": "noop", "spec": {"outputs": {"n": "${{ item }}"}}},
        {"name": "join", "needs": ["fan"], "executor": "noop", "spec": {}},
    ]})
}

/// Stores `definition`, runs it to the end, and returns the finished run and its wall time.
async fn run_once(
    client: &reqwest::Client,
    http: &str,
    definition: &Value,
) -> anyhow::Result<(Value, Duration)> {
    let stored = client
        .post(format!("{http}/api/v1/workflow-types"))
        .json(definition)
        .send()
        .await?;
    anyhow::ensure!(
        stored.status().is_success(),
        "storing the workflow type answered {}: {}",
        stored.status(),
        stored.text().await.unwrap_or_default()
    );
    let started = Instant::now();
    let run: Value = client
        .post(format!("{http}/api/v1/workflows"))
        .json(&json!({"type": definition["name"], "input": {}}))
        .send()
        .await?
        .json()
        .await?;
    let id = run["id"].as_str().context("the run has no id")?.to_owned();
    // Each look reads the whole run: looked at more seldom as it goes on (at most 1/20 of
    // its time so far), so that the bench does not load the server it measures.
    let mut pause = Duration::from_millis(5);
    loop {
        let run: Value = client
            .get(format!("{http}/api/v1/workflows/{id}"))
            .send()
            .await?
            .json()
            .await?;
        match run["status"].as_str() {
            Some("running") => {
                tokio::time::sleep(pause).await;
                pause = (started.elapsed() / 20).max(Duration::from_millis(5));
            }
            Some("succeeded") => return Ok((run, started.elapsed())),
            other => anyhow::bail!("the run ended {other:?}"),
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the run did not finish in 10 minutes"
        );
    }
}

fn tasks_of<'a>(run: &'a Value, step: &str) -> anyhow::Result<&'a Vec<Value>> {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == step))
        .and_then(|s| s["tasks"].as_array())
        .with_context(|| format!("the run has no step {step}"))
}

/// The workflow engine's store reads so far.
async fn engine_reads(server: &BenchServer) -> anyhow::Result<f64> {
    server.counter("orchion_workflow_engine_reads_total").await
}

/// A deployment `id` of `n` terraform resources, each depending on the one before (10,000 fit
/// in the default `server.body_limit_bytes`).
fn deployment(id: &str, environment: &str, n: usize) -> Value {
    let resources: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("r{i}"), "catalogRef": "b:1", "engine": "terraform"}))
        .collect();
    let dependencies: Vec<Value> = (1..n)
        .map(|i| json!({"from": format!("r{}", i - 1), "to": format!("r{i}")}))
        .collect();
    json!({"id": id, "composer": "bench", "environment": environment,
           "resources": resources, "dependencies": dependencies})
}

/// Times `request` once, failing unless it answers `expect`.
async fn timed(request: reqwest::RequestBuilder, expect: u16) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = request.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    let took = started.elapsed();
    anyhow::ensure!(
        status.as_u16() == expect,
        "answered {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    Ok(took)
}

/// `--resources N`: creating, reading and listing big deployments (no agent runs them).
async fn resources(
    client: &reqwest::Client,
    http: &str,
    n: usize,
    runs: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(n >= 4, "--resources must be at least 4");
    let create = timed(
        client
            .post(format!("{http}/api/v1/deployments"))
            .json(&deployment("bench-big", "env-0", n)),
        201,
    )
    .await?;
    let mut reads = Vec::new();
    for _ in 0..runs.max(1) {
        reads.push(
            timed(
                client.get(format!("{http}/api/v1/deployments/bench-big")),
                200,
            )
            .await?,
        );
    }
    for i in 1..=4 {
        timed(
            client
                .post(format!("{http}/api/v1/deployments"))
                .json(&deployment(
                    &format!("bench-{i}"),
                    &format!("env-{i}"),
                    n / 4,
                )),
            201,
        )
        .await?;
    }
    let mut lists = Vec::new();
    for _ in 0..runs.max(1) {
        lists.push(timed(client.get(format!("{http}/api/v1/deployments")), 200).await?);
    }
    reads.sort();
    lists.sort();
    println!(
        "  deployment            {n} resources (and 4 of {}), none run",
        n / 4
    );
    println!("  create                {:.0} ms", ms(create));
    println!(
        "  read                  median {:.0} ms ({} reads)",
        ms(quantile(&reads, 0.5)),
        reads.len()
    );
    println!(
        "  list                  median {:.0} ms a page of 5 ({} lists)",
        ms(quantile(&lists, 0.5)),
        lists.len()
    );
    Ok(())
}

async fn bench(args: DagBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.chain.is_some() || args.fanout.is_some() || args.resources.is_some(),
        "give --chain N (a chain), --fanout N (a wide DAG) or --resources N (big deployments)"
    );
    let mut extra = vec!["--join-token", super::TOKEN];
    if let Some(url) = &args.database_url {
        extra.extend(["--database-url", url.as_str()]);
    }
    let server = BenchServer::start(&extra).await?;
    let _agents = server.start_agents(args.agents, args.slots).await?;
    let client = super::admin_client()?;
    let store = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!("orchion bench dag");
    println!("  store                 {store}");
    println!(
        "  agents                {} × {} slots",
        args.agents, args.slots
    );
    if let Some(steps) = args.chain {
        anyhow::ensure!(steps >= 2, "--chain must be at least 2");
        let mut gaps = Vec::new();
        let mut totals = Vec::new();
        let reads_before = engine_reads(&server).await?;
        for _ in 0..args.runs {
            let (run, wall) = run_once(&client, &server.http, &chain(steps)).await?;
            let mut previous_end = None;
            for i in 0..steps {
                let task = tasks_of(&run, &format!("s{i}"))?
                    .first()
                    .context("a step has no task")?;
                if let Some(end) = previous_end {
                    gaps.push(since(end, at(task, "started_at")?));
                }
                previous_end = Some(at(task, "finished_at")?);
            }
            totals.push(wall);
        }
        gaps.sort();
        totals.sort();
        println!(
            "  chain                 {steps} no-op steps, {} runs",
            args.runs
        );
        println!(
            "  step→step             p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} gaps)",
            ms(quantile(&gaps, 0.5)),
            ms(quantile(&gaps, 0.99)),
            ms(gaps.last().copied().unwrap_or_default()),
            gaps.len()
        );
        println!(
            "  run                   median {:.0} ms ({:.2} ms per step)",
            ms(quantile(&totals, 0.5)),
            ms(quantile(&totals, 0.5)) / steps as f64
        );
        let reads = engine_reads(&server).await? - reads_before;
        println!(
            "  engine reads          {:.2} per step",
            reads / (steps * args.runs) as f64
        );
    }
    if let Some(width) = args.fanout {
        anyhow::ensure!(width >= 1, "--fanout must be at least 1");
        let mut walls = Vec::new();
        let mut spreads = Vec::new();
        let mut fan_times = Vec::new();
        let reads_before = engine_reads(&server).await?;
        for _ in 0..args.runs {
            let (run, wall) = run_once(&client, &server.http, &fanout(width)).await?;
            let root_end = at(&tasks_of(&run, "root")?[0], "finished_at")?;
            let fan = tasks_of(&run, "fan")?;
            anyhow::ensure!(fan.len() == width, "the fan-out ran {} tasks", fan.len());
            let mut first_start = None::<OffsetDateTime>;
            let mut last_start = None::<OffsetDateTime>;
            let mut last_end = None::<OffsetDateTime>;
            for task in fan {
                let (s, e) = (at(task, "started_at")?, at(task, "finished_at")?);
                first_start = Some(first_start.map_or(s, |f| f.min(s)));
                last_start = Some(last_start.map_or(s, |l| l.max(s)));
                last_end = Some(last_end.map_or(e, |l| l.max(e)));
            }
            let join_start = at(&tasks_of(&run, "join")?[0], "started_at")?;
            spreads.push((
                since(root_end, first_start.unwrap_or(root_end)),
                since(root_end, last_start.unwrap_or(root_end)),
                since(last_end.unwrap_or(join_start), join_start),
            ));
            fan_times.push(since(root_end, last_end.unwrap_or(root_end)));
            walls.push(wall);
        }
        walls.sort();
        fan_times.sort();
        let median = |pick: fn(&(Duration, Duration, Duration)) -> Duration| {
            let mut v: Vec<Duration> = spreads.iter().map(pick).collect();
            v.sort();
            quantile(&v, 0.5)
        };
        println!(
            "  fan-out               root → {width} parallel no-op steps → join, {} runs",
            args.runs
        );
        println!(
            "  root end → fan start  first {:.1} ms, last {:.1} ms (medians)",
            ms(median(|s| s.0)),
            ms(median(|s| s.1))
        );
        println!(
            "  fan-out done          {:.0} ms after the root (median), {:.0} tasks/s",
            ms(quantile(&fan_times, 0.5)),
            width as f64 / quantile(&fan_times, 0.5).as_secs_f64().max(1e-9)
        );
        println!(
            "  last fan end → join   {:.1} ms (median)",
            ms(median(|s| s.2))
        );
        println!(
            "  run                   median {:.0} ms",
            ms(quantile(&walls, 0.5))
        );
        let reads = engine_reads(&server).await? - reads_before;
        println!(
            "  engine reads          {:.3} per step",
            reads / ((width + 2) * args.runs) as f64
        );
    }
    if let Some(n) = args.resources {
        resources(&client, &server.http, n, args.runs).await?;
    }
    Ok(())
}

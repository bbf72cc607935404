//! `orchion bench failover`: server replicas on one PostgreSQL database under load, one of them
//! SIGKILLed mid-run. Reports how long until the agents that talked to it work again through
//! another replica, and — counted by the jobs' own side effects, a file each job appends its
//! number to — how many accepted jobs were lost and how many ran twice.

use std::{
    collections::{HashMap, HashSet},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::BenchServer;
use crate::cli::FailoverBenchArgs;

pub async fn run(args: FailoverBenchArgs) -> ExitCode {
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn time_of(job: &Value, key: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(job[key].as_str()?, &Rfc3339).ok()
}

/// How many times each job ran, by the numbers in `effects`.
fn runs(effects: &std::path::Path) -> HashMap<usize, u32> {
    let mut runs = HashMap::new();
    for line in std::fs::read_to_string(effects).unwrap_or_default().lines() {
        if let Ok(n) = line.trim().parse::<usize>() {
            *runs.entry(n).or_default() += 1;
        }
    }
    runs
}

async fn bench(args: FailoverBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.replicas >= 2,
        "--replicas must be at least 2: one of them dies"
    );
    anyhow::ensure!(
        args.jobs > 0 && args.agents > 0,
        "--jobs and --agents must be at least 1"
    );
    let extra = [
        "--join-token",
        super::TOKEN,
        "--database-url",
        args.database_url.as_str(),
    ];
    let mut servers = Vec::with_capacity(args.replicas);
    for _ in 0..args.replicas {
        servers.push(BenchServer::start(&extra).await?);
    }
    let agents = super::start_agents(&servers, args.agents, args.slots, true).await?;
    let survivor = servers[1].http.clone();
    let client = super::admin_client()?;
    let effects = servers[1].dir().join("effects.txt");

    // Submitted to the replicas that stay up; the agents of the first replica work through it.
    let started_at = OffsetDateTime::now_utc();
    let targets: Vec<String> = servers[1..].iter().map(|s| s.http.clone()).collect();
    let submitting = {
        let (client, effects, jobs) = (client.clone(), effects.clone(), args.jobs);
        tokio::spawn(async move {
            let submitted: Vec<anyhow::Result<()>> = futures::stream::iter(0..jobs)
                .map(|i| {
                    let client = client.clone();
                    let url = format!("{}/api/v1/jobs", targets[i % targets.len()]);
                    let command = format!("echo {i} >> {}", effects.display());
                    let job = json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", command]}});
                    async move {
                        let response = client.post(url).json(&job).send().await?;
                        anyhow::ensure!(
                            response.status() == 201,
                            "submit answered {}",
                            response.status()
                        );
                        Ok(())
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            submitted.into_iter().collect::<anyhow::Result<Vec<()>>>()
        })
    };

    // A fifth of the way through, the first replica dies.
    let deadline = Instant::now() + Duration::from_secs(600);
    while runs(&effects).len() < args.jobs / 5 {
        anyhow::ensure!(Instant::now() < deadline, "the jobs did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = OffsetDateTime::now_utc();
    servers[0].stop().await?;
    eprintln!(
        "killed replica 1 of {} with {} of {} jobs done",
        args.replicas,
        runs(&effects).len(),
        args.jobs
    );
    submitting.await??;

    loop {
        let status: Value = client
            .get(format!("{survivor}/api/v1/status"))
            .send()
            .await?
            .json()
            .await?;
        let left = status["tasks"]["queued"].as_u64().unwrap_or(0)
            + status["tasks"]["running"].as_u64().unwrap_or(0);
        if left == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the jobs did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The nodes of the agents that talked to the dead replica first.
    let nodes: Value = client
        .get(format!("{survivor}/api/v1/nodes?limit=500"))
        .send()
        .await?
        .json()
        .await?;
    let moved: HashSet<String> = nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["name"]
                .as_str()
                .and_then(|name| name.strip_prefix("bench-"))
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i % args.replicas == 0)
        })
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect();
    let mut failed = 0;
    // Jobs started after the kill, oldest start first: the first whose attempt ran on a moved
    // agent says when it worked again. (Listings leave out attempts; each job is read.)
    let mut after_kill: Vec<(OffsetDateTime, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    'pages: loop {
        let mut url = format!("{survivor}/api/v1/jobs?limit=500&order=newest");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client.get(&url).send().await?.json().await?;
        for job in page["items"].as_array().into_iter().flatten() {
            let created = time_of(job, "created_at").context("a job without created_at")?;
            if created < started_at {
                break 'pages;
            }
            if job["status"] != "succeeded" {
                failed += 1;
            }
            if let (Some(start), Some(id)) = (time_of(job, "started_at"), job["id"].as_str()) {
                if start > killed_at {
                    after_kill.push((start, id.to_owned()));
                }
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    after_kill.sort();
    let mut resumed: Option<OffsetDateTime> = None;
    for (_, id) in &after_kill {
        let job: Value = client
            .get(format!("{survivor}/api/v1/jobs/{id}"))
            .send()
            .await?
            .json()
            .await?;
        let on_moved = job["attempts"].as_array().into_iter().flatten().find(|a| {
            a["node_id"].as_str().is_some_and(|n| moved.contains(n))
                && time_of(a, "started_at").is_some_and(|s| s > killed_at)
        });
        if let Some(attempt) = on_moved {
            resumed = time_of(attempt, "started_at");
            break;
        }
    }
    drop(agents);
    let runs = runs(&effects);
    let lost = (0..args.jobs).filter(|n| !runs.contains_key(n)).count();
    let doubled = runs.values().filter(|n| **n > 1).count();
    println!("orchion bench failover");
    println!(
        "  cluster               {} replicas on PostgreSQL, {} agents × {} slots (each knows every replica)",
        args.replicas, args.agents, args.slots
    );
    println!(
        "  jobs                  {} shell jobs, each appending its number to a file",
        args.jobs
    );
    match resumed {
        Some(at) => println!(
            "  failover              {:.0} ms from the SIGKILL to the first task started by an agent of the dead replica",
            (at - killed_at).as_seconds_f64() * 1e3
        ),
        None => println!(
            "  failover              the dead replica's agents started nothing after it died"
        ),
    }
    println!("  lost                  {lost} (accepted, never ran)");
    println!("  doubled               {doubled} (ran more than once)");
    println!("  failed                {failed}");
    Ok(())
}

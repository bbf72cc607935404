//! `orchion bench heartbeats`: registers N simulated nodes over real gRPC, then has each send
//! heartbeats at the interval with jitter for the duration, and reports throughput, latency,
//! the server's CPU and memory, and how many store commits the heartbeats caused.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use orchion_proto::v1::{self as pb, node_service_client::NodeServiceClient};
use rand::Rng;
use tonic::{Request, transport::Channel};

use super::{BenchServer, quantile};
use crate::cli::HeartbeatBenchArgs;

const TOKEN: &str = "orchion-bench-join-token";

pub async fn run(args: HeartbeatBenchArgs) -> ExitCode {
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

struct SimulatedNode {
    id: String,
    credential: String,
    client: NodeServiceClient<Channel>,
}

async fn bench(args: HeartbeatBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes > 0, "--nodes must be at least 1");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(!args.interval.is_zero(), "--interval must be more than 0");
    let timeout = humantime::format_duration(args.interval * 3).to_string();
    let mut extra = vec![
        "--join-token",
        TOKEN,
        "--heartbeat-timeout",
        timeout.as_str(),
    ];
    if let Some(url) = &args.database_url {
        extra.extend(["--database-url", url.as_str()]);
    }
    let server = BenchServer::start(&extra).await?;
    eprintln!(
        "server: {} (gRPC {}), data in {}",
        server.http,
        server.grpc,
        server.dir().display()
    );

    let mut channels = Vec::new();
    for _ in 0..args.connections {
        let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .context("cannot connect to the server's gRPC port")?;
        channels.push(channel);
    }

    let registering = Instant::now();
    let registered: Vec<anyhow::Result<SimulatedNode>> = futures::stream::iter(0..args.nodes)
        .map(|i| {
            let mut client = NodeServiceClient::new(channels[i % channels.len()].clone());
            async move {
                let request = pb::RegisterNodeRequest {
                    name: format!("bench-{i}"),
                    labels: [("bench".to_owned(), "true".to_owned())].into(),
                    capacity: Some(pb::Capacity {
                        cpu_millis: 4000,
                        memory_bytes: 16 << 30,
                        gpus: 0,
                    }),
                    version: "bench".into(),
                    ..Default::default()
                };
                let response = client
                    .register_node(authorized(request, TOKEN))
                    .await?
                    .into_inner();
                Ok(SimulatedNode {
                    id: response.node_id,
                    credential: response.credential,
                    client,
                })
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let nodes: Vec<SimulatedNode> = registered.into_iter().collect::<anyhow::Result<_>>()?;
    eprintln!(
        "registered {} nodes in {:.1} s",
        nodes.len(),
        registering.elapsed().as_secs_f64()
    );

    let commits_before = server.commits().await?;
    let cpu_before = server.cpu_seconds()?;
    let started = Instant::now();
    let deadline = started + args.duration;
    let interval = args.interval;
    let tasks: Vec<_> = nodes
        .into_iter()
        .map(|mut node| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let offset = interval.mul_f64(rand::rng().random_range(0.0..1.0));
                let mut next = Instant::now() + offset;
                while next < deadline {
                    tokio::time::sleep_until(next.into()).await;
                    let request = authorized(
                        pb::HeartbeatRequest {
                            node_id: node.id.clone(),
                        },
                        &node.credential,
                    );
                    let sent = Instant::now();
                    match node.client.heartbeat(request).await {
                        Ok(_) => latencies.push(sent.elapsed()),
                        Err(_) => errors += 1,
                    }
                    next += interval.mul_f64(rand::rng().random_range(0.9..=1.1));
                }
                (latencies, errors)
            })
        })
        .collect();
    let reporter = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(
            (started + Duration::from_secs(10)).into(),
            Duration::from_secs(10),
        );
        loop {
            tick.tick().await;
            eprintln!(
                "… {:.0} s of {:.0} s",
                started.elapsed().as_secs_f64(),
                args.duration.as_secs_f64()
            );
        }
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut l, e) = task.await?;
        latencies.append(&mut l);
        errors += e;
    }
    reporter.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu_before;
    let commits = server.commits().await? - commits_before;
    let (rss, peak) = server.rss()?;
    latencies.sort();

    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    println!("orchion bench heartbeats");
    println!(
        "  store                 {}",
        if args.database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    );
    println!("  nodes                 {}", args.nodes);
    println!(
        "  interval              {}",
        humantime::format_duration(args.interval)
    );
    println!("  measured for          {elapsed:.1} s");
    println!(
        "  heartbeats            {} ok, {errors} failed",
        latencies.len()
    );
    println!(
        "  heartbeats/s          {:.0}",
        latencies.len() as f64 / elapsed
    );
    println!(
        "  latency p50           {:.2} ms",
        quantile(&latencies, 0.50).as_secs_f64() * 1e3
    );
    println!(
        "  latency p99           {:.2} ms",
        quantile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  latency max           {:.2} ms",
        quantile(&latencies, 1.0).as_secs_f64() * 1e3
    );
    println!(
        "  server CPU            {:.1} % of one core",
        cpu / elapsed * 100.0
    );
    println!(
        "  server RSS            {:.1} MiB (peak {:.1} MiB)",
        mib(rss),
        mib(peak)
    );
    println!(
        "  store commits         {commits} ({:.2}/s)",
        commits as f64 / elapsed
    );
    Ok(())
}

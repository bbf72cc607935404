//! `orchion bench jobs`: no-op jobs submitted through the REST API, run by real agent processes
//! over gRPC, against a real server. Reports end-to-end throughput, enqueue→start and
//! enqueue→done latency (from the server's own timestamps), store commits and RSS; with
//! `--baseline`, a raw SQL enqueue→claim→complete loop on the same store for comparison.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{BenchServer, quantile};
use crate::cli::{BenchJob, JobBenchArgs};

pub async fn run(args: JobBenchArgs) -> ExitCode {
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The secret `--job shell-secret` refers to, and its value.
const SECRET: (&str, &str) = ("bench-token", "a-bench-secret-value-of-40-characters-xx");

/// The job each request submits (a batch: this many times).
fn job(kind: BenchJob) -> Value {
    let shell = |token: Value| {
        json!({"executor": "shell", "spec": {"command": "sh",
               "args": ["-c", "echo \"token=$TOKEN\""], "env": {"TOKEN": token}}})
    };
    match kind {
        BenchJob::Noop => json!({"executor": "noop", "spec": {}}),
        BenchJob::Shell => shell(json!(SECRET.1)),
        BenchJob::ShellSecret => shell(json!({"secret": SECRET.0})),
    }
}

/// Sets the secret `--job shell-secret` refers to, in the default project.
async fn set_secret(http: &str) -> anyhow::Result<()> {
    super::admin_client()?
        .put(format!(
            "{http}/api/v1/projects/{}/secrets/{}",
            orchion_domain::ProjectId::DEFAULT,
            SECRET.0
        ))
        .json(&json!({"value": SECRET.1}))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// An operator token made through the API for this bench.
async fn operator_token(http: &str) -> anyhow::Result<String> {
    let answer: Value = super::admin_client()?
        .post(format!("{http}/api/v1/tokens"))
        .json(&serde_json::json!({"name": "bench", "role": "operator", "ttl": "1h"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    answer["token_text"]
        .as_str()
        .map(str::to_owned)
        .context("the token answer has no token_text")
}

async fn status(client: &reqwest::Client, http: &str) -> anyhow::Result<Value> {
    Ok(client
        .get(format!("{http}/api/v1/status"))
        .send()
        .await?
        .json()
        .await?)
}

fn time_of(job: &Value, key: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(job[key].as_str()?, &Rfc3339).ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What one measurement found, for the comparison of replicas.
struct Measured {
    throughput: f64,
    idle_p50: Duration,
}

async fn bench(args: JobBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.jobs > 0 && args.agents > 0 && args.clients > 0 && args.replicas > 0,
        "--jobs, --agents, --clients and --replicas must be at least 1"
    );
    if args.replicas == 1 {
        let (measured, mut servers) = measure(&args, 1).await?;
        if args.baseline {
            let db_url = match &args.database_url {
                Some(url) => url.clone(),
                None => format!("sqlite:{}", servers[0].dir().join("orchion.db").display()),
            };
            servers[0].stop().await?;
            let raw = baseline(&db_url, args.jobs, args.clients).await?;
            println!(
                "  raw SQL baseline      {raw:.0} jobs/s (enqueue, claim in batches, complete; same store)"
            );
            println!("  orchion / raw         {:.2}", measured.throughput / raw);
        }
        return Ok(());
    }
    anyhow::ensure!(
        args.database_url.is_some(),
        "--replicas needs --database-url: replicas share a PostgreSQL database"
    );
    anyhow::ensure!(
        !args.baseline,
        "--baseline measures one replica; leave out --replicas"
    );
    // One replica first, then several, on the same database in the same run.
    let (one, servers) = measure(&args, 1).await?;
    drop(servers);
    let (many, _servers) = measure(&args, args.replicas).await?;
    println!("orchion bench jobs: {} replicas / one", args.replicas);
    println!(
        "  end to end            {:.2} ({:.0} / {:.0} jobs/s)",
        many.throughput / one.throughput,
        many.throughput,
        one.throughput
    );
    println!(
        "  idle enqueue→start    p50 {:.1} ms across replicas, {:.1} ms on one",
        ms(many.idle_p50),
        ms(one.idle_p50)
    );
    Ok(())
}

/// Starts `replicas` servers on the store, the agents (agent `i` on replica `i % replicas`),
/// submits the jobs round-robin to the replicas, and prints what it measured.
async fn measure(
    args: &JobBenchArgs,
    replicas: usize,
) -> anyhow::Result<(Measured, Vec<BenchServer>)> {
    let mut extra = vec!["--join-token", super::TOKEN];
    if let Some(url) = &args.database_url {
        extra.extend(["--database-url", url.as_str()]);
    }
    let mut servers = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        servers.push(BenchServer::start(&extra).await?);
    }
    let server = &servers[0];
    let store_name = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    for s in &servers {
        eprintln!("server: {} (gRPC {}), store {store_name}", s.http, s.grpc);
    }
    let mut agents = if args.drain {
        Vec::new()
    } else {
        super::start_agents(&servers, args.agents, args.slots, false).await?
    };
    if args.job == BenchJob::ShellSecret {
        set_secret(&server.http).await?;
    }
    let job = job(args.job);
    // Submitted with a token of the bench's own, as a client would: every request is checked.
    let token = operator_token(&server.http).await?;
    let client = super::client_with(&token)
        .pool_max_idle_per_host(args.clients)
        .build()?;

    let mut commits_before = 0;
    let mut cpu_before = 0.0;
    for s in &servers {
        commits_before += s.commits().await?;
        cpu_before += s.cpu_seconds()?;
    }
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();
    let url = format!("{}/api/v1/jobs", server.http);
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("{}/api/v1/jobs", s.http))
        .collect();
    let accepted = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(report_progress(
        client.clone(),
        server.http.clone(),
        accepted.clone(),
        started,
    ));
    let batch = usize::from(args.batch);
    let requests: Vec<usize> = (0..args.jobs)
        .step_by(batch)
        .map(|first| batch.min(args.jobs - first))
        .collect();
    let submitted: Vec<anyhow::Result<()>> =
        futures::stream::iter(requests.into_iter().enumerate())
            .map(|(i, count)| {
                let client = client.clone();
                let url = urls[i % urls.len()].clone();
                let accepted = accepted.clone();
                let job = job.clone();
                async move {
                    let (request, expected) = if batch == 1 {
                        (client.post(&url).json(&job), 201)
                    } else {
                        let jobs = vec![job; count];
                        (
                            client
                                .post(format!("{url}/batch"))
                                .json(&json!({ "jobs": jobs })),
                            200,
                        )
                    };
                    let response = request.send().await?;
                    anyhow::ensure!(
                        response.status() == expected,
                        "submit answered {}",
                        response.status()
                    );
                    accepted.fetch_add(count as u64, Ordering::Relaxed);
                    Ok(())
                }
            })
            .buffer_unordered(args.clients)
            .collect()
            .await;
    submitted.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let submit_secs = started.elapsed().as_secs_f64();
    eprintln!("submitted {} jobs in {submit_secs:.1} s", args.jobs);
    if args.drain {
        agents = super::start_agents(&servers, args.agents, args.slots, false).await?;
    }
    wait_for_all(&client, server, started).await?;
    progress.abort();
    let failed: Value = client
        .get(format!("{url}?status=failed&limit=1"))
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(
        failed["items"].as_array().is_none_or(Vec::is_empty),
        "some jobs failed, e.g. {}",
        failed["items"][0]
    );
    let polled = started.elapsed().as_secs_f64();
    let mut cpu = -cpu_before;
    let mut commits = 0;
    let (mut rss, mut peak) = (0, 0);
    for s in &servers {
        cpu += s.cpu_seconds()?;
        commits += s.commits().await?;
        let (r, p) = s.rss()?;
        rss = rss.max(r);
        peak = peak.max(p);
    }
    let commits = commits - commits_before;

    let mut to_start = Vec::with_capacity(args.jobs);
    let mut to_done = Vec::with_capacity(args.jobs);
    let mut last_finished = started_at;
    let mut first_started: Option<OffsetDateTime> = None;
    // Newest first, down to the first job of this run: a reused PostgreSQL database holds the
    // jobs of earlier runs too.
    let mut cursor: Option<String> = None;
    'pages: loop {
        let mut page_url = format!("{url}?limit=500&order=newest");
        if let Some(c) = &cursor {
            page_url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client.get(&page_url).send().await?.json().await?;
        for job in page["items"].as_array().into_iter().flatten() {
            if let (Some(created), Some(start), Some(end)) = (
                time_of(job, "created_at"),
                time_of(job, "started_at"),
                time_of(job, "finished_at"),
            ) {
                if created < started_at {
                    break 'pages;
                }
                to_start.push(Duration::try_from(start - created).unwrap_or_default());
                to_done.push(Duration::try_from(end - created).unwrap_or_default());
                last_finished = last_finished.max(end);
                first_started = Some(first_started.map_or(start, |f| f.min(start)));
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    to_start.sort();
    to_done.sort();
    // End to end runs until the last job finished, by the server's clock (the same machine's),
    // so the status polling can be infrequent without blurring the figure. A drain starts when
    // the first job does, once the queue is full and the agents have joined.
    let from = match first_started {
        Some(first) if args.drain => first,
        _ => started_at,
    };
    let elapsed = (last_finished - from).as_seconds_f64();
    let throughput = args.jobs as f64 / elapsed;
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    println!("orchion bench jobs");
    println!("  store                 {store_name}, {replicas} server replica(s)");
    println!(
        "  jobs                  {} {}, {} agents × {} slots, {} API clients, {} per request",
        args.jobs,
        match args.job {
            BenchJob::Noop => "no-op",
            BenchJob::Shell => "shell (a literal in env)",
            BenchJob::ShellSecret => "shell (a secret in env, masked)",
        },
        args.agents,
        args.slots,
        args.clients,
        args.batch
    );
    println!(
        "  {}{elapsed:.2} s, {throughput:.0} jobs/s (submitting alone: {:.0} jobs/s)",
        if args.drain {
            "drain (queue full)    "
        } else {
            "end to end            "
        },
        args.jobs as f64 / submit_secs
    );
    println!(
        "  enqueue→start         p50 {:.1} ms, p99 {:.1} ms",
        ms(quantile(&to_start, 0.5)),
        ms(quantile(&to_start, 0.99))
    );
    println!(
        "  enqueue→done          p50 {:.1} ms, p99 {:.1} ms",
        ms(quantile(&to_done, 0.5)),
        ms(quantile(&to_done, 0.99))
    );
    println!(
        "  server CPU            {:.0} % of one core (all replicas)",
        cpu / polled * 100.0
    );
    println!(
        "  server RSS            {:.1} MiB (peak {:.1} MiB; the largest replica)",
        mib(rss),
        mib(peak)
    );
    println!(
        "  store commits         {commits} ({:.0}/s, {:.2} per job)",
        commits as f64 / polled,
        commits as f64 / args.jobs as f64
    );

    // An idle system: one job at a time, to see the latency floor; with replicas, through the
    // last one, which no agent talks to when there are fewer agents than replicas.
    let idle_url = &urls[urls.len() - 1];
    let mut idle = Vec::new();
    for _ in 0..50 {
        let sent = Instant::now();
        let job: Value = client
            .post(idle_url)
            .json(&json!({"executor": "noop", "spec": {}}))
            .send()
            .await?
            .json()
            .await?;
        let id = job["id"].as_str().context("no job id")?.to_owned();
        loop {
            let j: Value = client
                .get(format!("{url}/{id}"))
                .send()
                .await?
                .json()
                .await?;
            if j["status"] == "succeeded" {
                if let (Some(c), Some(s)) = (time_of(&j, "created_at"), time_of(&j, "started_at")) {
                    idle.push(Duration::try_from(s - c).unwrap_or_default());
                }
                break;
            }
            anyhow::ensure!(
                sent.elapsed() < Duration::from_secs(30),
                "an idle job did not finish"
            );
        }
    }
    idle.sort();
    println!(
        "  idle enqueue→start    p50 {:.1} ms, p99 {:.1} ms (50 jobs one at a time)",
        ms(quantile(&idle, 0.5)),
        ms(quantile(&idle, 0.99))
    );

    drop(agents);
    Ok((
        Measured {
            throughput,
            idle_p50: quantile(&idle, 0.5),
        },
        servers,
    ))
}

/// How many tasks are queued or running, from `GET /api/v1/status`.
pub(super) async fn in_flight(client: &reqwest::Client, http: &str) -> anyhow::Result<u64> {
    let s = status(client, http).await?;
    let count = |key: &str| {
        s["tasks"][key]
            .as_u64()
            .context("the status has no task counts")
    };
    Ok(count("queued")? + count("running")?)
}

/// Waits until every submitted job has finished (nothing queued or running). Counting them
/// reads every row of the queue's table (narrow, but as long as the queue), so the wait between
/// looks grows with what is left: about the time 5,000 jobs/s would take, within 0.1–10 s.
async fn wait_for_all(
    client: &reqwest::Client,
    server: &BenchServer,
    started: Instant,
) -> anyhow::Result<()> {
    loop {
        let left = in_flight(client, &server.http).await?;
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "jobs did not finish in an hour"
        );
        let wait = Duration::from_secs_f64(left as f64 / 5000.0);
        tokio::time::sleep(wait.clamp(Duration::from_millis(100), Duration::from_secs(10))).await;
    }
}

/// Every 10 s, how many jobs finished in the last 10 s (accepted minus in flight, counted by
/// `GET /api/v1/status`): a long run shows whether throughput decays as the tables grow.
async fn report_progress(
    client: reqwest::Client,
    http: String,
    accepted: Arc<AtomicU64>,
    started: Instant,
) {
    let mut last = 0u64;
    let first = started + Duration::from_secs(10);
    let mut tick = tokio::time::interval_at(first.into(), Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Ok(in_flight) = in_flight(&client, &http).await else {
            continue;
        };
        let done = accepted.load(Ordering::Relaxed).saturating_sub(in_flight);
        eprintln!(
            "… {:>5.0} s: {done} done, {:.0} jobs/s over the last 10 s",
            started.elapsed().as_secs_f64(),
            done.saturating_sub(last) as f64 / 10.0
        );
        last = done;
    }
}

/// A bare queue on the same database: one transaction per enqueue, claims of up to 64 with
/// `UPDATE … RETURNING`, one transaction per completion; as many workers as API clients.
async fn baseline(url: &str, jobs: usize, workers: usize) -> anyhow::Result<f64> {
    use sqlx::Executor;
    let sqlite = url.starts_with("sqlite:");
    if sqlite {
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
        let options = options
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let writer = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        writer.execute("DROP TABLE IF EXISTS bench_queue").await?;
        writer
            .execute("CREATE TABLE bench_queue (id INTEGER PRIMARY KEY, status TEXT NOT NULL, payload TEXT NOT NULL)")
            .await?;
        writer
            .execute("CREATE INDEX bench_queue_status ON bench_queue (status, id)")
            .await?;
        let started = Instant::now();
        let enqueue = futures::stream::iter(0..jobs)
            .map(|_| {
                let writer = writer.clone();
                async move {
                    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
                    sqlx::query(
                        "INSERT INTO bench_queue (status, payload) VALUES ('queued', '{}')",
                    )
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(())
                }
            })
            .buffer_unordered(workers)
            .collect::<Vec<_>>();
        let drain = async {
            let mut done = 0;
            while done < jobs {
                let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
                let ids: Vec<(i64,)> = sqlx::query_as(
                    "UPDATE bench_queue SET status = 'running' WHERE id IN (SELECT id FROM bench_queue WHERE status = 'queued' ORDER BY id LIMIT 64) RETURNING id",
                )
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                for (id,) in ids {
                    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
                    sqlx::query("UPDATE bench_queue SET status = 'done' WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    done += 1;
                }
            }
            Ok::<_, sqlx::Error>(())
        };
        let (results, drained) = tokio::join!(enqueue, drain);
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        drained?;
        let rate = jobs as f64 / started.elapsed().as_secs_f64();
        writer.execute("DROP TABLE bench_queue").await?;
        Ok(rate)
    } else {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(u32::try_from(workers + 2).unwrap_or(34))
            .connect(url)
            .await?;
        pool.execute("DROP TABLE IF EXISTS bench_queue").await?;
        pool.execute("CREATE TABLE bench_queue (id bigserial PRIMARY KEY, status text NOT NULL, payload text NOT NULL)").await?;
        pool.execute("CREATE INDEX bench_queue_status ON bench_queue (status, id)")
            .await?;
        let started = Instant::now();
        let enqueue = futures::stream::iter(0..jobs)
            .map(|_| {
                let pool = pool.clone();
                async move {
                    sqlx::query(
                        "INSERT INTO bench_queue (status, payload) VALUES ('queued', '{}')",
                    )
                    .execute(&pool)
                    .await?;
                    Ok::<_, sqlx::Error>(())
                }
            })
            .buffer_unordered(workers)
            .collect::<Vec<_>>();
        let drain = async {
            let mut done = 0;
            while done < jobs {
                let ids: Vec<(i64,)> = sqlx::query_as(
                    "UPDATE bench_queue SET status = 'running' WHERE id IN (SELECT id FROM bench_queue WHERE status = 'queued' ORDER BY id LIMIT 64 FOR UPDATE SKIP LOCKED) RETURNING id",
                )
                .fetch_all(&pool)
                .await?;
                let completions = futures::stream::iter(ids)
                    .map(|(id,)| {
                        let pool = pool.clone();
                        async move {
                            sqlx::query("UPDATE bench_queue SET status = 'done' WHERE id = $1")
                                .bind(id)
                                .execute(&pool)
                                .await?;
                            Ok::<_, sqlx::Error>(())
                        }
                    })
                    .buffer_unordered(workers)
                    .collect::<Vec<_>>()
                    .await;
                for c in completions {
                    c?;
                    done += 1;
                }
            }
            Ok::<_, sqlx::Error>(())
        };
        let (results, drained) = tokio::join!(enqueue, drain);
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        drained?;
        let rate = jobs as f64 / started.elapsed().as_secs_f64();
        pool.execute("DROP TABLE bench_queue").await?;
        let _ = pool.acquire().await?.close().await;
        Ok(rate)
    }
}

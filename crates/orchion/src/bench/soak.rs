//! `orchion bench soak`: does anything grow forever? A server with a short retention (`--keep`,
//! for finished jobs, events and idempotency keys) runs no-op jobs submitted at `--rate` a
//! second by real agents for `--duration`, and every `--sample` the bench reads the store's size
//! on disk (SQLite's database and WAL files; PostgreSQL's database and WAL directory), the rows
//! its biggest tables hold, and the server's memory. Under sustained load the rows kept should
//! level off at about `rate × keep`, and the sizes with them: the verdict compares the last
//! third of the run with the middle third.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};

use super::BenchServer;
use crate::cli::SoakBenchArgs;

pub async fn run(args: SoakBenchArgs) -> ExitCode {
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The tables whose rows the bench counts: what a job leaves behind.
const TABLES: [&str; 4] = ["tasks", "attempts", "events", "audit"];

/// Jobs per submitted batch at most (the API's limit).
const MAX_BATCH: usize = 1000;

/// How often the submitter posts a batch.
const TICK: Duration = Duration::from_millis(100);

/// A read-only look at the server's store.
enum Probe {
    Sqlite {
        pool: sqlx::SqlitePool,
        file: PathBuf,
    },
    Postgres(sqlx::PgPool),
}

/// One sample of the store and the server.
struct Sample {
    at: Duration,
    submitted: usize,
    unfinished: u64,
    /// The database's size and its write-ahead log's, in bytes.
    database: u64,
    wal: Option<u64>,
    rows: Vec<i64>,
    rss: u64,
    cpu: f64,
}

/// One figure read from a sample.
type Measure = fn(&Sample) -> u64;

impl Probe {
    async fn open(server: &BenchServer, database_url: Option<&str>) -> anyhow::Result<Probe> {
        Ok(match database_url {
            Some(url) => Probe::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .context("connecting to PostgreSQL to measure it")?,
            ),
            None => {
                let file = server.dir().join("orchion.db");
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&file)
                    .read_only(true);
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .context("opening the server's SQLite database read-only")?;
                Probe::Sqlite { pool, file }
            }
        })
    }

    /// The database's size and its WAL's (`None` where PostgreSQL does not let this user see
    /// its WAL directory).
    async fn sizes(&self) -> anyhow::Result<(u64, Option<u64>)> {
        match self {
            Probe::Sqlite { file, .. } => {
                let size = |path: PathBuf| std::fs::metadata(path).map_or(0, |m| m.len());
                let mut wal = file.clone().into_os_string();
                wal.push("-wal");
                Ok((size(file.clone()), Some(size(wal.into()))))
            }
            Probe::Postgres(pool) => {
                let (database,): (i64,) =
                    sqlx::query_as("SELECT pg_database_size(current_database())")
                        .fetch_one(pool)
                        .await?;
                let wal: Option<(Option<i64>,)> =
                    sqlx::query_as("SELECT sum(size)::bigint FROM pg_ls_waldir()")
                        .fetch_one(pool)
                        .await
                        .ok();
                Ok((database as u64, wal.and_then(|(w,)| w).map(|w| w as u64)))
            }
        }
    }

    async fn rows(&self) -> anyhow::Result<Vec<i64>> {
        let mut rows = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let query = format!("SELECT count(*) FROM {table}");
            let (n,): (i64,) = match self {
                Probe::Sqlite { pool, .. } => sqlx::query_as(&query).fetch_one(pool).await?,
                Probe::Postgres(pool) => sqlx::query_as(&query).fetch_one(pool).await?,
            };
            rows.push(n);
        }
        Ok(rows)
    }
}

/// The server's configuration file: everything a job leaves is kept `keep`. Removed when
/// dropped.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn write(keep: Duration) -> anyhow::Result<ConfigFile> {
        let keep = humantime::format_duration(keep);
        let path = std::env::temp_dir().join(format!("orchion-soak-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            format!(
                "[retention]\nfinished = \"{keep}\"\nevents = \"{keep}\"\nidempotency_keys = \"{keep}\"\naudit = \"{keep}\"\n"
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(ConfigFile(path))
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Submits `rate` no-op jobs a second, a batch every [`TICK`], until `stop`; counts them in
/// `submitted`.
async fn submit(
    client: reqwest::Client,
    url: String,
    rate: usize,
    submitted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // As many as the rate owes by now: a slow answer is made up for, not lost.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as usize;
        let sent = submitted.load(Ordering::Relaxed);
        let n = due.saturating_sub(sent).min(MAX_BATCH);
        if n == 0 {
            continue;
        }
        let jobs: Vec<Value> = (sent..sent + n)
            .map(|i| json!({"name": format!("soak-{i}"), "executor": "noop", "spec": {}}))
            .collect();
        let answer = client
            .post(&url)
            .json(&json!({"jobs": jobs}))
            .send()
            .await?;
        let status = answer.status();
        anyhow::ensure!(
            status.is_success(),
            "submitting a batch answered {status}: {}",
            answer.text().await.unwrap_or_default()
        );
        submitted.fetch_add(n, Ordering::Relaxed);
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn bench(args: SoakBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1");
    anyhow::ensure!(
        args.keep >= Duration::from_secs(60),
        "--keep must be at least 1m, the shortest retention a server takes (got {:?})",
        args.keep
    );
    anyhow::ensure!(
        args.duration >= args.sample * 3,
        "--duration must be at least three samples (--sample {:?})",
        args.sample
    );
    let config = ConfigFile::write(args.keep)?;
    let config_path = config.0.to_string_lossy().into_owned();
    let mut extra = vec!["--join-token", super::TOKEN, "--config", &config_path];
    if let Some(url) = &args.database_url {
        extra.extend(["--database-url", url.as_str()]);
    }
    let server = BenchServer::start(&extra).await?;
    let probe = Probe::open(&server, args.database_url.as_deref()).await?;
    let _agents = server.start_agents(args.agents, args.slots).await?;
    let client = super::admin_client()?;
    let store = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!("orchion bench soak");
    println!("  store                 {store}");
    println!(
        "  load                  {} no-op jobs/s for {:?}, {} agents × {} slots",
        args.rate, args.duration, args.agents, args.slots
    );
    println!(
        "  kept                  finished jobs, events, idempotency keys, audit: {:?} (about {} jobs)",
        args.keep,
        (args.keep.as_secs_f64() * args.rate as f64) as u64
    );
    println!();
    println!(
        "  {:>6}  {:>9}  {:>10}  {:>9}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  {:>6}",
        "t (s)",
        "submitted",
        "unfinished",
        "db MiB",
        "wal MiB",
        TABLES[0],
        TABLES[1],
        TABLES[2],
        TABLES[3],
        "rss MiB",
        "cpu %"
    );

    let submitted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let submitter = tokio::spawn(submit(
        client.clone(),
        format!("{}/api/v1/jobs/batch", server.http),
        args.rate,
        submitted.clone(),
        stop.clone(),
    ));

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut cpu_before = server.cpu_seconds()?;
    let mut at_before = Duration::ZERO;
    let mut next = started + args.sample;
    while next <= started + args.duration {
        tokio::time::sleep_until(next.into()).await;
        next += args.sample;
        if submitter.is_finished() {
            break;
        }
        let at = started.elapsed();
        let cpu_now = server.cpu_seconds()?;
        let cpu = 100.0 * (cpu_now - cpu_before) / (at - at_before).as_secs_f64();
        (cpu_before, at_before) = (cpu_now, at);
        let (database, wal) = probe.sizes().await?;
        let sample = Sample {
            at,
            submitted: submitted.load(std::sync::atomic::Ordering::Relaxed),
            unfinished: super::jobs::in_flight(&client, &server.http).await?,
            database,
            wal,
            rows: probe.rows().await?,
            rss: server.rss()?.0,
            cpu,
        };
        println!(
            "  {:>6.0}  {:>9}  {:>10}  {:>9.1}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8.1}  {:>6.1}",
            sample.at.as_secs_f64(),
            sample.submitted,
            sample.unfinished,
            mib(sample.database),
            sample
                .wal
                .map_or("-".to_owned(), |w| format!("{:.1}", mib(w))),
            sample.rows[0],
            sample.rows[1],
            sample.rows[2],
            sample.rows[3],
            mib(sample.rss),
            sample.cpu,
        );
        samples.push(sample);
    }
    stop.cancel();
    submitter
        .await
        .context("the submitter panicked")?
        .context("submitting jobs")?;
    summarize(&samples);
    Ok(())
}

fn summarize(samples: &[Sample]) {
    let Some(last) = samples.last() else {
        return;
    };
    let third = samples.len() / 3;
    let (middle, end) = (&samples[third..2 * third], &samples[2 * third..]);
    println!();
    let rate = last.submitted as f64 / last.at.as_secs_f64();
    println!(
        "  submitted             {} jobs in {:.0} s ({rate:.0}/s; at 10 jobs/s that is {:.1} days)",
        last.submitted,
        last.at.as_secs_f64(),
        last.submitted as f64 / (10.0 * 86_400.0)
    );
    println!(
        "  unfinished at the end {} (the agents {} up)",
        last.unfinished,
        if last.unfinished as f64 <= rate * 5.0 {
            "kept"
        } else {
            "did not keep"
        }
    );
    let peak = |part: &[Sample], of: &dyn Fn(&Sample) -> u64| part.iter().map(of).max();
    // A few MiB either way is a checkpoint's timing, not growth.
    let sizes: [(&str, Measure); 2] = [
        ("on disk", |s| s.database + s.wal.unwrap_or(0)),
        ("server memory", |s| s.rss),
    ];
    for (name, of) in sizes {
        if let (Some(before), Some(after)) = (peak(middle, &of), peak(end, &of)) {
            println!(
                "  {name:<21} peak {:.1} MiB in the middle third, {:.1} MiB in the last: {}",
                mib(before),
                mib(after),
                verdict(before, after, 8 << 20)
            );
        }
    }
    for (i, table) in TABLES.iter().enumerate() {
        let rows = |s: &Sample| u64::try_from(s.rows[i]).unwrap_or(0);
        if let (Some(before), Some(after)) = (peak(middle, &rows), peak(end, &rows)) {
            println!(
                "  {table:<21} peak {before} rows in the middle third, {after} in the last: {}",
                verdict(before, after, 1_000)
            );
        }
    }
}

/// Whether the last third's peak stays within a tenth (and `slack`) of the middle third's.
fn verdict(before: u64, after: u64, slack: u64) -> &'static str {
    if after <= before + before / 10 + slack {
        "bounded"
    } else {
        "still growing"
    }
}

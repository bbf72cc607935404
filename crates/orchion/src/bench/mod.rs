//! `orchion bench …`: benchmarks that start a real server as a child process and drive it over
//! its public interfaces, reporting medians and tails measured in one run. Figures and the exact
//! commands are recorded in BENCHMARKS.md.

pub mod dag;
pub mod failover;
pub mod heartbeats;
pub mod idle;
pub mod jobs;
pub mod soak;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;

/// The join token bench servers and their agents share.
pub const TOKEN: &str = "orchion-bench-join-token";

/// A server started for a benchmark, killed when dropped.
pub struct BenchServer {
    child: tokio::process::Child,
    pub http: String,
    pub grpc: String,
    /// The Prometheus endpoint's base URL.
    pub metrics: String,
    dir: PathBuf,
}

/// The admin token every server this bench starts accepts (`auth.admin_token`), made once
/// per bench run.
pub fn admin_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use rand::RngCore as _;
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("bench-{hex}")
    })
}

/// An HTTP client builder that sends `token` with every request.
pub fn client_with(token: &str) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(mut value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder().default_headers(headers)
}

/// An HTTP client signed in as the bench's admin.
pub fn admin_client() -> anyhow::Result<reqwest::Client> {
    Ok(client_with(admin_token()).build()?)
}

/// A port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl BenchServer {
    /// Starts `orchion server` (this very binary) in a fresh temp dir and waits until ready.
    pub async fn start(extra: &[&str]) -> anyhow::Result<BenchServer> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("orchion-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (http_port, grpc_port, metrics_port) = (free_port()?, free_port()?, free_port()?);
        let exe = std::env::current_exe().context("cannot find the orchion binary")?;
        // `ORCHION_BENCH_SERVER_LOG=sqlx::query=debug` shows every statement the server runs,
        // with its time, on standard output.
        let server_log = std::env::var("ORCHION_BENCH_SERVER_LOG").ok();
        let child = tokio::process::Command::new(exe)
            .arg("server")
            .args(["--http-port", &http_port.to_string()])
            .args(["--port", &grpc_port.to_string()])
            .args(["--metrics-port", &metrics_port.to_string()])
            .arg("--data-dir")
            .arg(&dir)
            .args(extra)
            .env("ORCHION_LOG", server_log.as_deref().unwrap_or("warn"))
            .env("ORCHION_AUTH__ADMIN_TOKEN", admin_token())
            .stdin(Stdio::null())
            .stdout(if server_log.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .context("cannot start orchion server")?;
        let server = BenchServer {
            child,
            http: format!("http://127.0.0.1:{http_port}"),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}"),
            dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client
                .get(format!("{}/readyz", self.http))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server did not become ready in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the server has exited")
    }

    /// CPU seconds the server has used so far (user + system).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?))?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let after = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields
            .get(11)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0);
        Ok(ticks / clock_ticks_per_second())
    }

    /// The server's resident set size and its peak, in bytes.
    pub fn rss(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    /// The sum of a counter's samples (every label set) on the server's `/metrics`.
    pub async fn counter(&self, name: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("{}/metrics", self.metrics))
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Write transactions the server's store has committed.
    pub async fn commits(&self) -> anyhow::Result<u64> {
        let status: serde_json::Value = admin_client()?
            .get(format!("{}/api/v1/status", self.http))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        status["store"]["commits"]
            .as_u64()
            .context("the status answer has no store.commits")
    }

    /// Stops the server (SIGKILL) and waits for it, keeping its data for a baseline run.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `count` real `orchion agent` processes with `slots` each (the server must have
    /// been started with `--join-token TOKEN`), and waits until all have joined. They are
    /// killed when the returned handles drop.
    pub async fn start_agents(
        &self,
        count: usize,
        slots: u16,
    ) -> anyhow::Result<Vec<tokio::process::Child>> {
        start_agents(std::slice::from_ref(self), count, slots, false).await
    }
}

/// Starts `count` real `orchion agent` processes with `slots` each and waits until all have
/// joined. Agent `i` talks to replica `i % replicas.len()`; with `fail_over`, it knows every
/// replica, starting with that one. They are killed when the returned handles drop.
pub async fn start_agents(
    replicas: &[BenchServer],
    count: usize,
    slots: u16,
    fail_over: bool,
) -> anyhow::Result<Vec<tokio::process::Child>> {
    let first = replicas.first().context("no server")?;
    let exe = std::env::current_exe()?;
    let mut agents = Vec::with_capacity(count);
    for i in 0..count {
        let home = &replicas[i % replicas.len()];
        let servers = if fail_over {
            (0..replicas.len())
                .map(|k| replicas[(i + k) % replicas.len()].grpc.clone())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            home.grpc.clone()
        };
        agents.push(
            tokio::process::Command::new(&exe)
                .args(["agent", "--server", &servers, "--join-token", TOKEN])
                .args([
                    "--name",
                    &format!("bench-{i}"),
                    "--slots",
                    &slots.to_string(),
                ])
                .arg("--state-dir")
                .arg(home.dir.join(format!("agent-{i}")))
                .env("ORCHION_LOG", "warn")
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start an agent")?,
        );
    }
    let client = admin_client()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: serde_json::Value = client
            .get(format!("{}/api/v1/status", first.http))
            .send()
            .await?
            .json()
            .await?;
        if status["nodes"]["ready"].as_u64() == Some(count as u64) {
            return Ok(agents);
        }
        anyhow::ensure!(Instant::now() < deadline, "the agents did not join in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// The `q`-quantile of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_right_sample() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}

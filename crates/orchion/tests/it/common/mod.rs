//! Runs the real `orchion` binary for tests: on a free port, in a temp dir, with its output kept
//! and printed when a test fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_orchion");

/// The admin token every test server accepts (`auth.admin_token`), and every test client
/// sends.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A running `orchion` process.
pub struct Orchion {
    child: Child,
    /// The HTTP API's address, for servers.
    pub addr: SocketAddr,
    /// The gRPC API's address, for servers.
    pub grpc: Option<SocketAddr>,
    output: Arc<Mutex<Vec<String>>>,
    /// How many of the two output readers have reached the end of their stream.
    readers_done: Arc<std::sync::atomic::AtomicUsize>,
}

/// A command running the binary with a clean environment: nothing from the developer's shell
/// (PORT, ORCHION_*) leaks into the test.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("ORCHION_AUTH__ADMIN_TOKEN", ADMIN_TOKEN)
        .env("ORCHION_TOKEN", ADMIN_TOKEN);
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

impl Orchion {
    /// Starts `orchion <args> --http-port 0` in `dir` and waits until it listens.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Orchion {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--http-port", "0"]);
        if !args.contains(&"--port") {
            all.extend(["--port", "0"]);
        }
        if !args.contains(&"--metrics-port") {
            all.extend(["--metrics-port", "0"]);
        }
        let mut process = Orchion::spawn(dir, &all, env);
        let line = process.wait_for_line("HTTP API listening on ", Duration::from_secs(60));
        process.addr = listening_addr(&line, "HTTP API listening on http://")
            .or_else(|| listening_addr(&line, "HTTP API listening on https://"))
            .unwrap();
        process.grpc = process
            .output
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| listening_addr(l, "gRPC API listening on "));
        if process.grpc.is_none() {
            let line = process.wait_for_line("gRPC API listening on ", Duration::from_secs(10));
            process.grpc = listening_addr(&line, "gRPC API listening on ");
        }
        process
    }

    /// Starts `orchion <args>` in `dir` without waiting for anything.
    pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Orchion {
        let mut cmd = command(args);
        cmd.current_dir(dir)
            .env("ORCHION_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("orchion starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let readers_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for (stream, prefix) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                "",
            ),
            (Box::new(child.stderr.take().unwrap()), "stderr: "),
        ] {
            let output = output.clone();
            let done = readers_done.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(format!("{prefix}{line}"));
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        Orchion {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            grpc: None,
            output,
            readers_done,
        }
    }

    /// Waits for an output line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self
                .output
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "orchion exited ({status}) before printing `{needle}`:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "orchion did not print `{needle}` within {limit:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, failing the test past `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Everything it printed is read before its output is looked at (a process it
                // started may hold the pipes open: not for more than a moment).
                let read_by = Instant::now() + Duration::from_secs(5);
                while self.readers_done.load(std::sync::atomic::Ordering::SeqCst) < 2
                    && Instant::now() < read_by
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "orchion did not exit within {limit:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for Orchion {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- orchion output ---\n{}\n---", self.output());
        }
    }
}

/// The address after `prefix` in a "listening" log line (JSON or text).
pub fn listening_addr(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = line.split(prefix).nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':' || *c == '[' || *c == ']')
        .collect();
    addr.parse().ok()
}

/// A port that was free a moment ago, for a server that must come back on the same port. It
/// is picked below the kernel's ephemeral range (32768 and up), where the port-0 listeners of
/// tests running at the same time never land, so nothing takes it between now and its use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread across test processes, then walk.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % 1000) as u16 * 12;
    loop {
        let port = 20_000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed) % 12_000) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `limit`. For conditions
/// only observable by asking (a node's status), never as a stand-in for a known delay.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` as JSON, or `None` when the request or the body fails (for `eventually`).
pub async fn get_json(server: &Orchion, path: &str) -> Option<serde_json::Value> {
    http()
        .get(server.url(path))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// A JSON HTTP client for tests, signed in as admin.
pub fn http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A JSON HTTP client for tests that sends no token.
pub fn anonymous() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs `body` as JSON and returns the answer's JSON, failing the test on an error status.
pub async fn post_json(server: &Orchion, path: &str, body: serde_json::Value) -> serde_json::Value {
    let response = http()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    assert!(status.is_success(), "POST {path}: {status} {answer}");
    answer
}

/// The join token test clusters use.
pub const TOKEN: &str = "test-join-token-0123456789";

/// `orchion server` with fast liveness (2 s timeout, 200 ms checks, down 2 s later) on a fixed
/// gRPC port, so agents find it again after a restart.
pub fn cluster_server(dir: &Path, grpc_port: u16) -> Orchion {
    let port = grpc_port.to_string();
    Orchion::start(
        dir,
        &[
            "server",
            "--port",
            &port,
            "--join-token",
            TOKEN,
            "--heartbeat-timeout",
            "2s",
        ],
        &[
            ("ORCHION_CLUSTER__CHECK_INTERVAL", "200ms"),
            ("ORCHION_CLUSTER__DOWN_AFTER", "2s"),
        ],
    )
}

/// `orchion agent` named `name`, labelled `agent=<name>`, with its state in `<dir>/<name>`.
pub fn agent(dir: &Path, grpc_port: u16, name: &str, slots: u16) -> Orchion {
    let server = format!("http://127.0.0.1:{grpc_port}");
    let state = dir.join(name);
    let label = format!("agent={name}");
    let slots = slots.to_string();
    Orchion::spawn(
        dir,
        &[
            "agent",
            "--server",
            &server,
            "--join-token",
            TOKEN,
            "--name",
            name,
            "--label",
            &label,
            "--slots",
            &slots,
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    )
}

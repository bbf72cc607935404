//! Runs the real `orchion` binary for tests: on a free port, in a temp dir, with its output kept
//! and printed when a test fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_orchion");

/// A running `orchion` process.
pub struct Orchion {
    child: Child,
    pub addr: SocketAddr,
    output: Arc<Mutex<Vec<String>>>,
}

/// A command running the binary with a clean environment: nothing from the developer's shell
/// (PORT, ORCHION_*) leaks into the test.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

impl Orchion {
    /// Starts `orchion <args> --http-port 0` in `dir` and waits until it listens.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Orchion {
        let mut cmd = command(args);
        cmd.args(["--http-port", "0"])
            .current_dir(dir)
            .envs(env.iter().copied())
            .env("ORCHION_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("orchion starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(addr) = listening_addr(&line) {
                        let _ = tx.send(addr);
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(format!("stderr: {line}"));
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "orchion did not start listening:\n{}",
                    output.lock().unwrap().join("\n")
                );
            }
        };
        Orchion {
            child,
            addr,
            output,
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

/// The address in the "listening" log line (JSON or text).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("HTTP API listening on http://").nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':' || *c == '[' || *c == ']')
        .collect();
    addr.parse().ok()
}

/// A JSON HTTP client for tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

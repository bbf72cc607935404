//! The dashboard in a real headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol, against a real `orchion dev` and one more agent: it loads without console errors, a job submitted
//! through the API appears and turns `succeeded` without a reload, a run's graph shows its
//! steps' states, a killed node turns `unreachable` on the page, 10,000 jobs are paged, and a
//! screenshot is written as a test artifact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Orchion, TOKEN, agent, free_port, http, post_json};

/// Headless Chromium with one page, spoken to over the DevTools protocol.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    next_id: AtomicU64,
    send: mpsc::UnboundedSender<String>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    /// Console errors, uncaught exceptions and error log entries, as they came.
    errors: Arc<Mutex<Vec<String>>>,
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// The browser to test with; `None` (after saying so) where none is installed, outside CI.
fn chromium_for_the_test() -> Option<PathBuf> {
    let binary = chromium();
    if binary.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("chromium is required in CI (Debian's chromium package)");
        }
        eprintln!("chromium is not installed; .ci/run installs it");
    }
    binary
}

impl Browser {
    async fn launch(binary: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        // Chromium writes the port it chose into the profile.
        let active = profile.path().join("DevToolsActivePort");
        let started = Instant::now();
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&active)
                && let Some(port) = text.lines().next().and_then(|l| l.parse::<u16>().ok())
            {
                break port;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromium did not open its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let targets: Value = http()
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (mut write, mut read) = socket.split();
        let (send, mut outbox) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = outbox.recv().await {
                if write.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        });
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let waiting = waiting.clone();
            let errors = errors.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = read.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if let Some(id) = value["id"].as_u64() {
                        if let Some(reply) = waiting.lock().unwrap().remove(&id) {
                            let _ = reply.send(value);
                        }
                        continue;
                    }
                    let params = &value["params"];
                    let error = match value["method"].as_str() {
                        Some("Runtime.exceptionThrown") => Some(format!(
                            "exception: {}",
                            params["exceptionDetails"]["exception"]["description"]
                                .as_str()
                                .or(params["exceptionDetails"]["text"].as_str())
                                .unwrap_or("?")
                        )),
                        Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                            Some(format!("console.error: {}", params["args"]))
                        }
                        Some("Log.entryAdded") if params["entry"]["level"] == "error" => Some(
                            format!("log: {}", params["entry"]["text"].as_str().unwrap_or("?")),
                        ),
                        _ => None,
                    };
                    if let Some(error) = error {
                        errors.lock().unwrap().push(error);
                    }
                }
            });
        }
        let browser = Browser {
            child,
            _profile: profile,
            next_id: AtomicU64::new(1),
            send,
            waiting,
            errors,
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
    }

    async fn call(&self, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (reply, answer) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, reply);
        self.send
            .send(json!({"id": id, "method": method, "params": params}).to_string())
            .unwrap();
        let value = tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .unwrap_or_else(|_| panic!("{method} answered"))
            .unwrap();
        assert!(value.get("error").is_none(), "{method}: {value}");
        value["result"].clone()
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Waits until `expression` evaluates to `expected`.
    async fn wait_for(&self, what: &str, expression: &str, expected: Value, limit: Duration) {
        let started = Instant::now();
        let mut last = Value::Null;
        while started.elapsed() < limit {
            last = self.eval(expression).await;
            if last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: `{expression}` was {last}, expected {expected}");
    }

    async fn navigate(&self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            shot["data"].as_str().unwrap(),
        )
        .unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// The errors so far, forgotten from now on.
    fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_cluster_live() {
    let Some(binary) = chromium_for_the_test() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let port = grpc.to_string();
    // `orchion dev` (its own agent runs the jobs), with fast liveness, and one more agent to kill.
    let server = Orchion::start(
        dir.path(),
        &[
            "dev",
            "--port",
            &port,
            "--join-token",
            TOKEN,
            "--heartbeat-timeout",
            "2s",
        ],
        &[
            ("ORCHION_CLUSTER__CHECK_INTERVAL", "200ms"),
            ("ORCHION_CLUSTER__DOWN_AFTER", "30s"),
        ],
    );
    let mut doomed = agent(dir.path(), grpc, "doomed", 1);
    let browser = Browser::launch(&binary).await;
    let base = server.url("/");

    // Without a session: the sign-in page and no data; a wrong token is refused; the admin
    // token signs in.
    browser.navigate(&base).await;
    browser
        .wait_for(
            "the sign-in page",
            "document.querySelector('#view h1')?.textContent",
            json!("Sign in"),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#view table').length")
            .await,
        json!(0)
    );
    let sign_in = |token: &str| {
        format!(
            "document.getElementById('token').value = {}; document.getElementById('sign-in').requestSubmit(); true",
            json!(token)
        )
    };
    browser.eval(&sign_in("orc_wrong")).await;
    browser
        .wait_for(
            "the refusal",
            "document.querySelector('#sign-in .error')?.textContent.includes('not one this server issued')",
            json!(true),
            Duration::from_secs(10),
        )
        .await;
    // The browser logs the two refusals: the probe for a session, and the wrong token.
    let refused =
        "log: Failed to load resource: the server responded with a status of 401 (Unauthorized)";
    assert_eq!(browser.take_errors(), [refused, refused]);
    browser.eval(&sign_in(crate::common::ADMIN_TOKEN)).await;
    browser
        .wait_for(
            "the overview after signing in",
            "document.querySelector('#view h1')?.textContent !== 'Sign in' && !document.getElementById('sign-out').hidden",
            json!(true),
            Duration::from_secs(20),
        )
        .await;

    // Nodes: both join, then the killed one turns unreachable, with no reload.
    browser.navigate(&format!("{base}#/nodes")).await;
    browser
        .wait_for(
            "the nodes page",
            "document.querySelector('#view h1')?.textContent",
            json!("Nodes"),
            Duration::from_secs(20),
        )
        .await;
    browser.eval("window.__notReloaded = true").await;
    let node_status = |name: &str| {
        format!("document.querySelector('tr[data-node=\"{name}\"] [data-status]')?.dataset.status")
    };
    browser
        .wait_for(
            "the doomed node to show ready",
            &node_status("doomed"),
            json!("ready"),
            Duration::from_secs(20),
        )
        .await;
    doomed.signal("KILL");
    let _ = doomed.wait(Duration::from_secs(10));
    browser
        .wait_for(
            "the killed node to turn unreachable on the page",
            &node_status("doomed"),
            json!("unreachable"),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(browser.eval("window.__notReloaded").await, json!(true));

    // Jobs: one submitted through the API appears and succeeds without a reload.
    browser.navigate(&format!("{base}#/jobs")).await;
    browser
        .wait_for(
            "the jobs page",
            "document.querySelector('#view h1')?.textContent",
            json!("Jobs"),
            Duration::from_secs(20),
        )
        .await;
    browser.eval("window.__notReloaded = true").await;
    let job = post_json(
        &server,
        "/api/v1/jobs",
        json!({"name": "from-the-api", "executor": "shell",
               "spec": {"command": "sh", "args": ["-c", "sleep 1; echo done"]}}),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let job_status =
        format!("document.querySelector('tr[data-job=\"{id}\"] [data-status]')?.dataset.status");
    browser
        .wait_for(
            "the job to succeed on the page",
            &job_status,
            json!("succeeded"),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(browser.eval("window.__notReloaded").await, json!(true));

    // Cancel from the page.
    let sleeper = post_json(
        &server,
        "/api/v1/jobs",
        json!({"name": "sleeper", "executor": "shell", "spec": {"command": "sleep", "args": ["60"]}}),
    )
    .await;
    let sleeper = sleeper["id"].as_str().unwrap();
    let sleeper_status = format!(
        "document.querySelector('tr[data-job=\"{sleeper}\"] [data-status]')?.dataset.status"
    );
    browser
        .wait_for(
            "the sleeper to run",
            &sleeper_status,
            json!("running"),
            Duration::from_secs(30),
        )
        .await;
    browser
        .eval(&format!(
            "[...document.querySelectorAll('tr[data-job=\"{sleeper}\"] button')].find(b => b.textContent === 'Cancel').click()"
        ))
        .await;
    browser
        .wait_for(
            "the sleeper to be cancelled from the page",
            &sleeper_status,
            json!("cancelled"),
            Duration::from_secs(30),
        )
        .await;

    // Its page: the log, and the output.
    browser.navigate(&format!("{base}#/jobs/{id}")).await;
    browser
        .wait_for(
            "the job's log",
            "document.getElementById('log')?.textContent.includes('done')",
            json!(true),
            Duration::from_secs(20),
        )
        .await;

    // A run: its graph shows every step with its state.
    post_json(
        &server,
        "/api/v1/workflow-types",
        json!({"name": "diamond", "steps": [
            {"name": "a", "executor": "noop", "spec": {}},
            {"name": "b", "needs": ["a"], "executor": "noop", "spec": {}},
            {"name": "c", "needs": ["a"], "executor": "shell", "spec": {"command": "false"},
             "retry": {"max_attempts": 1}},
            {"name": "d", "needs": ["b", "c"], "executor": "noop", "spec": {}}
        ]}),
    )
    .await;
    let run = post_json(&server, "/api/v1/workflows", json!({"type": "diamond"})).await;
    let run_id = run["id"].as_str().unwrap();
    browser.navigate(&format!("{base}#/runs/{run_id}")).await;
    browser
        .wait_for(
            "the run's graph to show each step's state",
            "[...document.querySelectorAll('svg.dag g.node')].map(g => g.dataset.step + ':' + g.dataset.status).join(' ')",
            json!("a:succeeded b:succeeded c:failed d:skipped"),
            Duration::from_secs(30),
        )
        .await;
    let shot = browser.screenshot("run").await;
    eprintln!("screenshot: {}", shot.display());

    // 10,000 jobs (delayed, so they wait): the list pages through them.
    let later = "2999-01-01T00:00:00Z";
    for _ in 0..10 {
        let jobs: Vec<Value> = (0..1000)
            .map(|i| json!({"name": format!("bulk-{i}"), "executor": "noop", "spec": {}, "run_at": later}))
            .collect();
        post_json(&server, "/api/v1/jobs/batch", json!({"jobs": jobs})).await;
    }
    browser.navigate(&format!("{base}#/jobs?name=bulk")).await;
    browser
        .wait_for(
            "a page of 50 of the 10,000 jobs",
            "document.querySelectorAll('tr[data-job]').length",
            json!(50),
            Duration::from_secs(20),
        )
        .await;
    browser
        .eval("[...document.querySelectorAll('.pager button')].find(b => b.textContent.startsWith('Older')).click()")
        .await;
    browser
        .wait_for(
            "the second page",
            "document.querySelector('.pager span')?.textContent",
            json!("Page 2"),
            Duration::from_secs(20),
        )
        .await;
    browser.navigate(&format!("{base}#/")).await;
    browser
        .wait_for(
            "the overview",
            "document.querySelector('#view h1')?.textContent",
            json!("Overview"),
            Duration::from_secs(20),
        )
        .await;
    let shot = browser.screenshot("overview").await;
    eprintln!("screenshot: {}", shot.display());
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);

    assert_eq!(browser.errors(), Vec::<String>::new(), "no console errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_through_the_identity_provider() {
    let Some(binary) = chromium_for_the_test() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let issuer = crate::oidc::FakeIssuer::start(|_| {});
    let server = crate::oidc::server_with_oidc(dir.path(), "server", &issuer);
    let browser = Browser::launch(&binary).await;
    browser.navigate(&server.url("/")).await;
    browser
        .wait_for(
            "the identity provider's button on the sign-in page",
            "document.getElementById('sign-in-oidc')?.textContent",
            json!("Sign in with Fake IdP"),
            Duration::from_secs(20),
        )
        .await;
    browser
        .eval("document.getElementById('sign-in-oidc').click(); true")
        .await;
    // To the provider and back: signed in, with the sign-out button.
    browser
        .wait_for(
            "the overview after signing in through the provider",
            "document.querySelector('#view h1')?.textContent !== 'Sign in' && document.getElementById('sign-out')?.hidden === false",
            json!(true),
            Duration::from_secs(20),
        )
        .await;
    // Only the probe for a session before signing in was refused.
    let refused =
        "log: Failed to load resource: the server responded with a status of 401 (Unauthorized)";
    assert_eq!(browser.take_errors(), [refused]);
    browser
        .eval("document.getElementById('sign-out').click(); true")
        .await;
    browser
        .wait_for(
            "the sign-in page after signing out",
            "document.querySelector('#view h1')?.textContent",
            json!("Sign in"),
            Duration::from_secs(20),
        )
        .await;
}

//! The `kubernetes` executor end to end: a real `orchion server` reaching `orchion-fake-kube`
//! (a fake API server process) through a kubeconfig, jobs submitted over REST running as Jobs,
//! their logs and cancellation; and a server without any cluster, which still serves and says
//! why the executor is unhealthy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::common::{Orchion, eventually, get_json, http};
use serde_json::{Value, json};

/// `orchion-fake-kube`, killed on drop.
struct FakeApi {
    child: Child,
    url: String,
}

impl FakeApi {
    fn start() -> Self {
        Self::start_ticking(100)
    }

    /// The fake, its scripted containers taking a step every `tick_ms`.
    fn start_ticking(tick_ms: u64) -> Self {
        let bin = PathBuf::from(crate::common::BIN).with_file_name("orchion-fake-kube");
        let mut child = Command::new(bin)
            .args(["--tick-ms", &tick_ms.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("orchion-fake-kube is built with the workspace");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_owned();
        Self {
            child,
            url: format!("http://{addr}"),
        }
    }

    /// A kubeconfig for the fake, as `kubectl` would write one.
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: tester\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: agents\ncurrent-context: fake\n",
                self.url
            ),
        )
        .unwrap();
        path
    }

    async fn changes(&self) -> Vec<String> {
        let body: Value = http()
            .get(format!("{}/fake/requests", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(body["changes"].clone()).unwrap()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn executor(server: &Orchion, name: &str) -> Option<Value> {
    let list = get_json(server, "/api/v1/executors").await?;
    list["items"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
}

async fn submit(server: &Orchion, body: Value) -> reqwest::Response {
    http()
        .post(server.url("/api/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn wait_job(server: &Orchion, id: &str, status: &str) -> Value {
    eventually(
        &format!("job {id} to be {status}"),
        Duration::from_secs(30),
        || async {
            let job = get_json(server, &format!("/api/v1/jobs/{id}")).await?;
            (job["status"] == status).then_some(job)
        },
    )
    .await
}

fn server_with_cluster(dir: &Path, kubeconfig: &Path) -> Orchion {
    server_with_cluster_and(dir, kubeconfig, &[])
}

/// [`server_with_cluster`] with `env` besides.
fn server_with_cluster_and(dir: &Path, kubeconfig: &Path, env: &[(&str, &str)]) -> Orchion {
    let mut all = vec![
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ("KUBERNETES_NAMESPACE", "agents"),
        ("ORCHION_KUBERNETES__POLL_INTERVAL", "100ms"),
        ("ORCHION_KUBERNETES__PROBE_INTERVAL", "500ms"),
    ];
    all.extend_from_slice(env);
    Orchion::start(dir, &["server"], &all)
}

/// Waits until `server`'s kubernetes executor is healthy, with its agent.
async fn healthy(server: &Orchion) {
    eventually(
        "the kubernetes executor to be healthy",
        Duration::from_secs(30),
        || async {
            let e = executor(server, "kubernetes").await?;
            (e["health"] == "healthy" && e["agents"] == 1).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_kubernetes_jobs_with_their_logs_and_cancellation() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApi::start();
    let server = server_with_cluster(dir.path(), &fake.kubeconfig(dir.path()));
    healthy(&server).await;

    let created = submit(
        &server,
        json!({"executor": "kubernetes", "spec": {"image": "ghcr.io/acme/succeed:1", "args": ["review", 42]}}),
    )
    .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = wait_job(&server, &id, "succeeded").await;
    assert_eq!(done["output"], "starting\nworking\ndone\n");
    let logs = get_json(&server, &format!("/api/v1/jobs/{id}/logs"))
        .await
        .unwrap();
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("created Job agents/orchion-")),
        "{lines:?}"
    );
    assert!(lines.contains(&"working"), "{lines:?}");

    let sleeping = submit(
        &server,
        json!({"executor": "kubernetes", "spec": {"image": "ghcr.io/acme/sleep:1"}}),
    )
    .await;
    let id = sleeping.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(
        "the sleeping job to log",
        Duration::from_secs(30),
        || async {
            let logs = get_json(&server, &format!("/api/v1/jobs/{id}/logs")).await?;
            logs["lines"]
                .as_array()?
                .iter()
                .any(|l| l["line"] == "tick 2")
                .then_some(())
        },
    )
    .await;
    let cancel = http()
        .post(server.url(&format!("/api/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    wait_job(&server, &id, "cancelled").await;
    eventually(
        "the Job to be deleted with its pods",
        Duration::from_secs(20),
        || async {
            fake.changes()
                .await
                .iter()
                .any(|c| {
                    c.starts_with("DELETE jobs/") && c.ends_with("propagationPolicy=Foreground")
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kubernetes_specs_are_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApi::start();
    let server = server_with_cluster(dir.path(), &fake.kubeconfig(dir.path()));
    for (spec, pointer) in [
        (json!({"image": "Ghcr.io/Acme Worker"}), "/spec/image"),
        (
            json!({"image": "busybox", "resources": {"limits": {"memory": "4GB"}}}),
            "/spec/resources/limits/memory",
        ),
    ] {
        let response = submit(&server, json!({"executor": "kubernetes", "spec": spec})).await;
        assert_eq!(response.status(), 422);
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem.to_string().contains(pointer),
            "{pointer} in {problem}"
        );
    }
    let jobs = get_json(&server, "/api/v1/jobs").await.unwrap();
    assert_eq!(jobs["items"].as_array().unwrap().len(), 0);
    assert!(fake.changes().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_cluster_serves_and_reports_the_executor_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    let server = Orchion::start(
        dir.path(),
        &["server"],
        &[("KUBECONFIG", missing.to_str().unwrap())],
    );
    let kubernetes = eventually(
        "the kubernetes executor to be probed",
        Duration::from_secs(30),
        || async {
            let e = executor(&server, "kubernetes").await?;
            (e["health"] == "unhealthy").then_some(e)
        },
    )
    .await;
    let detail = kubernetes["detail"].as_str().unwrap();
    assert!(detail.contains("no Kubernetes configuration"), "{detail}");
    // Everything else still works, and a kubernetes job waits queued.
    let queued = submit(
        &server,
        json!({"executor": "kubernetes", "spec": {"image": "busybox"}}),
    )
    .await;
    assert_eq!(queued.status(), 201);
    let id = queued.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = get_json(&server, &format!("/api/v1/jobs/{id}"))
        .await
        .unwrap();
    assert_eq!(job["status"], "queued");
    let ready = http().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_kubernetes_default_stops_the_server_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Orchion::spawn(
        dir.path(),
        &[
            "server",
            "--http-port",
            "0",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
        &[("JOB_MEMORY_LIMIT", "lots")],
    );
    let status = server.wait(Duration::from_secs(30));
    assert!(!status.success());
    let output = server.output();
    assert!(
        output.contains("kubernetes.memory_limit `lots`"),
        "{output}"
    );
}

/// Two servers on one PostgreSQL database, each with its Kubernetes agent: the server whose
/// agent follows a Job stops (a rolling update), and the other one's agent adopts the same
/// attempt — the Job is created once, never deleted, and the task keeps its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_hands_its_kubernetes_jobs_to_another_replica() {
    let Some(url) = orchion_testkit::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApi::start_ticking(300);
    let kubeconfig = fake.kubeconfig(dir.path());
    let replica = |name: &str| {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        Orchion::start(
            &home,
            &[
                "server",
                "--database-url",
                &url,
                "--join-token",
                crate::common::TOKEN,
            ],
            &[
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                ("KUBERNETES_NAMESPACE", "agents"),
                ("ORCHION_KUBERNETES__POLL_INTERVAL", "100ms"),
                ("ORCHION_KUBERNETES__PROBE_INTERVAL", "500ms"),
                ("ORCHION_SERVER__DRAIN_DELAY", "0s"),
            ],
        )
    };
    let first = replica("first");
    let agents = |n: u64| {
        move |server: &Orchion| {
            let server = server.url("");
            async move {
                let list: Value = http()
                    .get(format!("{server}/api/v1/executors"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                list["items"]
                    .as_array()?
                    .iter()
                    .find(|e| e["name"] == "kubernetes" && e["agents"] == n)
                    .map(|_| ())
            }
        }
    };
    eventually("the first agent", Duration::from_secs(30), || {
        agents(1)(&first)
    })
    .await;
    let response = submit(
        &first,
        json!({"executor": "kubernetes", "spec": {"image": "ghcr.io/acme/ticks:1"}}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    wait_job(&first, &id, "running").await;
    let second = replica("second");
    eventually("both agents", Duration::from_secs(30), || {
        agents(2)(&second)
    })
    .await;
    first.signal("TERM");
    let done = eventually("the job ends", Duration::from_secs(60), || async {
        get_json(&second, &format!("/api/v1/jobs/{id}"))
            .await
            .filter(|j| matches!(j["status"].as_str(), Some("succeeded" | "failed")))
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["attempt_count"], 1,
        "the same attempt, adopted: {done}"
    );
    let changes = fake.changes().await;
    assert_eq!(
        changes.len(),
        1,
        "one Job, created once and never deleted: {changes:?}"
    );
    assert!(changes[0].starts_with("POST jobs/"), "{changes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_name_only_the_namespaces_accounts_and_secrets_their_project_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApi::start();
    let server = server_with_cluster_and(
        dir.path(),
        &fake.kubeconfig(dir.path()),
        &[
            (
                "ORCHION_KUBERNETES__ALLOW__SERVICE_ACCOUNTS",
                r#"["worker", "orchion"]"#,
            ),
            (
                "ORCHION_KUBERNETES__ALLOW__SECRETS",
                r#"["github", "orchion"]"#,
            ),
        ],
    );
    healthy(&server).await;
    let image = "ghcr.io/acme/succeed:1";
    for (spec, pointer, words) in [
        (
            json!({"image": image, "namespace": "kube-system"}),
            "/spec/namespace",
            "kubernetes.allow.namespaces",
        ),
        (
            json!({"image": image, "service_account": "orchion"}),
            "/spec/service_account",
            "control plane's own",
        ),
        (
            json!({"image": image, "service_account": "admin"}),
            "/spec/service_account",
            "kubernetes.allow.service_accounts",
        ),
        (
            json!({"image": image, "secret_env": {"T": {"secret": "orchion", "key": "join-token"}}}),
            "/spec/secret_env/T/secret",
            "control plane's own",
        ),
    ] {
        let response = submit(&server, json!({"executor": "kubernetes", "spec": spec})).await;
        assert_eq!(response.status(), 422, "{spec}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{problem}");
        assert!(problem.to_string().contains(words), "{words} in {problem}");
    }
    let allowed = submit(
        &server,
        json!({"executor": "kubernetes", "spec": {"image": image, "namespace": "agents",
               "service_account": "worker",
               "secret_env": {"T": {"secret": "github", "key": "token"}}}}),
    )
    .await;
    assert_eq!(allowed.status(), 201);
    let id = allowed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_job(&server, &id, "succeeded").await;

    // A namespace only known when a workflow step is made is checked when it is claimed.
    let stored = http()
        .post(server.url("/api/v1/workflow-types"))
        .json(
            &json!({"name": "elsewhere", "steps": [{"name": "a", "executor": "kubernetes",
            "retry": {"max_attempts": 1},
            "spec": {"image": image, "namespace": "${{ input.namespace }}"}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201, "{:?}", stored.text().await);
    let run: Value = http()
        .post(server.url("/api/v1/workflows"))
        .json(&json!({"type": "elsewhere", "input": {"namespace": "kube-system"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = run["id"].as_str().unwrap().to_owned();
    let failed = eventually("the run to fail", Duration::from_secs(30), || async {
        let run = get_json(&server, &format!("/api/v1/workflows/{run_id}")).await?;
        (run["status"] == "failed").then_some(run)
    })
    .await;
    let error = failed["steps"][0]["tasks"][0]["error"].as_str().unwrap();
    assert!(error.contains("spec.namespace `kube-system`"), "{error}");
    let changes = fake.changes().await;
    assert!(
        !changes.iter().any(|c| c.contains("kube-system")),
        "{changes:?}"
    );
}

//! Nodes with real processes: one `orchion server`, three `orchion agent`s, SIGKILLs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::{
    Orchion, agent, cluster_server, eventually, free_port, get_json, http, post_json,
};
use serde_json::{Value, json};

const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
const CHECK_INTERVAL: Duration = Duration::from_millis(200);
const DOWN_AFTER: Duration = Duration::from_secs(2);
/// Room for a loaded CI machine on top of the bounds the server promises.
const SLACK: Duration = Duration::from_secs(3);

async fn nodes(server: &Orchion) -> Vec<Value> {
    let body: Value = http()
        .get(server.url("/api/v1/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["items"].as_array().unwrap().clone()
}

async fn node_named(server: &Orchion, name: &str) -> Option<Value> {
    nodes(server).await.into_iter().find(|n| n["name"] == name)
}

async fn wait_status(server: &Orchion, name: &str, status: &str, limit: Duration) -> Value {
    eventually(&format!("{name} to be {status}"), limit, || async {
        node_named(server, name)
            .await
            .filter(|n| n["status"] == status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_follows_agents_and_survives_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let mut server = cluster_server(dir.path(), grpc_port);
    let mut agents: Vec<Orchion> = ["a1", "a2", "a3"]
        .iter()
        .map(|name| agent(dir.path(), grpc_port, name, 4))
        .collect();
    let mut ids = Vec::new();
    for name in ["a1", "a2", "a3"] {
        let node = wait_status(&server, name, "ready", Duration::from_secs(30)).await;
        assert_eq!(node["labels"]["agent"], name);
        assert!(node["capacity"]["cpu_millis"].as_u64().unwrap() >= 1000);
        ids.push(node["id"].as_str().unwrap().to_owned());
    }

    // An agent killed without a goodbye turns unreachable within timeout + check interval…
    agents[0].signal("KILL");
    let killed = Instant::now();
    wait_status(
        &server,
        "a1",
        "unreachable",
        HEARTBEAT_TIMEOUT + CHECK_INTERVAL + SLACK,
    )
    .await;
    assert!(
        killed.elapsed() >= HEARTBEAT_TIMEOUT - HEARTBEAT_TIMEOUT / 3,
        "not before the timeout"
    );
    // …then down after the grace period, while the others stay ready.
    wait_status(&server, "a1", "down", DOWN_AFTER + CHECK_INTERVAL + SLACK).await;
    assert_eq!(node_named(&server, "a2").await.unwrap()["status"], "ready");

    // Restarted with the same state dir, it is the same node, ready again.
    agents[0] = agent(dir.path(), grpc_port, "a1", 4);
    let back = wait_status(&server, "a1", "ready", Duration::from_secs(30)).await;
    assert_eq!(back["id"], ids[0].as_str());
    assert_eq!(nodes(&server).await.len(), 3, "no duplicate node");

    // The server dies without warning and comes back on the same ports.
    server.signal("KILL");
    server.wait(Duration::from_secs(10));
    drop(server);
    let restarted_at = time::OffsetDateTime::now_utc();
    let server = cluster_server(dir.path(), grpc_port);
    let listed = nodes(&server).await;
    let mut listed_ids: Vec<&str> = listed.iter().map(|n| n["id"].as_str().unwrap()).collect();
    listed_ids.sort();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(listed_ids, expected, "every node survives the restart");
    // Every agent reconnects and heartbeats again, with no operator action.
    for name in ["a1", "a2", "a3"] {
        eventually(
            &format!("a fresh heartbeat from {name}"),
            Duration::from_secs(30),
            || async {
                let node = node_named(&server, name).await?;
                let at = time::OffsetDateTime::parse(
                    node["last_heartbeat_at"].as_str()?,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()?;
                (node["status"] == "ready" && at > restarted_at).then_some(())
            },
        )
        .await;
    }

    // An agent stopped with SIGTERM leaves: down at once, exit status 0.
    agents[1].signal("TERM");
    assert!(agents[1].wait(Duration::from_secs(10)).success());
    wait_status(&server, "a2", "down", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_wrong_token_exits_1_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let server = cluster_server(dir.path(), grpc_port);
    let state = dir.path().join("bad");
    let out = crate::common::command(&[
        "agent",
        "--server",
        &format!("127.0.0.1:{grpc_port}"),
        "--join-token",
        "not-the-token-at-all",
        "--state-dir",
        state.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the join token"));
    assert!(nodes(&server).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_restarted_through_the_agents_api() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let server = cluster_server(dir.path(), grpc_port);
    let mut a = agent(dir.path(), grpc_port, "r1", 4);
    let node = wait_status(&server, "r1", "ready", Duration::from_secs(30)).await;
    let id = node["id"].as_str().unwrap();
    let response = http()
        .post(server.url(&format!("/api/v1/agents/{id}/restart")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    a.wait_for_line("the server asked for a restart", Duration::from_secs(10));
    eventually(
        "the agent to pick up the restart",
        Duration::from_secs(10),
        || async {
            let agent: Value = get_json(&server, &format!("/api/v1/agents/{id}")).await?;
            (agent["restart_pending"] == false && agent["status"] == "ready").then_some(())
        },
    )
    .await;
}

/// A claim's long poll outlasts every other call: an idle agent's claims end by answer, not by
/// a timeout, so nothing is logged and no backoff delays the next job.
#[tokio::test]
async fn an_idle_agent_claims_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let server = cluster_server(dir.path(), grpc_port);
    let agent = agent(dir.path(), grpc_port, "idle", 2);
    wait_status(&server, "idle", "ready", Duration::from_secs(30)).await;
    // Longer than the channel timeout the claims used to die of (10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        !agent.output().contains("claiming work failed"),
        "{}",
        agent.output()
    );
    let job = post_json(
        &server,
        "/api/v1/jobs",
        json!({"executor": "shell", "spec": {"command": "true"}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    eventually("the job succeeds", Duration::from_secs(30), || async {
        get_json(&server, &format!("/api/v1/jobs/{id}"))
            .await
            .filter(|j| j["status"] == "succeeded")
    })
    .await;
    assert!(!agent.output().contains("WARN"), "{}", agent.output());
}

/// A shell job that appends `<attempt> <nanoseconds>` to `file` every 20 ms for about 6 s.
fn ticking_job(file: &std::path::Path) -> Value {
    let script = format!(
        "i=0; while [ $i -lt 300 ]; do echo \"$ORCHION_ATTEMPT $(date +%s%N)\" >> {}; i=$((i+1)); sleep 0.02; done",
        file.display()
    );
    json!({
        "executor": "shell",
        "spec": {"command": "sh", "args": ["-c", script]},
        "placement": {"labels": {}},
        "retry": {"max_attempts": 3, "initial_interval": "100ms"},
    })
}

/// The `(attempt, nanoseconds)` lines of a ticking job.
fn ticks(file: &std::path::Path) -> Vec<(u32, u128)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (attempt, at) = line.split_once(' ')?;
            Some((attempt.parse().ok()?, at.trim().parse().ok()?))
        })
        .collect()
}

/// The first attempt's last tick comes before the retry's first.
fn assert_no_overlap(file: &std::path::Path) {
    let ticks = ticks(file);
    let last_of_first = ticks
        .iter()
        .filter(|(a, _)| *a == 1)
        .map(|(_, t)| *t)
        .max()
        .unwrap();
    let first_of_retry = ticks
        .iter()
        .filter(|(a, _)| *a > 1)
        .map(|(_, t)| *t)
        .min()
        .unwrap();
    assert!(
        last_of_first < first_of_retry,
        "the attempts overlapped by {} ms",
        (last_of_first - first_of_retry) / 1_000_000
    );
}

/// A stopped agent cannot stop its work, so its fence does: the first attempt's last side
/// effect comes before the retry's first, counted in a file outside Orchion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agents_attempt_is_killed_before_its_retry_starts() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let server = cluster_server(dir.path(), grpc_port);
    let stopped = agent(dir.path(), grpc_port, "stopped", 2);
    wait_status(&server, "stopped", "ready", Duration::from_secs(30)).await;
    let file = dir.path().join("ticks.txt");
    let job = post_json(&server, "/api/v1/jobs", ticking_job(&file)).await;
    let id = job["id"].as_str().unwrap().to_owned();
    eventually(
        "the first attempt ticks",
        Duration::from_secs(30),
        || async { (ticks(&file).len() > 5).then_some(()) },
    )
    .await;
    // Another agent to take the retry, then the first one freezes.
    let _other = agent(dir.path(), grpc_port, "other", 2);
    wait_status(&server, "other", "ready", Duration::from_secs(30)).await;
    stopped.signal("STOP");
    let done = eventually("the job ends", Duration::from_secs(60), || async {
        get_json(&server, &format!("/api/v1/jobs/{id}"))
            .await
            .filter(|j| matches!(j["status"].as_str(), Some("succeeded" | "failed")))
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", server.output());
    stopped.signal("CONT");
    assert!(done["attempt_count"].as_u64().unwrap() >= 2, "{done}");
    assert_no_overlap(&file);
}

/// A task's processes die with their agent: nothing it started outlives a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let server = cluster_server(dir.path(), grpc_port);
    let agent = agent(dir.path(), grpc_port, "doomed", 2);
    wait_status(&server, "doomed", "ready", Duration::from_secs(30)).await;
    let pids = dir.path().join("pids.txt");
    // A shell, and a child of it in the background: both must go.
    let script = format!(
        "sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait",
        pids = pids.display()
    );
    post_json(
        &server,
        "/api/v1/jobs",
        json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", script]}}),
    )
    .await;
    let started: Vec<i32> = eventually("the task starts", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&pids).ok()?;
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (pids.len() == 2).then_some(pids)
    })
    .await;
    agent.signal("KILL");
    for pid in started {
        eventually(
            &format!("process {pid} is gone"),
            Duration::from_secs(10),
            || async {
                let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
                // Gone, or a zombie waiting for init to reap it.
                state
                    .is_none_or(|s| s.split_whitespace().nth(2) == Some("Z"))
                    .then_some(())
            },
        )
        .await;
    }
}

/// A network namespace joined to the host by a veth pair, removed when dropped: a machine the
/// test can cut off.
struct Netns {
    name: String,
    host_link: String,
    host_ip: String,
}

impl Netns {
    fn run(args: &[&str]) -> bool {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `None` where namespaces cannot be made (not root); under CI they must be.
    fn create() -> Option<Netns> {
        let n = std::process::id() % 60000;
        let name = format!("orchion-{n}");
        let (host_link, peer) = (format!("orh{n}"), format!("ora{n}"));
        let subnet = format!("10.231.{}", n % 250);
        let host_ip = format!("{subnet}.1");
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), name.clone()],
            vec![
                "link".into(),
                "add".into(),
                host_link.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                peer.clone(),
                "netns".into(),
                name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host_ip}/24"),
                "dev".into(),
                host_link.clone(),
            ],
            vec!["link".into(), "set".into(), host_link.clone(), "up".into()],
            vec![
                "-n".into(),
                name.clone(),
                "addr".into(),
                "add".into(),
                format!("{subnet}.2/24"),
                "dev".into(),
                peer.clone(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                peer.clone(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        let netns = Netns {
            name,
            host_link,
            host_ip,
        };
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if !Self::run(&args) {
                assert!(
                    std::env::var("CI").map_or(true, |v| v != "true"),
                    "CI=true needs network namespaces (ip {})",
                    args.join(" ")
                );
                eprintln!(
                    "!!!!!!!! partition test SKIPPED: `ip {}` failed (needs root) !!!!!!!!",
                    args.join(" ")
                );
                return None;
            }
        }
        Some(netns)
    }

    /// Cuts the namespace off the host.
    fn partition(&self) {
        assert!(Self::run(&["link", "set", &self.host_link, "down"]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Self::run(&["link", "del", &self.host_link]);
        Self::run(&["netns", "del", &self.name]);
    }
}

/// An agent cut off from the servers stops its attempt itself before the server hands it to
/// another node: the side effects of the two attempts never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agents_attempt_ends_before_its_retry_starts() {
    let Some(netns) = Netns::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let port = grpc_port.to_string();
    let server = Orchion::start(
        dir.path(),
        &[
            "server",
            "--host",
            &netns.host_ip,
            "--port",
            &port,
            "--join-token",
            crate::common::TOKEN,
            "--heartbeat-timeout",
            "2s",
        ],
        &[
            ("ORCHION_CLUSTER__CHECK_INTERVAL", "200ms"),
            ("ORCHION_CLUSTER__DOWN_AFTER", "2s"),
        ],
    );
    let state = dir.path().join("cut");
    let grpc = format!("http://{}:{grpc_port}", netns.host_ip);
    // The agent runs inside the namespace.
    let bin = crate::common::BIN;
    let mut inside = std::process::Command::new("ip");
    inside
        .args([
            "netns",
            "exec",
            &netns.name,
            bin,
            "agent",
            "--server",
            &grpc,
        ])
        .args([
            "--join-token",
            crate::common::TOKEN,
            "--name",
            "cut",
            "--slots",
            "2",
        ])
        .arg("--state-dir")
        .arg(&state)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut agent_inside = inside.spawn().unwrap();
    wait_status(&server, "cut", "ready", Duration::from_secs(30)).await;
    let file = dir.path().join("ticks.txt");
    let job = post_json(&server, "/api/v1/jobs", ticking_job(&file)).await;
    let id = job["id"].as_str().unwrap().to_owned();
    eventually(
        "the first attempt ticks",
        Duration::from_secs(30),
        || async { (ticks(&file).len() > 5).then_some(()) },
    )
    .await;
    let grpc_host = server.grpc.unwrap().port();
    let _other = agent_at(dir.path(), &netns.host_ip, grpc_host, "other");
    wait_status(&server, "other", "ready", Duration::from_secs(30)).await;
    netns.partition();
    let done = eventually("the job ends", Duration::from_secs(60), || async {
        get_json(&server, &format!("/api/v1/jobs/{id}"))
            .await
            .filter(|j| matches!(j["status"].as_str(), Some("succeeded" | "failed")))
    })
    .await;
    let _ = agent_inside.kill();
    let _ = agent_inside.wait();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_no_overlap(&file);
}

/// `orchion agent` on the host, talking to the server at `ip:port`.
fn agent_at(dir: &std::path::Path, ip: &str, port: u16, name: &str) -> Orchion {
    let server = format!("http://{ip}:{port}");
    let state = dir.join(name);
    Orchion::spawn(
        dir,
        &[
            "agent",
            "--server",
            &server,
            "--join-token",
            crate::common::TOKEN,
            "--name",
            name,
            "--slots",
            "2",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    )
}

/// An agent started with `token` (and `labels`), its state in `<dir>/<name>`.
fn agent_with(
    dir: &std::path::Path,
    grpc_port: u16,
    name: &str,
    token: &str,
    labels: &[&str],
) -> Orchion {
    let server = format!("http://127.0.0.1:{grpc_port}");
    let state = dir.join(name);
    let mut args = vec![
        "agent",
        "--server",
        &server,
        "--join-token",
        token,
        "--name",
        name,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    for label in labels {
        args.extend(["--label", label]);
    }
    Orchion::spawn(dir, &args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_admit_agents_within_their_limits_and_a_deleted_node_joins_anew() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let server = cluster_server(dir.path(), grpc_port);
    let cli = |args: &[&str]| {
        crate::common::command(args)
            .env("ORCHION_ADDR", format!("http://{}", server.addr))
            .output()
            .unwrap()
    };
    let made = cli(&[
        "join-token",
        "create",
        "--name",
        "edge",
        "--label",
        "zone=*",
        "-o",
        "json",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let made: Value = serde_json::from_slice(&made.stdout).unwrap();
    let edge = made["token_text"].as_str().unwrap().to_owned();
    let listed = cli(&["join-token", "ls"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("edge") && listed.contains("zone=*"),
        "{listed}"
    );
    assert!(!listed.contains(&edge), "the secret is shown once");

    // A label the token does not allow: the agent exits, naming it, and no node is made.
    let greedy = dir.path().join("greedy");
    let out = crate::common::command(&[
        "agent",
        "--server",
        &format!("127.0.0.1:{grpc_port}"),
        "--join-token",
        &edge,
        "--label",
        "gpu=true",
        "--state-dir",
        greedy.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("label `gpu`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut e1 = agent_with(dir.path(), grpc_port, "e1", &edge, &["zone=eu"]);
    let node = wait_status(&server, "e1", "ready", Duration::from_secs(30)).await;
    let first_id = node["id"].as_str().unwrap().to_owned();

    // Revoked: no new node joins with it; the node it admitted restarts as itself.
    let revoked = cli(&["join-token", "revoke", made["id"].as_str().unwrap()]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let late = dir.path().join("late");
    let out = crate::common::command(&[
        "agent",
        "--server",
        &format!("127.0.0.1:{grpc_port}"),
        "--join-token",
        &edge,
        "--state-dir",
        late.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the join token"));
    e1.signal("KILL");
    e1.wait(Duration::from_secs(10));
    let mut e1 = agent_with(dir.path(), grpc_port, "e1", &edge, &["zone=eu"]);
    e1.wait_for_line("registered", Duration::from_secs(30));
    assert_eq!(
        node_named(&server, "e1").await.unwrap()["id"],
        first_id.as_str(),
        "the same node, by its own credential"
    );

    // Deleted: its credential is gone; the agent joins as a new node with the cluster token.
    e1.signal("KILL");
    e1.wait(Duration::from_secs(10));
    let response = http()
        .delete(server.url(&format!("/api/v1/nodes/{first_id}")))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let mut e1 = agent_with(
        dir.path(),
        grpc_port,
        "e1",
        crate::common::TOKEN,
        &["zone=eu"],
    );
    e1.wait_for_line("joining as a new node", Duration::from_secs(30));
    let fresh = wait_status(&server, "e1", "ready", Duration::from_secs(30)).await;
    assert_ne!(fresh["id"], first_id.as_str());
    assert_eq!(nodes(&server).await.len(), 1);
}

//! Jobs with real processes: a server, real agents, real shell commands, SIGKILLs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{Orchion, agent, cluster_server, eventually, free_port, get_json, http};
use serde_json::{Value, json};

pub async fn submit(server: &Orchion, body: Value) -> Value {
    let response = http()
        .post(server.url("/api/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

pub async fn job(server: &Orchion, id: &str) -> Value {
    http()
        .get(server.url(&format!("/api/v1/jobs/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A job's log, as `GET /api/v1/jobs/{id}/logs` answers.
pub async fn logs(server: &Orchion, id: &str) -> Value {
    http()
        .get(server.url(&format!("/api/v1/jobs/{id}/logs")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn wait_job(server: &Orchion, id: &str, status: &str, limit: Duration) -> Value {
    eventually(&format!("job {id} to be {status}"), limit, || async {
        let j = job(server, id).await;
        (j["status"] == status).then_some(j)
    })
    .await
}

async fn node_id(server: &Orchion, name: &str) -> String {
    eventually(
        &format!("node {name} to join"),
        Duration::from_secs(30),
        || async {
            let nodes: Value = get_json(server, "/api/v1/nodes").await?;
            nodes["items"]
                .as_array()?
                .iter()
                .find(|n| n["name"] == name && n["status"] == "ready")
                .and_then(|n| n["id"].as_str().map(str::to_owned))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_job_runs_on_an_agent_with_its_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);
    let created = submit(
        &server,
        json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", "echo out; echo err >&2; echo $ORCHION_ATTEMPT"]}}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let done = wait_job(&server, id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(done["output"], "out\n1\n");
    assert_eq!(done["attempts"].as_array().unwrap().len(), 1);
    let logs = logs(&server, id).await;
    let lines: Vec<(&str, &str)> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["stream"].as_str().unwrap(), l["line"].as_str().unwrap()))
        .collect();
    assert!(
        lines.contains(&("stdout", "out")) && lines.contains(&("stderr", "err")),
        "{lines:?}"
    );

    let failing = submit(
        &server,
        json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", "exit 4"]},
               "retry": {"max_attempts": 2, "initial_interval": "100ms"}}),
    )
    .await;
    let failed = wait_job(
        &server,
        failing["id"].as_str().unwrap(),
        "failed",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(failed["exit_code"], 4);
    assert_eq!(
        failed["attempts"].as_array().unwrap().len(),
        2,
        "retried once, then failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_a_killed_agent_is_retried_on_another_and_completes_once() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let server = cluster_server(dir.path(), grpc);
    let mut first = agent(dir.path(), grpc, "first", 1);
    let first_id = node_id(&server, "first").await;
    let created = submit(
        &server,
        json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", "echo started; sleep 2; echo finished"]},
               "timeouts": {"heartbeat": "1s"}, "retry": {"initial_interval": "100ms"}}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let running = wait_job(&server, id, "running", Duration::from_secs(30)).await;
    assert_eq!(running["node_id"], first_id.as_str());

    let _second = agent(dir.path(), grpc, "second", 1);
    let second_id = node_id(&server, "second").await;
    first.signal("KILL");
    first.wait(Duration::from_secs(10));

    let done = wait_job(&server, id, "succeeded", Duration::from_secs(60)).await;
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{done}");
    assert_eq!(attempts[0]["node_id"], first_id.as_str());
    assert_eq!(attempts[0]["status"], "lost");
    assert_eq!(attempts[1]["node_id"], second_id.as_str());
    assert_eq!(attempts[1]["status"], "succeeded");
    assert_eq!(done["output"], "started\nfinished\n");
}

/// Processes of group `pgid` that are not zombies.
fn live_in_group(pgid: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_ends_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);
    let created = submit(
        &server,
        json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", "echo $$; sleep 600 & sleep 600 & wait"]}}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let pgid: i32 = eventually(
        "the job to print its process group",
        Duration::from_secs(30),
        || async {
            let logs: Value = get_json(&server, &format!("/api/v1/jobs/{id}/logs")).await?;
            logs["lines"][0]["line"].as_str()?.trim().parse().ok()
        },
    )
    .await;
    assert!(live_in_group(pgid) >= 3, "sh and two sleeps run");
    let response = http()
        .post(server.url(&format!("/api/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cancelled = wait_job(&server, id, "cancelled", Duration::from_secs(20)).await;
    assert_eq!(cancelled["attempts"][0]["status"], "cancelled");
    eventually(
        "the process group to be gone",
        Duration::from_secs(12),
        || async { (live_in_group(pgid) == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_jobs_in_flight_loses_none_and_runs_none_twice() {
    const JOBS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let mut server = cluster_server(dir.path(), grpc);
    let _agents: Vec<Orchion> = ["w1", "w2"]
        .iter()
        .map(|n| agent(dir.path(), grpc, n, 32))
        .collect();
    node_id(&server, "w1").await;
    node_id(&server, "w2").await;
    let client = http();
    let mut ids = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        let body = json!({"executor": "shell", "spec": {"command": "true"}, "idempotency_key": format!("job-{i}"),
                          "timeouts": {"heartbeat": "2s"}, "retry": {"max_attempts": 10, "initial_interval": "100ms"}});
        let response = client
            .post(server.url("/api/v1/jobs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let job: Value = response.json().await.unwrap();
        ids.push(job["id"].as_str().unwrap().to_owned());
        if i == JOBS / 2 {
            // Half accepted, some running: kill the server mid-flight and bring it back.
            server.signal("KILL");
            server.wait(Duration::from_secs(10));
            drop(server);
            server = cluster_server(dir.path(), grpc);
        }
    }
    eventually("every job to succeed", Duration::from_secs(180), || async {
        let mut done = 0;
        let mut cursor: Option<String> = None;
        loop {
            let mut url = server.url("/api/v1/jobs?status=succeeded&limit=500");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: Value = client.get(url).send().await.ok()?.json().await.ok()?;
            done += page["items"].as_array()?.len();
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        (done == JOBS).then_some(())
    })
    .await;
    for id in &ids {
        let j = job(&server, id).await;
        let succeeded = j["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["status"] == "succeeded")
            .count();
        assert_eq!(succeeded, 1, "job {id} completed {succeeded} times: {j}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_forwards_to_the_worker_and_retries_until_it_accepts() {
    use std::sync::{Arc, Mutex};

    use axum::{Json, Router, extract::State, http::StatusCode, routing::post};

    // A local worker service that fails its first call, then accepts.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let worker = Router::new()
        .route(
            "/enqueue",
            post(|State(received): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>| async move {
                let mut received = received.lock().unwrap();
                received.push(body);
                if received.len() == 1 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::ACCEPTED }
            }),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, worker).await });

    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[("WORKER_NODE_URL", &worker_url)]);
    let response = http()
        .post(server.url("/enqueue"))
        .json(&json!({"placeId": "place-42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["jobId"], "reviews:place-42:start");
    let jobs: Value = http()
        .get(server.url("/api/v1/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = jobs["items"][0]["id"].as_str().unwrap().to_owned();
    let done = wait_job(&server, &id, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(
        done["attempts"].as_array().unwrap().len(),
        2,
        "the 503 was retried"
    );
    let received = received.lock().unwrap().clone();
    assert_eq!(
        received,
        [
            json!({"placeId": "place-42"}),
            json!({"placeId": "place-42"})
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_fires_jobs_that_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);
    let schedule = json!({"name": "every second", "cron": "* * * * * *",
                          "job": {"executor": "shell", "spec": {"command": "echo", "args": ["tick"]}}});
    let response = http()
        .post(server.url("/api/v1/schedules"))
        .json(&schedule)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let jobs: Value = eventually(
        "two fired jobs to succeed",
        Duration::from_secs(30),
        || async {
            let jobs: Value = get_json(&server, "/api/v1/jobs?status=succeeded").await?;
            (jobs["items"].as_array()?.len() >= 2).then_some(jobs)
        },
    )
    .await;
    assert!(
        jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["output"] == "tick\n")
    );
}

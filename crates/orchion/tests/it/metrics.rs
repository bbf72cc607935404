//! The Prometheus endpoint of a real `orchion dev`: the seed's names and Orchion's own after real
//! work, route templates rather than raw paths, queue depth by executor and labels, and a scrape
//! that `promtool check metrics` accepts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use crate::common::{Orchion, eventually, get_json, http, listening_addr, post_json};
use serde_json::json;

async fn scrape(server: &mut Orchion) -> String {
    let line = server.wait_for_line("metrics listening on http://", Duration::from_secs(10));
    let addr = listening_addr(&line, "metrics listening on http://").unwrap();
    let response = http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    response.text().await.unwrap()
}

/// A sample's value: the first line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_the_work_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Orchion::start(dir.path(), &["dev"], &[]);
    let job = post_json(
        &server,
        "/api/v1/jobs",
        json!({"executor": "shell", "spec": {"command": "true"}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    eventually("the job to succeed", Duration::from_secs(30), || async {
        let j = get_json(&server, &format!("/api/v1/jobs/{id}")).await?;
        (j["status"] == "succeeded").then_some(())
    })
    .await;
    // Two jobs no node can take: they wait, labelled by what they need.
    for _ in 0..2 {
        post_json(
            &server,
            "/api/v1/jobs",
            json!({"executor": "shell", "spec": {"command": "true"},
                   "placement": {"labels": {"gpu": "a100"}}}),
        )
        .await;
    }
    let text = scrape(&mut server).await;
    for name in [
        "orchestrator_api_requests_total{method=\"POST\",route=\"/api/v1/jobs\",status=\"201\"}",
        "orchestrator_api_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/jobs/{id}\"",
        "orchestrator_workflows_active 0",
        "orchion_nodes{status=\"ready\"} 1",
        "orchion_tasks_claimed_total{executor=\"shell\"} 1",
        "orchion_task_attempts_total{outcome=\"succeeded\"} 1",
        "orchion_heartbeat_interval_seconds_bucket",
        "orchion_store_operation_duration_seconds_bucket{operation=\"claim_tasks\"",
        "orchion_uptime_seconds",
    ] {
        assert!(text.contains(name), "{name} in\n{text}");
    }
    assert!(
        !text.contains(&id),
        "raw paths never become labels:\n{text}"
    );
    let waiting = "{executor=\"shell\",labels=\"{\\\"gpu\\\":\\\"a100\\\"}\"}";
    assert_eq!(
        sample(&text, &format!("orchion_queue_depth{waiting}")),
        Some(2.0),
        "{text}"
    );
    assert!(sample(&text, &format!("orchion_queue_oldest_age_seconds{waiting}")).is_some());

    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut promtool) => {
            promtool
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = promtool.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("promtool is required in CI (Debian's prometheus package): {e}")
        }
        Err(e) => eprintln!("promtool not installed ({e}); .ci/run installs it"),
    }
}

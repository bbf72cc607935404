//! Workflow runs with real processes: a server, its agent, shell steps that pass outputs to
//! later steps through `$ORCHION_OUTPUTS`, a failure that skips what depends on it, and a retry
//! that runs only what failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{Orchion, eventually, get_json, http};
use serde_json::Value;

const PIPELINE: &str = r#"
name: pipeline
steps:
  - name: build
    executor: shell
    spec:
      command: sh
      args: ["-c", "echo image=reg/app:$ORCHION_ATTEMPT >> \"$ORCHION_OUTPUTS\""]
  - name: test
    needs: [build]
    executor: shell
    spec:
      command: sh
      args: ["-c", "test \"$IMAGE\" = reg/app:1 && echo verdict=ok >> \"$ORCHION_OUTPUTS\""]
      env:
        IMAGE: "${{ steps.build.outputs.image }}"
  - name: approve
    needs: [build]
    executor: shell
    spec:
      command: test
      args: ["-f", "${{ input.approval }}"]
    retry:
      max_attempts: 1
  - name: ship
    needs: [test, approve]
    executor: shell
    spec:
      command: sh
      args: ["-c", "echo shipped \"$IMAGE\" \"$VERDICT\""]
      env: {IMAGE: "${{ steps.build.outputs.image }}", VERDICT: "${{ steps.test.outputs.verdict }}"}
"#;

async fn run_state(server: &Orchion, id: &str, status: &str) -> Value {
    eventually(
        &format!("run {id} to be {status}"),
        Duration::from_secs(60),
        || async {
            let run = get_json(server, &format!("/api/v1/workflows/{id}")).await?;
            (run["status"] == status).then_some(run)
        },
    )
    .await
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_passes_outputs_skips_after_a_failure_and_retries_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);
    let stored = http()
        .post(server.url("/api/v1/workflow-types"))
        .header("content-type", "application/yaml")
        .body(PIPELINE)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201, "{:?}", stored.text().await);
    let approval = dir.path().join("approved");
    let started = http()
        .post(server.url("/api/v1/workflows"))
        .json(&serde_json::json!({"type": "pipeline", "input": {"approval": approval}}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    let run: Value = started.json().await.unwrap();
    let id = run["id"].as_str().unwrap().to_owned();

    let failed = run_state(&server, &id, "failed").await;
    assert_eq!(step(&failed, "build")["status"], "succeeded");
    assert_eq!(
        step(&failed, "build")["tasks"][0]["outputs"]["image"],
        "reg/app:1"
    );
    assert_eq!(step(&failed, "test")["status"], "succeeded");
    assert_eq!(step(&failed, "approve")["status"], "failed");
    assert_eq!(step(&failed, "approve")["tasks"][0]["exit_code"], 1);
    assert_eq!(step(&failed, "ship")["status"], "skipped");
    assert!(
        step(&failed, "ship")["tasks"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Approve, and retry: only the failed step runs again, then the one it held back.
    std::fs::write(&approval, "yes").unwrap();
    let retried = http()
        .post(server.url(&format!("/api/v1/workflows/{id}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 200, "{:?}", retried.text().await);
    let done = run_state(&server, &id, "succeeded").await;
    assert_eq!(
        step(&done, "ship")["tasks"][0]["output"],
        "shipped reg/app:1 ok\n"
    );
    let attempts = |name: &str| {
        step(&done, name)["tasks"][0]["attempts"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(attempts("build"), 1, "a succeeded step is not run again");
    assert_eq!(
        attempts("approve"),
        2,
        "the failed step's first attempt is kept"
    );

    let metrics = get_json(&server, &format!("/api/v1/workflows/{id}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics["attempts"], 5);
    assert!(metrics["steps"][0]["duration_ms"].as_f64().unwrap() >= 0.0);
}

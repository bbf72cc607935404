//! Handler tests for workflow runs: start, read with step states, list, cancel, retry, metrics,
//! and the problems a client can cause.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{App, app, problem};
use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use serde_json::{Value, json};

async fn store_type(app: &App) {
    let definition = json!({"name": "release", "steps": [
        {"name": "build", "executor": "noop", "spec": {"outputs": {"tag": "${{ input.tag }}"}}},
        {"name": "publish", "needs": ["build"], "executor": "noop", "spec": {}},
    ]});
    let reply = app
        .json("POST", "/api/v1/workflow-types", definition.to_string())
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
}

fn pointers(body: &Value) -> Vec<&str> {
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_run_starts_with_its_ready_steps_and_reads_back() {
    let app = app().await;
    store_type(&app).await;
    let reply = app
        .json(
            "POST",
            "/api/v1/workflows",
            json!({"name": "Release 1.2", "type": "release", "input": {"tag": "v1.2"}}).to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/api/v1/workflows/{id}")
    );
    assert_eq!(reply.body["type"], "release");
    assert_eq!(reply.body["version"], 1);
    assert_eq!(reply.body["status"], "running");
    assert_eq!(reply.body["input"]["tag"], "v1.2");
    let steps = reply.body["steps"].as_array().unwrap();
    assert_eq!(steps[0]["name"], "build");
    assert_eq!(steps[0]["status"], "running");
    assert_eq!(steps[0]["tasks"][0]["status"], "queued");
    assert_eq!(steps[0]["tasks"][0]["spec"]["outputs"]["tag"], "v1.2");
    assert_eq!(steps[1]["status"], "pending");
    assert_eq!(steps[1]["needs"], json!(["build"]));

    let got = app.get(&format!("/api/v1/workflows/{id}")).await;
    assert_eq!(got.body["name"], "Release 1.2");
    let listed = app
        .get("/api/v1/workflows?status=running&type=release")
        .await;
    assert_eq!(listed.body["items"][0]["id"], id.as_str());
    assert!(listed.body["items"][0].get("steps").is_none());
    let none = app.get("/api/v1/workflows?status=failed").await;
    assert_eq!(none.body["items"], json!([]));

    let metrics = app.get(&format!("/api/v1/workflows/{id}/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(metrics.body["steps"][0]["name"], "build");
    assert_eq!(metrics.body["steps"][0]["tasks"], 1);
    assert_eq!(metrics.body["steps"][1]["tasks"], 0);

    let retry = app
        .json("POST", &format!("/api/v1/workflows/{id}/retry"), "")
        .await;
    problem(&retry, StatusCode::CONFLICT, "conflict");
    let cancelled = app
        .json("POST", &format!("/api/v1/workflows/{id}/cancel"), "")
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["steps"][0]["status"], "cancelled");
    assert_eq!(cancelled.body["steps"][1]["status"], "skipped");
    let again = app
        .json("POST", &format!("/api/v1/workflows/{id}/cancel"), "")
        .await;
    problem(&again, StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn the_same_idempotency_key_starts_one_run() {
    let app = app().await;
    store_type(&app).await;
    let start = |input: Value| {
        Request::post("/api/v1/workflows")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "release-1.2")
            .body(Body::from(
                json!({"type": "release", "input": input}).to_string(),
            ))
            .unwrap()
    };
    let first = app.send(start(json!({"tag": "v1"}))).await;
    let second = app.send(start(json!({"tag": "v1"}))).await;
    assert_eq!(first.body["id"], second.body["id"]);
    assert_eq!(second.headers["idempotent-replayed"], "true");
    let other = app.send(start(json!({"tag": "v2"}))).await;
    problem(&other, StatusCode::CONFLICT, "idempotency-key-reused");
}

#[tokio::test]
async fn bad_starts_name_every_problem_and_start_nothing() {
    let app = app().await;
    store_type(&app).await;
    let reply = app
        .json(
            "POST",
            "/api/v1/workflows",
            json!({"type": "nope", "project_id": "not-a-uuid", "input": [1, 2], "name": ""})
                .to_string(),
        )
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(
        pointers(&reply.body),
        ["/project_id", "/name", "/input", "/type"]
    );
    let version = app
        .json(
            "POST",
            "/api/v1/workflows",
            json!({"type": "release", "version": 9}).to_string(),
        )
        .await;
    problem(
        &version,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert!(
        version.body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("has no version 9")
    );
    let missing = app
        .json(
            "POST",
            "/api/v1/workflows",
            json!({"input": {}}).to_string(),
        )
        .await;
    problem(&missing, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert_eq!(pointers(&missing.body), ["/type"]);
    let listed = app.get("/api/v1/workflows").await;
    assert_eq!(listed.body["items"], json!([]));

    let bad_status = app.get("/api/v1/workflows?status=done").await;
    problem(&bad_status, StatusCode::BAD_REQUEST, "invalid-parameter");
    let bad_id = app.get("/api/v1/workflows/123").await;
    problem(&bad_id, StatusCode::BAD_REQUEST, "invalid-parameter");
    let unknown = app
        .get("/api/v1/workflows/01890000-0000-7000-8000-000000000000")
        .await;
    problem(&unknown, StatusCode::NOT_FOUND, "not-found");
}

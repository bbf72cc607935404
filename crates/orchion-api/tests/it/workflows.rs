//! Handler tests for workflow types: YAML and JSON definitions, versions, and every problem at
//! once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{app, problem};
use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use serde_json::json;

const REVIEW: &str = r#"
name: code_review
steps:
  - name: FetchChanges
    executor: http
    spec:
      url: "${{ input.repo_url }}/changes"
  - name: RunAutomatedChecks
    needs: [FetchChanges]
    executor: shell
    spec:
      command: make
      args: ["check", "${{ steps.FetchChanges.outputs.sha }}"]
  - name: RunAIReview
    needs: [FetchChanges]
    executor: http
    spec:
      method: POST
      url: "https://review.example/api"
      body: "${{ steps.FetchChanges.outputs.diff }}"
    retry:
      max_attempts: 5
  - name: GenerateSummary
    needs: [RunAutomatedChecks, RunAIReview]
    executor: noop
    spec: {}
"#;

fn yaml(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn a_yaml_definition_is_stored_and_versioned() {
    let app = app().await;
    let created = app.send(yaml("/api/v1/workflow-types", REVIEW)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["version"], 1);
    assert_eq!(
        created.body["waves"],
        json!([
            ["FetchChanges"],
            ["RunAutomatedChecks", "RunAIReview"],
            ["GenerateSummary"]
        ])
    );
    let again = app.send(yaml("/api/v1/workflow-types", REVIEW)).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "the same definition is the same version"
    );
    assert_eq!(again.body["version"], 1);
    let changed = REVIEW.replace("max_attempts: 5", "max_attempts: 6");
    let v2 = app.send(yaml("/api/v1/workflow-types", &changed)).await;
    assert_eq!(v2.body["version"], 2);
    assert_eq!(
        app.get("/api/v1/workflow-types/code_review").await.body["version"],
        2
    );
    let v1 = app
        .get("/api/v1/workflow-types/code_review?version=1")
        .await;
    assert_eq!(
        v1.body["definition"]["steps"][2]["retry"]["max_attempts"],
        5
    );
    problem(
        &app.get("/api/v1/workflow-types/nope").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    problem(
        &app.get("/api/v1/workflow-types/code_review?version=9")
            .await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
}

#[tokio::test]
async fn every_problem_in_a_definition_is_listed_and_nothing_is_stored() {
    let app = app().await;
    let bad = json!({
        "name": "broken",
        "steps": [
            {"name": "a", "needs": ["c"], "executor": "noop", "spec": {}},
            {"name": "b", "needs": ["a"], "executor": "noop", "spec": {}},
            {"name": "c", "needs": ["b"], "executor": "noop", "spec": {}},
            {"name": "d", "needs": ["ghost"], "executor": "cobol", "spec": {}},
            {"name": "d", "executor": "shell", "spec": {"command": "x", "args": ["${{ steps.a.outputs.x }}"]},
             "retry": {"max_attempts": 0}}
        ]
    });
    let reply = app
        .json("POST", "/api/v1/workflow-types", bad.to_string())
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    let found: Vec<(String, String)> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has =
        |pointer: &str, text: &str| found.iter().any(|(p, d)| p == pointer && d.contains(text));
    assert!(
        has("/steps/3/executor", "unknown executor `cobol`"),
        "{found:?}"
    );
    assert!(
        has("/steps/4/retry/max_attempts", "max_attempts"),
        "{found:?}"
    );
    assert!(has("/steps/4/name", "duplicate step name `d`"), "{found:?}");
    assert!(has("/steps/3/needs/0", "`ghost`"), "{found:?}");
    assert!(
        has("/steps/0/needs", "cycle: a -> c -> b -> a"),
        "{found:?}"
    );
    problem(
        &app.get("/api/v1/workflow-types/broken").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
}

#[tokio::test]
async fn templates_must_read_upstream_steps_and_malformed_bodies_are_named() {
    let app = app().await;
    let reads_sideways = json!({"name": "w", "steps": [
        {"name": "a", "executor": "noop", "spec": {}},
        {"name": "b", "executor": "shell", "spec": {"command": "echo", "args": ["${{ steps.a.outputs.x }}"]}}
    ]});
    let reply = app
        .json("POST", "/api/v1/workflow-types", reads_sideways.to_string())
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(reply.body["errors"][0]["pointer"], "/steps/1/spec/args/0");

    let unknown_field =
        json!({"name": "w", "steps": [{"name": "a", "executor": "noop", "spec": {}, "colour": 1}]});
    let reply = app
        .json("POST", "/api/v1/workflow-types", unknown_field.to_string())
        .await;
    let detail = problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert!(detail.contains("colour"), "{detail}");

    let reply = app
        .send(yaml("/api/v1/workflow-types", "name: [unclosed"))
        .await;
    problem(&reply, StatusCode::BAD_REQUEST, "malformed-json");
    let reply = app
        .json(
            "POST",
            "/api/v1/workflow-types",
            json!({"name": "w", "steps": []}).to_string(),
        )
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
}

#[tokio::test]
async fn a_malformed_step_is_named_by_its_pointer() {
    let app = app().await;
    let reply = app
        .json(
            "POST",
            "/api/v1/workflow-types",
            json!({"name": "x", "steps": [
                {"name": "a", "executor": "noop", "spec": {}},
                {"name": "b", "spec": {}},
            ]})
            .to_string(),
        )
        .await;
    problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert_eq!(reply.body["errors"][0]["pointer"], "/steps/1/executor");
    let reply = app
        .json(
            "POST",
            "/api/v1/workflow-types",
            json!({"name": "x", "steps": [{"name": "a", "executor": "noop", "spec": {}, "needs": "a"}]})
                .to_string(),
        )
        .await;
    problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert_eq!(reply.body["errors"][0]["pointer"], "/steps/0/needs");
}

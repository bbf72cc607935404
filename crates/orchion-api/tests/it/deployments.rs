//! Handler tests for deployments: the deployment service's shapes, every problem at once, one
//! deployment per composer and environment, and the engines list.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{app, problem};
use axum::http::{StatusCode, header};
use serde_json::{Value, json};

fn web_app(id: &str) -> Value {
    json!({
        "id": id,
        "composer": "team-alpha",
        "environment": "production",
        "resources": [
            {"name": "database", "catalogRef": "aws-rds-mysql:1.0.0", "engine": "terraform",
             "config": {"size": "small"}},
            {"name": "deployment", "catalogRef": "k8s-deployment:2.1.0", "engine": "helm",
             "config": {"values": {"db": "${{ resources.database.outputs.endpoint }}"}}},
        ],
        "dependencies": [{"from": "database", "to": "deployment"}],
    })
}

#[tokio::test]
async fn a_deployment_starts_in_dependency_order_and_reads_back() {
    let app = app().await;
    let reply = app
        .json(
            "POST",
            "/api/v1/deployments",
            web_app("team-alpha-web-app-v1").to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(
        reply.headers[header::LOCATION],
        "/api/v1/deployments/team-alpha-web-app-v1"
    );
    assert_eq!(reply.body["status"], "in_progress");
    assert_eq!(reply.body["phase"], "deploying");
    let resources = reply.body["resources"].as_array().unwrap();
    assert_eq!(resources[0]["name"], "database");
    assert_eq!(resources[0]["status"], "in_progress");
    assert_eq!(resources[0]["engine"], "terraform");
    assert_eq!(resources[0]["catalogRef"], "aws-rds-mysql:1.0.0");
    assert_eq!(resources[1]["status"], "pending");
    assert_eq!(resources[1]["progress"], "0%");

    let got = app.get("/api/v1/deployments/team-alpha-web-app-v1").await;
    assert_eq!(got.status, StatusCode::OK);
    let run = app
        .get(&format!(
            "/api/v1/workflows/{}",
            got.body["run_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(run.body["steps"][0]["tasks"][0]["spec"]["action"], "apply");

    // One deployment per composer and environment at a time: a second one waits its turn.
    let queued = app
        .json(
            "POST",
            "/api/v1/deployments",
            web_app("team-alpha-web-app-v2").to_string(),
        )
        .await;
    assert_eq!(queued.status, StatusCode::CREATED, "{:?}", queued.body);
    assert_eq!(queued.body["status"], "queued");
    assert_eq!(queued.body["phase"], "waiting");
    assert_eq!(queued.body["resources"][0]["status"], "pending");
    let mut staging = web_app("team-alpha-web-app-v3");
    staging["environment"] = json!("staging");
    let other = app
        .json("POST", "/api/v1/deployments", staging.to_string())
        .await;
    assert_eq!(other.status, StatusCode::CREATED, "{:?}", other.body);
    assert_eq!(
        other.body["status"], "in_progress",
        "another environment has its own turn"
    );
    // The same request again gets the same deployment; another body under its id is refused.
    let again = app
        .json(
            "POST",
            "/api/v1/deployments",
            web_app("team-alpha-web-app-v1").to_string(),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["run_id"], reply.body["run_id"]);
    let mut changed = web_app("team-alpha-web-app-v1");
    changed["resources"][0]["config"]["size"] = json!("large");
    let taken = app
        .json("POST", "/api/v1/deployments", changed.to_string())
        .await;
    let detail = problem(&taken, StatusCode::CONFLICT, "conflict");
    assert!(detail.contains("team-alpha-web-app-v1"), "{detail}");
    let listed = app.get("/api/v1/deployments?environment=staging").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert!(listed.body["items"][0].get("resources").is_none());

    // Deleting cancels it; nothing was applied, so nothing is rolled back. The waiting one
    // gets its turn.
    let deleted = app
        .json("DELETE", "/api/v1/deployments/team-alpha-web-app-v1", "")
        .await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED, "{:?}", deleted.body);
    assert_eq!(deleted.body["status"], "cancelled");
    assert_eq!(deleted.body["resources"][1]["status"], "skipped");
    let next = app.get("/api/v1/deployments/team-alpha-web-app-v2").await;
    let run_id = next.body["run_id"].as_str().unwrap().to_owned();
    app.state
        .workflows
        .advance(run_id.parse().unwrap())
        .await
        .unwrap();
    let next = app.get("/api/v1/deployments/team-alpha-web-app-v2").await;
    assert_eq!(next.body["status"], "in_progress", "{:?}", next.body);
    assert_eq!(next.body["resources"][0]["status"], "in_progress");
    let missing = app.get("/api/v1/deployments/nope").await;
    problem(&missing, StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn every_problem_with_a_deployment_is_listed_and_nothing_is_deployed() {
    let app = app().await;
    let bad = json!({
        "id": "bad",
        "composer": "team-alpha",
        "environment": "production",
        "resources": [
            {"name": "db", "catalogRef": "x:1", "engine": "ansible"},
            {"name": "db", "catalogRef": "x:1", "engine": "terraform"},
            {"name": "stack", "catalogRef": "y:1", "engine": "pulumi"},
            {"name": "a", "catalogRef": "z:1", "engine": "helm", "config": {"v": "${{ resources.b.outputs.x }}"}},
            {"name": "b", "catalogRef": "z:1", "engine": "helm"},
        ],
        "dependencies": [{"from": "a", "to": "ghost"}],
    });
    let reply = app
        .json("POST", "/api/v1/deployments", bad.to_string())
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    let errors: Vec<(String, String)> = reply.body["errors"]
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
    assert_eq!(errors[0].0, "/resources/0/engine");
    assert!(errors[0].1.contains("unknown engine `ansible`"));
    assert_eq!(errors[1].0, "/resources/2/engine");
    assert!(errors[1].1.contains("disabled"), "{errors:?}");
    assert_eq!(errors[2].0, "/dependencies/0/to");

    // With the names fixed, the graph problems: a duplicate, a cycle, an output not upstream.
    let graph = json!({
        "id": "graph", "composer": "team-alpha", "environment": "production",
        "resources": [
            {"name": "db", "catalogRef": "x:1", "engine": "terraform"},
            {"name": "db", "catalogRef": "x:1", "engine": "terraform"},
            {"name": "a", "catalogRef": "z:1", "engine": "helm", "config": {"v": "${{ resources.c.outputs.x }}"}},
            {"name": "b", "catalogRef": "z:1", "engine": "helm"},
            {"name": "c", "catalogRef": "z:1", "engine": "helm"},
        ],
        "dependencies": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}],
    });
    let reply = app
        .json("POST", "/api/v1/deployments", graph.to_string())
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    let text = reply.body["errors"].to_string();
    assert!(text.contains("duplicate step name `db`"), "{text}");
    assert!(text.contains("cycle: a -> b -> a"), "{text}");
    let listed = app.get("/api/v1/deployments").await;
    assert_eq!(listed.body["items"], json!([]));
    let runs = app.get("/api/v1/workflows").await;
    assert_eq!(runs.body["items"], json!([]), "no run was started");

    let malformed = app
        .json(
            "POST",
            "/api/v1/deployments",
            json!({"id": "x", "resources": []}).to_string(),
        )
        .await;
    problem(&malformed, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
}

#[tokio::test]
async fn engines_show_whether_they_are_enabled_and_offered() {
    let app = app().await;
    let reply = app.get("/api/v1/engines").await;
    assert_eq!(reply.status, StatusCode::OK);
    let engines: Vec<(String, String)> = reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["health"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        engines,
        [
            ("terraform".to_owned(), "unavailable".to_owned()),
            ("helm".to_owned(), "unavailable".to_owned()),
            ("pulumi".to_owned(), "disabled".to_owned()),
            ("crossplane".to_owned(), "unavailable".to_owned()),
        ]
    );
}

//! Input the edge must survive, on both backends alike: NUL characters anywhere a client can
//! put text, error lists that cannot grow without bound.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{App, app, postgres_app, problem},
    webhooks::{SECRET, count, deliver, issue_opened, store_triage},
};

/// Every backend there is here: SQLite, and PostgreSQL where it is available (CI has it).
async fn apps() -> Vec<(&'static str, App)> {
    let mut apps = vec![("sqlite", app().await)];
    if let Some(app) = postgres_app().await {
        apps.push(("postgres", app));
    }
    apps
}

/// A 422 whose one listed problem is at `pointer`.
fn refused_at(reply: &crate::common::Reply, code: &str, pointer: &str, backend: &str) {
    let detail = problem(reply, StatusCode::UNPROCESSABLE_ENTITY, code);
    assert!(detail.contains("NUL"), "{backend}: {detail}");
    assert_eq!(
        reply.body["errors"][0]["pointer"], pointer,
        "{backend}: {:?}",
        reply.body
    );
}

#[tokio::test]
async fn nul_in_any_text_is_refused_naming_the_field_and_nothing_is_written() {
    for (backend, app) in apps().await {
        let jobs_before = count(&app, "/api/v1/jobs").await;
        let job = json!({"executor": "shell", "name": "a\u{0}b",
                         "spec": {"command": "echo", "env": {"K": "v\u{0}"}}});
        let reply = app.json("POST", "/api/v1/jobs", job.to_string()).await;
        refused_at(&reply, "invalid-body", "/name", backend);
        let batch = json!({"jobs": [{"executor": "noop", "spec": {}},
                                    {"executor": "noop", "spec": {"outputs": {"k": "\u{0}"}}}]});
        let reply = app
            .json("POST", "/api/v1/jobs/batch", batch.to_string())
            .await;
        refused_at(&reply, "invalid-body", "/jobs/1/spec/outputs/k", backend);
        assert_eq!(count(&app, "/api/v1/jobs").await, jobs_before, "{backend}");

        let reply = app
            .json(
                "POST",
                "/api/v1/projects",
                json!({"name": "team\u{0}"}).to_string(),
            )
            .await;
        refused_at(&reply, "invalid-body", "/name", backend);
        let workflow = json!({"name": "w", "steps": [
            {"name": "s", "executor": "noop", "spec": {}, "needs": ["\u{0}"]}]});
        let reply = app
            .json("POST", "/api/v1/workflow-types", workflow.to_string())
            .await;
        refused_at(&reply, "invalid-body", "/steps/0/needs/0", backend);

        // Query parameters and the path, percent-encoded.
        let reply = app.get("/api/v1/jobs?name=a%00b").await;
        refused_at(&reply, "validation-failed", "/name", backend);
        let reply = app.get("/api/v1/workflow-types/w%00").await;
        refused_at(&reply, "validation-failed", "/path", backend);

        // A signed webhook delivery: refused before any rule starts anything or any delivery
        // is recorded.
        store_triage(&app).await;
        let mut payload = issue_opened(7, &["bug"], "octo/shop");
        payload["issue"]["title"] = json!("crash\u{0}");
        let reply = deliver(&app, "issues", "d-nul", SECRET, &payload).await;
        refused_at(&reply, "invalid-body", "/issue/title", backend);
        assert_eq!(count(&app, "/api/v1/workflows").await, 0, "{backend}");
        assert_eq!(
            count(&app, "/api/v1/webhook-deliveries").await,
            0,
            "{backend}"
        );
        // The server still serves everyone else, the same delivery id included.
        payload["issue"]["title"] = json!("crash");
        let reply = deliver(&app, "issues", "d-nul", SECRET, &payload).await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "{backend}: {:?}",
            reply.body
        );
        assert_eq!(count(&app, "/api/v1/workflows").await, 1, "{backend}");
    }
}

#[tokio::test]
async fn error_lists_stop_at_fifty_problems_and_ten_cycles() {
    let app = app().await;
    // 120 jobs with no executor: one problem each.
    let jobs: Vec<Value> = (0..120).map(|_| json!({"spec": {}})).collect();
    let reply = app
        .json(
            "POST",
            "/api/v1/jobs/batch",
            json!({"jobs": jobs}).to_string(),
        )
        .await;
    let detail = problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(reply.body["errors"].as_array().unwrap().len(), 50);
    assert_eq!(
        reply.body["more_errors"], 70,
        "{:?}",
        reply.body["more_errors"]
    );
    assert!(detail.ends_with("; and 70 more problems"), "{detail}");

    // Twelve steps that all need each other: far more cycles than are listed.
    let names: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    let steps: Vec<Value> = names
        .iter()
        .map(|name| {
            let needs: Vec<&String> = names.iter().filter(|n| *n != name).collect();
            json!({"name": name, "executor": "noop", "spec": {}, "needs": needs})
        })
        .collect();
    let reply = app
        .json(
            "POST",
            "/api/v1/workflow-types",
            json!({"name": "dense", "steps": steps}).to_string(),
        )
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    let errors = reply.body["errors"].as_array().unwrap();
    let cycles = errors
        .iter()
        .filter(|e| e["detail"].as_str().unwrap().starts_with("cycle: "))
        .count();
    assert_eq!(cycles, 10, "{errors:?}");
    let last = errors.last().unwrap()["detail"].as_str().unwrap();
    assert!(
        last.starts_with("and ") && last.ends_with("more cycles (the first 10 are listed)"),
        "{last}"
    );
}

/// `n` copies of one request sent at once.
async fn at_once(
    app: &App,
    n: usize,
    request: impl Fn() -> axum::http::Request<axum::body::Body>,
) -> Vec<crate::common::Reply> {
    futures::future::join_all((0..n).map(|_| app.send(request()))).await
}

/// Every reply succeeded with the one resource: the same `field` in each.
fn one_resource(replies: &[crate::common::Reply], field: &str, what: &str) -> Value {
    for reply in replies {
        assert!(
            reply.status.is_success(),
            "{what}: {} {:?}",
            reply.status,
            reply.body
        );
    }
    let first = replies[0].body[field].clone();
    assert!(!first.is_null(), "{what}: {:?}", replies[0].body);
    for reply in replies {
        assert_eq!(reply.body[field], first, "{what}");
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_all_get_the_one_resource() {
    use axum::{
        body::Body,
        http::{Request, header},
    };
    const AT_ONCE: usize = 12;
    for (backend, app) in apps().await {
        let post = |uri: &'static str, key: &'static str, body: Value| {
            move || {
                let mut request =
                    Request::post(uri).header(header::CONTENT_TYPE, "application/json");
                if !key.is_empty() {
                    request = request.header("Idempotency-Key", key);
                }
                request.body(Body::from(body.to_string())).unwrap()
            }
        };
        let jobs = at_once(
            &app,
            AT_ONCE,
            post(
                "/api/v1/jobs",
                "job-once",
                json!({"executor": "noop", "spec": {}}),
            ),
        )
        .await;
        one_resource(&jobs, "id", &format!("{backend} jobs"));
        let projects = at_once(
            &app,
            AT_ONCE,
            post(
                "/api/v1/projects",
                "project-once",
                json!({"name": "payments"}),
            ),
        )
        .await;
        one_resource(&projects, "id", &format!("{backend} projects"));

        store_triage(&app).await;
        let runs = at_once(
            &app,
            AT_ONCE,
            post(
                "/api/v1/workflows",
                "run-once",
                json!({"type": "triage", "input": {"number": 1, "repo": "octo/shop"}}),
            ),
        )
        .await;
        one_resource(&runs, "id", &format!("{backend} runs"));

        let deployment = json!({
            "id": "web-once", "composer": "team", "environment": "production",
            "resources": [{"name": "db", "catalogRef": "aws-rds-mysql:1.0.0", "engine": "terraform", "config": {}}],
        });
        let deployments = at_once(&app, AT_ONCE, post("/api/v1/deployments", "", deployment)).await;
        one_resource(&deployments, "id", &format!("{backend} deployments"));

        let payload = issue_opened(9, &["bug"], "octo/shop");
        let deliveries = futures::future::join_all(
            (0..AT_ONCE).map(|_| deliver(&app, "issues", "d-once", SECRET, &payload)),
        )
        .await;
        let runs = one_resource(&deliveries, "runs", &format!("{backend} deliveries"));
        assert_eq!(runs.as_array().unwrap().len(), 1, "{backend}: {runs}");
        assert_eq!(
            count(&app, "/api/v1/webhook-deliveries").await,
            1,
            "{backend}"
        );
    }
}

#[tokio::test]
async fn engines_run_only_deployments_and_no_value_becomes_a_flag() {
    let app = app().await;
    // A plain job, a batch and a workflow type cannot name a deployment engine.
    let job = json!({"executor": "terraform", "spec": {"action": "destroy", "deployment": "theirs",
        "composer": "other-team", "environment": "production", "resource": "db", "catalog_ref": "x:1"}});
    let reply = app.json("POST", "/api/v1/jobs", job.to_string()).await;
    let detail = problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert!(
        detail.contains("runs only the resources of a deployment"),
        "{detail}"
    );
    assert_eq!(reply.body["errors"][0]["pointer"], "/executor");
    let batch = json!({"jobs": [{"executor": "noop", "spec": {}}, job]});
    let reply = app
        .json("POST", "/api/v1/jobs/batch", batch.to_string())
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(reply.body["errors"][0]["pointer"], "/jobs/1/executor");
    let workflow = json!({"name": "sneaky", "steps": [
        {"name": "ok", "executor": "noop", "spec": {}},
        {"name": "helm", "executor": "helm", "spec": {}}]});
    let reply = app
        .json("POST", "/api/v1/workflow-types", workflow.to_string())
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(reply.body["errors"][0]["pointer"], "/steps/1/executor");

    // A deployment's values that helm would read as flags are refused, each named.
    let deployment = json!({
        "id": "web", "composer": "team", "environment": "production",
        "resources": [
            {"name": "a", "catalogRef": "--post-renderer=/bin/sh", "engine": "helm", "config": {}},
            {"name": "b", "catalogRef": "chart:1.0.0", "engine": "helm",
             "config": {"namespace": "--kubeconfig=/etc/x", "version": "-1", "chart": "--set=a"}},
        ],
    });
    let reply = app
        .json("POST", "/api/v1/deployments", deployment.to_string())
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    let pointers: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    for expected in [
        "/resources/0/catalogRef",
        "/resources/1/config/chart",
        "/resources/1/config/version",
        "/resources/1/config/namespace",
    ] {
        assert!(pointers.contains(&expected), "{expected} in {pointers:?}");
    }
    assert_eq!(count(&app, "/api/v1/deployments").await, 0);
}

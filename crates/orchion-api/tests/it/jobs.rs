//! Handler tests for the jobs API: validation, idempotency, cancel and retry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{app, problem};
use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use serde_json::{Value, json};

fn pointers(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_job_is_created_and_read_back() {
    let app = app().await;
    let reply = app
        .json(
            "POST",
            "/api/v1/jobs",
            json!({"executor": "shell", "spec": {"command": "echo", "args": ["hi"]}, "priority": 5,
                   "placement": {"labels": {"zone": "eu"}, "resources": {"cpu_millis": 500}},
                   "concurrency": {"key": "k"}, "timeouts": {"start_to_close": "10m"}})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let id = reply.body["id"].as_str().unwrap();
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/api/v1/jobs/{id}")
    );
    assert_eq!(reply.body["status"], "queued");
    assert_eq!(reply.body["spec"]["command"], "echo");
    let got = app.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(got.body["priority"], 5);
    let listed = app.get("/api/v1/jobs?status=queued&executor=shell").await;
    assert_eq!(listed.body["items"][0]["id"], id);
}

#[tokio::test]
async fn every_problem_with_a_job_is_listed_and_nothing_is_written() {
    let app = app().await;
    let body = json!({
        "executor": "shell",
        "spec": {"command": ""},
        "priority": 5_000_000,
        "retry": {"max_attempts": 0, "initial_interval": "soon", "backoff_coefficient": 0.1},
        "timeouts": {"heartbeat": "1ms", "start_to_close": "500 days"},
        "placement": {"labels": {"Bad Key": "x"}, "resources": {"cpu_millis": 99999999999u64}},
        "concurrency": {"key": "", "limit": 0},
        "run_at": "tomorrow",
        "project_id": "nope"
    });
    let reply = app.json("POST", "/api/v1/jobs", body.to_string()).await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    let found = pointers(&reply.body);
    for expected in [
        "/spec/command",
        "/priority",
        "/retry/max_attempts",
        "/retry/initial_interval",
        "/retry/backoff_coefficient",
        "/timeouts/heartbeat",
        "/timeouts/start_to_close",
        "/placement/labels/Bad Key",
        "/placement/resources",
        "/concurrency/key",
        "/concurrency/limit",
        "/run_at",
        "/project_id",
    ] {
        assert!(
            found.iter().any(|p| p == expected),
            "{expected} missing from {found:?}"
        );
    }
    assert_eq!(app.get("/api/v1/jobs").await.body["items"], json!([]));
}

#[tokio::test]
async fn unknown_executors_and_non_http_urls_are_refused() {
    let app = app().await;
    let reply = app
        .json(
            "POST",
            "/api/v1/jobs",
            json!({"executor": "python", "spec": {}}).to_string(),
        )
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(pointers(&reply.body), ["/executor"]);
    let reply = app
        .json(
            "POST",
            "/api/v1/jobs",
            json!({"executor": "http", "spec": {"url": "file:///etc/passwd"}}).to_string(),
        )
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(pointers(&reply.body), ["/spec/url"]);
    let reply = app
        .json("POST", "/api/v1/jobs", json!({"executor": "shell", "spec": {"command": "x"}, "timeouts": {"heartbeat": "-1s"}}).to_string())
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(pointers(&reply.body), ["/timeouts/heartbeat"]);
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_a_409() {
    let app = app().await;
    let post = |body: Value| {
        Request::post("/api/v1/jobs")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "once")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let job = json!({"executor": "shell", "spec": {"command": "true"}});
    let first = app.send(post(job.clone())).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app.send(post(job)).await;
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = app
        .send(post(
            json!({"executor": "shell", "spec": {"command": "false"}}),
        ))
        .await;
    problem(&other, StatusCode::CONFLICT, "idempotency-key-reused");
    // The body field works as the header does.
    let body =
        json!({"executor": "shell", "spec": {"command": "true"}, "idempotency_key": "field-key"});
    let a = app.json("POST", "/api/v1/jobs", body.to_string()).await;
    let b = app.json("POST", "/api/v1/jobs", body.to_string()).await;
    assert_eq!(a.body["id"], b.body["id"]);
}

#[tokio::test]
async fn cancel_and_retry_follow_the_jobs_state() {
    let app = app().await;
    let created = app
        .json(
            "POST",
            "/api/v1/jobs",
            json!({"executor": "shell", "spec": {"command": "true"}}).to_string(),
        )
        .await;
    let id = created.body["id"].as_str().unwrap();
    let retry_queued = app
        .send(
            Request::post(format!("/api/v1/jobs/{id}/retry"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let detail = problem(&retry_queued, StatusCode::CONFLICT, "conflict");
    assert!(detail.contains("queued"), "{detail}");
    let cancelled = app
        .send(
            Request::post(format!("/api/v1/jobs/{id}/cancel"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(cancelled.body["status"], "cancelled");
    let retried = app
        .send(
            Request::post(format!("/api/v1/jobs/{id}/retry"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(retried.status, StatusCode::OK);
    assert_eq!(retried.body["status"], "queued");
    let missing = orchion_domain::RunId::new();
    problem(
        &app.get(&format!("/api/v1/jobs/{missing}")).await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    problem(
        &app.get("/api/v1/jobs/nope").await,
        StatusCode::BAD_REQUEST,
        "invalid-parameter",
    );
    problem(
        &app.get("/api/v1/jobs?status=done").await,
        StatusCode::BAD_REQUEST,
        "invalid-parameter",
    );
    let logs = app.get(&format!("/api/v1/jobs/{id}/logs")).await;
    assert_eq!(logs.body["lines"], json!([]));
    problem(
        &app.get(&format!("/api/v1/jobs/{id}/logs?limit=0")).await,
        StatusCode::BAD_REQUEST,
        "invalid-parameter",
    );
}

#[tokio::test]
async fn enqueue_answers_in_the_seeds_shapes_and_is_idempotent_per_place() {
    let app = app().await;
    let first = app
        .json(
            "POST",
            "/enqueue",
            r#"{"placeId":"ChIJN1t_tDeuEmsRUsoyG83frY4"}"#,
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
    assert_eq!(first.body["status"], "enqueued");
    assert_eq!(first.body["placeId"], "ChIJN1t_tDeuEmsRUsoyG83frY4");
    assert_eq!(
        first.body["jobId"],
        "reviews:ChIJN1t_tDeuEmsRUsoyG83frY4:start"
    );
    time::OffsetDateTime::parse(
        first.body["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let again = app
        .json(
            "POST",
            "/enqueue",
            r#"{ "placeId": "ChIJN1t_tDeuEmsRUsoyG83frY4" }"#,
        )
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["jobId"], first.body["jobId"]);
    let jobs = app.get("/api/v1/jobs").await;
    let items = jobs.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "the same place creates nothing new");
    assert_eq!(items[0]["executor"], "http");
    assert_eq!(items[0]["spec"]["url"], "http://127.0.0.1:9/enqueue");
    assert_eq!(
        items[0]["spec"]["body"],
        r#"{"placeId":"ChIJN1t_tDeuEmsRUsoyG83frY4"}"#
    );

    for body in [r#"{}"#, r#"{"placeId":""}"#, r#"{"placeId":null}"#] {
        let reply = app.json("POST", "/enqueue", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.body["status"], "error");
        assert_eq!(reply.body["error"], "placeId is required");
        assert!(reply.body["timestamp"].is_string());
    }
    let reply = app.json("POST", "/enqueue", "{bad").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["status"], "error");
    assert_eq!(
        app.get("/health").await.body["worker_url"],
        "http://127.0.0.1:9"
    );
}

#[tokio::test]
async fn schedules_are_validated_created_listed_and_deleted() {
    let app = app().await;
    let bad = json!({"name": "", "cron": "61 * * * *", "timezone": "Nowhere/City", "overlap": "maybe",
                     "misfire": "later", "job": {"executor": "cobol", "spec": {}, "run_at": "2030-01-01T00:00:00Z"}});
    let reply = app.json("POST", "/api/v1/schedules", bad.to_string()).await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    let found = pointers(&reply.body);
    for expected in [
        "/name",
        "/cron",
        "/timezone",
        "/overlap",
        "/misfire",
        "/job/run_at",
        "/job/executor",
    ] {
        assert!(
            found.iter().any(|p| p == expected),
            "{expected} missing from {found:?}"
        );
    }
    let reply = app
        .json("POST", "/api/v1/schedules", json!({"name": "n", "cron": "* * *", "job": {"executor": "shell", "spec": {"command": "true"}}}).to_string())
        .await;
    assert!(
        problem(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed"
        )
        .contains("3 fields")
    );

    let good = json!({"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "overlap": "skip",
                      "job": {"executor": "shell", "spec": {"command": "true"}}});
    let created = app
        .json("POST", "/api/v1/schedules", good.to_string())
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["timezone"], "Europe/Berlin");
    assert_eq!(created.body["overlap"], "skip");
    assert_eq!(created.body["misfire"], "fire_once");
    let next = created.body["next_fire_at"].as_str().unwrap();
    assert!(next.ends_with(":00:00Z"), "{next}");
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(
        app.get("/api/v1/schedules").await.body["items"][0]["id"],
        id
    );
    assert_eq!(
        app.get(&format!("/api/v1/schedules/{id}")).await.body["cron"],
        "0 3 * * *"
    );
    let deleted = app
        .send(
            Request::delete(format!("/api/v1/schedules/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    problem(
        &app.get(&format!("/api/v1/schedules/{id}")).await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
}

#[tokio::test]
async fn following_the_logs_of_a_finished_job_ends_the_stream() {
    let app = app().await;
    let created = app
        .json(
            "POST",
            "/api/v1/jobs",
            json!({"executor": "noop", "spec": {}}).to_string(),
        )
        .await;
    let id = created.body["id"].as_str().unwrap();
    app.send(
        Request::post(format!("/api/v1/jobs/{id}/cancel"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let reply = app
        .get(&format!("/api/v1/jobs/{id}/logs?follow=true"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "text/event-stream");
    let text = reply.body.as_str().unwrap();
    assert!(
        text.contains("event: end") && text.contains("data: cancelled"),
        "{text}"
    );
    let bad = app
        .send(
            Request::get(format!("/api/v1/jobs/{id}/logs?follow=true"))
                .header("last-event-id", "not-a-number")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    problem(&bad, StatusCode::BAD_REQUEST, "invalid-parameter");
}

#[tokio::test]
async fn a_batch_is_enqueued_in_order_with_an_answer_per_job() {
    let app = app().await;
    let keyed =
        json!({"executor": "shell", "spec": {"command": "true"}, "idempotency_key": "batch-key"});
    // The key was first used by a single request: the batch gets the same job back.
    let single = app.json("POST", "/api/v1/jobs", keyed.to_string()).await;
    assert_eq!(single.status, StatusCode::CREATED);
    let reused =
        json!({"executor": "shell", "spec": {"command": "false"}, "idempotency_key": "batch-key"});
    let batch = json!({"jobs": [
        {"executor": "noop", "spec": {}, "name": "first"},
        keyed,
        reused,
        {"executor": "noop", "spec": {}, "name": "last", "priority": 3},
    ]});
    let reply = app
        .json("POST", "/api/v1/jobs/batch", batch.to_string())
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let items = reply.body["jobs"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(reply.body["errors"], true);
    assert_eq!(items[0]["created"], true);
    assert_eq!(items[0]["status"], "queued");
    assert_eq!(items[1]["id"], single.body["id"]);
    assert_eq!(items[1]["created"], false);
    assert_eq!(items[2]["error"]["code"], "idempotency-key-reused");
    assert!(items[2].get("id").is_none());
    let last = app
        .get(&format!(
            "/api/v1/jobs/{}",
            items[3]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(last.body["name"], "last");
    assert_eq!(last.body["priority"], 3);
    // Three jobs exist: the single one and the two new ones; the refused one wrote nothing.
    let listed = app.get("/api/v1/jobs?limit=10").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn an_invalid_batch_lists_every_problem_and_enqueues_nothing() {
    let app = app().await;
    let batch = json!({"jobs": [
        {"executor": "noop", "spec": {}},
        {"executor": "teleport", "spec": {}},
        {"executor": "noop", "spec": {}, "priorty": 1},
        {"executor": "shell", "spec": {"command": "true"}, "timeouts": {"heartbeat": "soon"}},
        {"executor": "noop", "spec": {}, "project_id": "01890000-0000-7000-8000-000000000000"},
    ]});
    let reply = app
        .json("POST", "/api/v1/jobs/batch", batch.to_string())
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(
        pointers(&reply.body),
        [
            "/jobs/1/executor",
            "/jobs/2/priorty",
            "/jobs/3/timeouts/heartbeat",
            "/jobs/4/project_id"
        ]
    );
    let listed = app.get("/api/v1/jobs").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 0);

    let empty = app
        .json(
            "POST",
            "/api/v1/jobs/batch",
            json!({"jobs": []}).to_string(),
        )
        .await;
    problem(
        &empty,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(pointers(&empty.body), ["/jobs"]);
    // The count is checked before the jobs themselves.
    let too_many = json!({"jobs": vec![json!({}); 1001]});
    let reply = app
        .json("POST", "/api/v1/jobs/batch", too_many.to_string())
        .await;
    problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert!(
        reply.body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("1001 jobs")
    );
}

#[tokio::test]
async fn jobs_and_runs_are_listed_newest_first_and_by_name() {
    let app = app().await;
    let mut ids = Vec::new();
    for name in ["nightly backup", "deploy web", "Nightly report"] {
        let reply = app
            .json(
                "POST",
                "/api/v1/jobs",
                json!({"name": name, "executor": "noop", "spec": {}}).to_string(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        ids.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    let listed = |body: &serde_json::Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let newest = app.get("/api/v1/jobs?order=newest").await;
    assert_eq!(
        listed(&newest.body),
        [ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    let nightly = app.get("/api/v1/jobs?name=NIGHTLY&order=newest").await;
    assert_eq!(listed(&nightly.body), [ids[2].clone(), ids[0].clone()]);
    for uri in ["/api/v1/jobs?order=sideways", "/api/v1/workflows?order=up"] {
        let detail = problem(
            &app.get(uri).await,
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
        );
        assert!(detail.contains("`order`"), "{uri}: {detail}");
    }
}

/// A project that does not exist is the request's fault, in its field: the store's foreign key
/// refuses it (no check beforehand that a concurrent delete could outrun), for a job, a run and
/// a workflow type alike.
#[tokio::test]
async fn naming_a_project_that_does_not_exist_is_a_422_on_that_field() {
    let app = app().await;
    let missing = "0190c8a0-0000-7000-8000-000000000001";
    let job = app
        .json(
            "POST",
            "/api/v1/jobs",
            json!({"executor": "noop", "spec": {}, "project_id": missing}).to_string(),
        )
        .await;
    assert_eq!(
        job.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        job.body
    );
    assert_eq!(pointers(&job.body), ["/project_id"]);
    assert!(
        job.body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains(missing)
    );
    let workflow_type = app
        .json(
            "POST",
            "/api/v1/workflow-types",
            json!({"name": "owned", "project_id": missing,
                   "steps": [{"name": "a", "executor": "noop", "spec": {}}]})
            .to_string(),
        )
        .await;
    assert_eq!(
        workflow_type.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        workflow_type.body
    );
    assert_eq!(pointers(&workflow_type.body), ["/project_id"]);
    let stored = app
        .json(
            "POST",
            "/api/v1/workflow-types",
            json!({"name": "free", "steps": [{"name": "a", "executor": "noop", "spec": {}}]})
                .to_string(),
        )
        .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{:?}", stored.body);
    let run = app
        .json(
            "POST",
            "/api/v1/workflows",
            json!({"type": "free", "project_id": missing}).to_string(),
        )
        .await;
    assert_eq!(
        run.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        run.body
    );
    assert_eq!(pointers(&run.body), ["/project_id"]);
    let listed = app.get("/api/v1/jobs").await;
    assert_eq!(listed.body["items"], json!([]), "nothing was written");
}

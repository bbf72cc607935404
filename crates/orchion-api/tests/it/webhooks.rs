//! Handler tests for `POST /webhook/github`: real GitHub payload shapes, signed in the test;
//! bad and missing signatures, the wrong content type, unknown events, redeliveries, a body
//! over the limit, a rule that reads a missing field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{App, Reply, app, problem};
use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub async fn deliver(
    app: &App,
    event: &str,
    delivery: &str,
    secret: &str,
    payload: &Value,
) -> Reply {
    let body = payload.to_string();
    app.send(
        Request::post("/webhook/github")
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sign(secret, body.as_bytes()))
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

pub const SECRET: &str = "test-webhook-secret";

pub fn repository(full_name: &str) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap();
    json!({"id": 1296269, "name": name, "full_name": full_name, "owner": {"login": owner}, "default_branch": "main"})
}

pub fn issue_opened(number: u64, labels: &[&str], repo: &str) -> Value {
    json!({
        "action": "opened",
        "issue": {"number": number, "title": "Found a bug", "state": "open", "user": {"login": "octocat"},
                  "labels": labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>()},
        "repository": repository(repo),
        "sender": {"login": "octocat"},
    })
}

pub async fn store_triage(app: &App) {
    let definition = json!({"name": "triage", "steps": [
        {"name": "label", "executor": "noop", "spec": {"outputs": {"issue": "${{ input.number }}"}}}
    ]});
    let reply = app
        .json("POST", "/api/v1/workflow-types", definition.to_string())
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

pub async fn count(app: &App, path: &str) -> usize {
    app.get(path).await.body["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_signed_event_starts_the_runs_its_rules_want_once() {
    let app = app().await;
    store_triage(&app).await;
    let ping = deliver(
        &app,
        "ping",
        "d-ping",
        SECRET,
        &json!({"zen": "Keep it logically awesome.", "hook_id": 1}),
    )
    .await;
    assert_eq!(ping.status, StatusCode::OK);
    assert_eq!(ping.body["zen"], "Keep it logically awesome.");

    let payload = issue_opened(42, &["bug", "p1"], "octo/shop");
    let reply = deliver(&app, "issues", "d-1", SECRET, &payload).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    assert_eq!(reply.body["status"], "accepted");
    assert_eq!(reply.body["event"], "issues.opened");
    let run_id = reply.body["runs"][0]["run_id"].as_str().unwrap().to_owned();
    let run = app.get(&format!("/api/v1/workflows/{run_id}")).await;
    assert_eq!(
        run.body["input"],
        json!({"number": 42, "repo": "octo/shop"})
    );
    assert_eq!(
        run.body["steps"][0]["tasks"][0]["spec"]["outputs"]["issue"],
        42
    );

    // A redelivery is answered as the first time and starts nothing.
    let again = deliver(&app, "issues", "d-1", SECRET, &payload).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body, reply.body);
    assert_eq!(count(&app, "/api/v1/workflows").await, 1);

    // An event no rule wants, an action no rule wants, a label no rule wants.
    let unknown = deliver(
        &app,
        "star",
        "d-2",
        SECRET,
        &json!({"action": "created", "repository": repository("octo/shop")}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::ACCEPTED);
    assert_eq!(unknown.body["status"], "ignored");
    assert_eq!(unknown.body["reason"], "event `star` is not handled");
    let mut closed = issue_opened(43, &["bug"], "octo/shop");
    closed["action"] = json!("closed");
    let closed = deliver(&app, "issues", "d-3", SECRET, &closed).await;
    assert_eq!(
        closed.body["reason"],
        "no rule wants issues.closed on octo/shop"
    );
    let unlabelled = deliver(
        &app,
        "issues",
        "d-4",
        SECRET,
        &issue_opened(44, &["docs"], "octo/shop"),
    )
    .await;
    assert_eq!(unlabelled.body["status"], "ignored");

    // Pushes: to main a job, elsewhere nothing.
    let push = |branch: &str| {
        json!({"ref": format!("refs/heads/{branch}"), "before": "0000", "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                                      "repository": repository("octo/shop"), "pusher": {"name": "octocat"}, "commits": []})
    };
    let main = deliver(&app, "push", "d-5", SECRET, &push("main")).await;
    let job_id = main.body["runs"][0]["job_id"].as_str().unwrap().to_owned();
    let job = app.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(
        job.body["spec"]["outputs"]["sha"],
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    );
    let feature = deliver(&app, "push", "d-6", SECRET, &push("feature")).await;
    assert_eq!(feature.body["status"], "ignored");

    // A rule that reads a field the payload lacks reports it; the other rule still runs.
    let pr = json!({"action": "opened", "number": 7,
                    "pull_request": {"number": 7, "title": "Fix", "base": {"ref": "main"}, "head": {"ref": "fix"}, "labels": []},
                    "repository": repository("octo/shop")});
    let reply = deliver(&app, "pull_request", "d-7", SECRET, &pr).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.body["runs"][0]["rule"], "reads-a-missing-field");
    assert!(
        reply.body["runs"][0]["error"]
            .as_str()
            .unwrap()
            .contains("`event.pull_request` has no `nope`"),
        "{:?}",
        reply.body
    );
    assert!(reply.body["runs"][1]["run_id"].is_string());

    let deliveries = app.get("/api/v1/webhook-deliveries").await;
    let verdicts: Vec<(&str, &str)> = deliveries.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap(), d["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("d-ping", "accepted"),
            ("d-1", "accepted"),
            ("d-2", "ignored"),
            ("d-3", "ignored"),
            ("d-4", "ignored"),
            ("d-5", "accepted"),
            ("d-6", "ignored"),
            ("d-7", "accepted"),
        ]
    );
}

#[tokio::test]
async fn unsigned_mis_signed_and_malformed_deliveries_create_nothing() {
    let app = app().await;
    store_triage(&app).await;
    let payload = issue_opened(1, &["bug"], "octo/shop");
    let wrong = deliver(&app, "issues", "d-1", "not-the-secret", &payload).await;
    problem(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    let body = payload.to_string();
    let unsigned = app
        .send(
            Request::post("/webhook/github")
                .header("content-type", "application/json")
                .header("x-github-event", "issues")
                .header("x-github-delivery", "d-2")
                .body(Body::from(body.clone()))
                .unwrap(),
        )
        .await;
    let detail = problem(&unsigned, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(detail.contains("X-Hub-Signature-256"), "{detail}");
    let form = app
        .send(
            Request::post("/webhook/github")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-github-event", "issues")
                .header("x-github-delivery", "d-3")
                .header("x-hub-signature-256", sign(SECRET, body.as_bytes()))
                .body(Body::from(body.clone()))
                .unwrap(),
        )
        .await;
    let detail = problem(
        &form,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
    );
    assert!(detail.contains("application/json"), "{detail}");
    // Signed, but truncated: not JSON.
    let truncated = &body[..body.len() / 2];
    let reply = app
        .send(
            Request::post("/webhook/github")
                .header("content-type", "application/json")
                .header("x-github-event", "issues")
                .header("x-github-delivery", "d-4")
                .header("x-hub-signature-256", sign(SECRET, truncated.as_bytes()))
                .body(Body::from(truncated.to_owned()))
                .unwrap(),
        )
        .await;
    problem(&reply, StatusCode::BAD_REQUEST, "malformed-json");
    // Over the body limit (4 KiB in these tests).
    let mut big = issue_opened(5, &["bug"], "octo/shop");
    big["issue"]["body"] = json!("x".repeat(5000));
    let reply = deliver(&app, "issues", "d-5", SECRET, &big).await;
    problem(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
    let missing_event = app
        .send(
            Request::post("/webhook/github")
                .header("content-type", "application/json")
                .header("x-github-delivery", "d-6")
                .header("x-hub-signature-256", sign(SECRET, body.as_bytes()))
                .body(Body::from(body.clone()))
                .unwrap(),
        )
        .await;
    problem(&missing_event, StatusCode::BAD_REQUEST, "invalid-parameter");
    assert_eq!(
        count(&app, "/api/v1/workflows").await,
        0,
        "nothing was started"
    );
    assert_eq!(
        count(&app, "/api/v1/webhook-deliveries").await,
        0,
        "nothing was recorded"
    );

    // The organisation's secret signs its own repositories' deliveries, not others'.
    let own = deliver(
        &app,
        "issues",
        "d-7",
        "acme-org-secret",
        &issue_opened(9, &["bug"], "acme/shop"),
    )
    .await;
    assert_eq!(own.status, StatusCode::ACCEPTED, "{:?}", own.body);
    assert!(own.body["runs"][0]["run_id"].is_string());
    let other = deliver(
        &app,
        "issues",
        "d-8",
        "acme-org-secret",
        &issue_opened(9, &["bug"], "octo/shop"),
    )
    .await;
    let detail = problem(&other, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        detail.contains("signed with the secret for `acme`"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_signed_body_replayed_under_a_new_delivery_id_starts_nothing() {
    let app = app().await;
    store_triage(&app).await;
    let payload = issue_opened(77, &["bug"], "octo/shop");
    let first = deliver(&app, "issues", "d-original", SECRET, &payload).await;
    assert_eq!(first.body["status"], "accepted", "{:?}", first.body);
    // The very same signed bytes, captured and sent again under ids of the attacker's choice.
    for id in ["d-replay-1", "d-replay-2"] {
        let replay = deliver(&app, "issues", id, SECRET, &payload).await;
        assert_eq!(replay.status, StatusCode::ACCEPTED, "{:?}", replay.body);
        assert_eq!(replay.body["status"], "ignored");
        assert_eq!(replay.body["replay_of"], "d-original");
        assert_eq!(replay.body["runs"], json!([]));
        assert!(
            replay.body["reason"].as_str().unwrap().contains("replay"),
            "{:?}",
            replay.body
        );
    }
    assert_eq!(count(&app, "/api/v1/workflows").await, 1);
    let deliveries = app.get("/api/v1/webhook-deliveries").await;
    let verdicts: Vec<(&str, &str)> = deliveries.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap(), d["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("d-original", "accepted"),
            ("d-replay-1", "ignored"),
            ("d-replay-2", "ignored")
        ]
    );
    // Another event (any byte differs) is no replay.
    let next = deliver(
        &app,
        "issues",
        "d-next",
        SECRET,
        &issue_opened(78, &["bug"], "octo/shop"),
    )
    .await;
    assert_eq!(next.body["status"], "accepted", "{:?}", next.body);
    assert_eq!(count(&app, "/api/v1/workflows").await, 2);
}

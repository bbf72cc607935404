//! Handler tests for the nodes and agents APIs, over a real registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use crate::common::{App, app, problem};
use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use orchion_domain::{NodeId, NodeRegistration};
use serde_json::Value;

async fn register(app: &App, name: &str, labels: &[(&str, &str)]) -> NodeId {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let registration = NodeRegistration::new(
        name.into(),
        "10.2.2.2".into(),
        labels,
        (4000, 8 << 30, 1),
        vec!["shell".into()],
        "0.1.0".into(),
    )
    .unwrap();
    app.state
        .nodes
        .join(&orchion_control::Admission::cluster(), registration)
        .await
        .unwrap()
        .node
        .id
}

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn nodes_are_listed_filtered_and_fetched() {
    let app = app().await;
    let a = register(&app, "a", &[("zone", "eu"), ("gpu", "true")]).await;
    let b = register(&app, "b", &[("zone", "us")]).await;

    let all = app.get("/api/v1/nodes").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(ids(&all.body), [a.to_string(), b.to_string()]);
    let first = &all.body["items"][0];
    assert_eq!(first["status"], "ready");
    assert_eq!(first["labels"]["zone"], "eu");
    assert_eq!(first["capacity"]["cpu_millis"], 4000);
    assert_eq!(first["executors"][0], "shell");

    let eu = app.get("/api/v1/nodes?label=zone=eu,gpu=true").await;
    assert_eq!(ids(&eu.body), [a.to_string()]);
    let paged = app.get("/api/v1/nodes?limit=1").await;
    assert_eq!(ids(&paged.body), [a.to_string()]);
    let cursor = paged.body["next_cursor"].as_str().unwrap();
    let rest = app
        .get(&format!("/api/v1/nodes?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(ids(&rest.body), [b.to_string()]);

    let one = app.get(&format!("/api/v1/nodes/{b}")).await;
    assert_eq!(one.body["name"], "b");

    let status = app.get("/api/v1/status").await;
    assert_eq!(status.body["nodes"]["ready"], 2);
    assert_eq!(status.body["nodes"]["down"], 0);
    assert_eq!(status.body["store"]["backend"], "sqlite");
    assert!(status.body["store"]["commits"].as_u64().unwrap() >= 2);

    // The control-plane seed's shape: a plain array of every node.
    let seed = app.get("/api/nodes").await;
    assert_eq!(seed.status, StatusCode::OK);
    assert_eq!(seed.body.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_drained_node_shows_draining_and_a_deleted_one_is_gone() {
    let app = app().await;
    let a = register(&app, "a", &[]).await;
    let drained = app
        .send(
            Request::post(format!("/api/v1/nodes/{a}/drain"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(drained.status, StatusCode::OK);
    assert_eq!(drained.body["status"], "draining");
    let listed = app.get("/api/v1/nodes?status=draining").await;
    assert_eq!(ids(&listed.body), [a.to_string()]);
    assert_eq!(
        ids(&app.get("/api/v1/nodes?status=ready").await.body),
        Vec::<String>::new()
    );

    let deleted = app
        .send(
            Request::delete(format!("/api/v1/nodes/{a}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    problem(
        &app.get(&format!("/api/v1/nodes/{a}")).await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
}

#[tokio::test]
async fn agents_can_be_asked_to_restart() {
    let app = app().await;
    let a = register(&app, "a", &[]).await;
    let agents = app.get("/api/v1/agents").await;
    assert_eq!(agents.body["items"][0]["id"], a.to_string());
    assert_eq!(agents.body["items"][0]["restart_pending"], false);

    let restart = app
        .send(
            Request::post(format!("/api/v1/agents/{a}/restart"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(restart.status, StatusCode::ACCEPTED);
    assert_eq!(restart.body["restart_pending"], true);
    let agent = app.get(&format!("/api/v1/agents/{a}")).await;
    assert_eq!(agent.body["restart_pending"], true);
    assert_eq!(agent.body["version"], "0.1.0");
}

#[tokio::test]
async fn bad_node_requests_name_what_is_wrong() {
    let app = app().await;
    for (query, name) in [
        ("status=asleep", "status"),
        ("label=zone", "label"),
        ("label==x", "label"),
        ("limit=0", "limit"),
        ("colour=red", "colour"),
    ] {
        let reply = app.get(&format!("/api/v1/nodes?{query}")).await;
        let detail = problem(&reply, StatusCode::BAD_REQUEST, "invalid-parameter");
        assert!(detail.contains(&format!("`{name}`")), "{query}: {detail}");
    }
    let detail = problem(
        &app.get("/api/v1/nodes/xyz").await,
        StatusCode::BAD_REQUEST,
        "invalid-parameter",
    );
    assert!(detail.contains("`id`"), "{detail}");
    let missing = NodeId::new();
    for reply in [
        app.get(&format!("/api/v1/nodes/{missing}")).await,
        app.get(&format!("/api/v1/agents/{missing}")).await,
        app.send(
            Request::post(format!("/api/v1/nodes/{missing}/drain"))
                .body(Body::empty())
                .unwrap(),
        )
        .await,
        app.send(
            Request::post(format!("/api/v1/agents/{missing}/restart"))
                .body(Body::empty())
                .unwrap(),
        )
        .await,
        app.send(
            Request::delete(format!("/api/v1/nodes/{missing}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await,
    ] {
        let detail = problem(&reply, StatusCode::NOT_FOUND, "not-found");
        assert!(detail.contains(&missing.to_string()), "{detail}");
    }
}

#[tokio::test]
async fn executors_show_their_agents_and_the_probed_ones_their_health() {
    use orchion_api::executors::Probe;

    let app = app().await;
    let health = |body: &Value, name: &str| -> (String, Value) {
        let item = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} is listed: {body}"))
            .clone();
        (
            item["health"].as_str().unwrap().to_owned(),
            item["detail"].clone(),
        )
    };
    let reply = app.get("/api/v1/executors").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(health(&reply.body, "shell").0, "unavailable");
    assert_eq!(health(&reply.body, "pulumi").0, "disabled");
    assert_eq!(health(&reply.body, "kubernetes").0, "unavailable");

    register(&app, "worker", &[]).await;
    app.state.probes.set(
        "kubernetes",
        Probe::Unhealthy {
            detail: "no Kubernetes configuration: not running in a cluster".into(),
        },
    );
    let reply = app.get("/api/v1/executors").await;
    assert_eq!(health(&reply.body, "shell").0, "healthy");
    let (kubernetes, detail) = health(&reply.body, "kubernetes");
    assert_eq!(kubernetes, "unhealthy");
    assert!(
        detail
            .as_str()
            .unwrap()
            .contains("no Kubernetes configuration")
    );

    app.state.probes.set(
        "kubernetes",
        Probe::Healthy {
            detail: "namespace `default` reachable".into(),
        },
    );
    let reply = app.get("/api/v1/executors").await;
    assert_eq!(
        health(&reply.body, "kubernetes").0,
        "unavailable",
        "the cluster answers, but no agent offers the executor yet"
    );
    app.state.probes.set("kubernetes", Probe::Disabled);
    let reply = app.get("/api/v1/executors").await;
    assert_eq!(health(&reply.body, "kubernetes").0, "disabled");
}

//! Handler tests: projects, health, errors and the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{App, app, problem};
use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use serde_json::{Value, json};

#[tokio::test]
async fn projects_go_through_their_whole_lifecycle() {
    let app = app().await;
    let reply = app
        .json(
            "POST",
            "/api/v1/projects",
            r#"{"name":"My Project","description":"Project description","type":"standard"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/api/v1/projects/{id}")
    );
    assert_eq!(reply.body["name"], "My Project");
    assert_eq!(reply.body["type"], "standard");
    assert_eq!(reply.body["status"], "active");

    let got = app.get(&format!("/api/v1/projects/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, reply.body);

    let updated = app
        .json(
            "PUT",
            &format!("/api/v1/projects/{id}"),
            r#"{"description":"new","status":"archived"}"#,
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["name"], "My Project");
    assert_eq!(updated.body["description"], "new");
    assert_eq!(updated.body["status"], "archived");

    let active = app.get("/api/v1/projects?status=active&limit=10").await;
    assert_eq!(active.body["items"], json!([default_project(&app).await]));
    let archived = app.get("/api/v1/projects?status=archived").await;
    assert_eq!(archived.body["items"][0]["id"], id.as_str());

    let deleted = app
        .send(
            Request::delete(format!("/api/v1/projects/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    problem(
        &app.get(&format!("/api/v1/projects/{id}")).await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
}

#[tokio::test]
async fn listing_pages_with_cursors() {
    let app = app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create(&format!("p{i}")).await["id"].clone());
    }
    let first = app.get("/api/v1/projects?limit=2").await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 2);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = app
        .get(&format!("/api/v1/projects?limit=2&cursor={cursor}"))
        .await;
    let cursor = second.body["next_cursor"].as_str().unwrap();
    let third = app
        .get(&format!("/api/v1/projects?limit=2&cursor={cursor}"))
        .await;
    assert!(third.body.get("next_cursor").is_none());
    let seen: Vec<Value> = [first, second, third]
        .iter()
        .flat_map(|r| {
            r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].clone())
        })
        .collect();
    assert_eq!(
        seen[0], "00000000-0000-7000-8000-000000000001",
        "default comes first"
    );
    assert_eq!(seen[1..], ids);
}

/// The `default` project, which every store has.
async fn default_project(app: &App) -> Value {
    app.get("/api/v1/projects/00000000-0000-7000-8000-000000000001")
        .await
        .body
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_project() {
    let app = app().await;
    let post = |body: &'static str| {
        Request::post("/api/v1/projects")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "create-42")
            .body(Body::from(body))
            .unwrap()
    };
    let first = app.send(post(r#"{"name":"once","type":"standard"}"#)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // Same content, different formatting and key order: the same request.
    let again = app
        .send(post(r#"{ "type": "standard", "name": "once" }"#))
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body);

    let detail = problem(
        &app.send(post(r#"{"name":"different"}"#)).await,
        StatusCode::CONFLICT,
        "idempotency-key-reused",
    );
    assert!(detail.contains("create-42"), "{detail}");
    let all = app.get("/api/v1/projects").await;
    assert_eq!(
        all.body["items"].as_array().unwrap().len(),
        2,
        "the default project and the one made"
    );

    let bad_key = app
        .send(
            Request::post("/api/v1/projects")
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", "x".repeat(300))
                .body(Body::from(r#"{"name":"n"}"#))
                .unwrap(),
        )
        .await;
    assert!(
        problem(&bad_key, StatusCode::BAD_REQUEST, "invalid-parameter").contains("Idempotency-Key")
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let app = app().await;
    let reply = app.json("POST", "/api/v1/projects", "{bad").await;
    let detail = problem(&reply, StatusCode::BAD_REQUEST, "malformed-json");
    assert!(detail.contains("not valid JSON"), "{detail}");
}

#[tokio::test]
async fn wrong_types_name_the_field() {
    let app = app().await;
    let reply = app.json("POST", "/api/v1/projects", r#"{"name": 5}"#).await;
    let detail = problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert!(detail.contains("`name`"), "{detail}");
    assert_eq!(reply.body["errors"][0]["pointer"], "/name");

    let reply = app.json("POST", "/api/v1/projects", r#"[1, 2]"#).await;
    problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");

    let reply = app.json("POST", "/api/v1/projects", r#"{}"#).await;
    let detail = problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert!(detail.contains("missing field `name`"), "{detail}");
    assert_eq!(reply.body["errors"][0]["pointer"], "/name");
}

#[tokio::test]
async fn unknown_fields_are_named() {
    let app = app().await;
    let reply = app
        .json(
            "POST",
            "/api/v1/projects",
            r#"{"name": "x", "colour": "red"}"#,
        )
        .await;
    let detail = problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert!(detail.contains("colour"), "{detail}");
    assert_eq!(reply.body["errors"][0]["pointer"], "/colour");
}

#[tokio::test]
async fn invalid_values_list_every_problem() {
    let app = app().await;
    let reply = app
        .json(
            "POST",
            "/api/v1/projects",
            r#"{"name": "  ", "type": "Not Valid"}"#,
        )
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
    assert_eq!(pointers, ["/name", "/type"]);
    assert_eq!(
        app.get("/api/v1/projects").await.body["items"],
        json!([default_project(&app).await]),
        "nothing written"
    );
}

#[tokio::test]
async fn an_oversized_body_is_a_413_problem_and_writes_nothing() {
    let app = app().await;
    let body = json!({"name": "big", "description": "x".repeat(10_000)}).to_string();
    let reply = app.json("POST", "/api/v1/projects", body).await;
    let detail = problem(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
    assert!(detail.contains("4096"), "{detail}");
    assert_eq!(
        app.get("/api/v1/projects").await.body["items"],
        json!([default_project(&app).await])
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415_problem() {
    let app = app().await;
    let reply = app
        .send(
            Request::post("/api/v1/projects")
                .body(Body::from(r#"{"name":"x"}"#))
                .unwrap(),
        )
        .await;
    assert!(
        problem(
            &reply,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type"
        )
        .contains("Content-Type")
    );
    let reply = app
        .send(
            Request::post("/api/v1/projects")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(r#"{"name":"x"}"#))
                .unwrap(),
        )
        .await;
    assert!(
        problem(
            &reply,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type"
        )
        .contains("text/plain")
    );
}

#[tokio::test]
async fn a_malformed_id_names_the_parameter() {
    let app = app().await;
    for reply in [
        app.get("/api/v1/projects/not-a-uuid").await,
        app.json("PUT", "/api/v1/projects/123", "{}").await,
        app.send(
            Request::delete("/api/v1/projects/zz")
                .body(Body::empty())
                .unwrap(),
        )
        .await,
    ] {
        let detail = problem(&reply, StatusCode::BAD_REQUEST, "invalid-parameter");
        assert!(detail.contains("`id`"), "{detail}");
    }
}

#[tokio::test]
async fn a_missing_project_is_a_404_problem() {
    let app = app().await;
    let id = orchion_domain::ProjectId::new();
    let detail = problem(
        &app.get(&format!("/api/v1/projects/{id}")).await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    assert!(detail.contains(&id.to_string()), "{detail}");
    problem(
        &app.json("PUT", &format!("/api/v1/projects/{id}"), r#"{"name":"n"}"#)
            .await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
}

#[tokio::test]
async fn bad_query_parameters_are_named() {
    let app = app().await;
    for (query, name) in [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("status=gone", "status"),
        ("cursor=%%%", "cursor"),
        ("colour=red", "colour"),
    ] {
        let reply = app.get(&format!("/api/v1/projects?{query}")).await;
        let detail = problem(&reply, StatusCode::BAD_REQUEST, "invalid-parameter");
        assert!(detail.contains(&format!("`{name}`")), "{query}: {detail}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = app().await;
    problem(
        &app.get("/api/v1/nope").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    let reply = app
        .send(
            Request::patch("/api/v1/projects")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    problem(&reply, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    let allow = reply.headers["allow"].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
}

#[tokio::test]
async fn health_endpoints_answer_in_their_shapes() {
    let app = app().await;
    let health = app.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "healthy");
    assert_eq!(health.body["service"], "orchion");
    assert!(health.body["uptime"].as_str().unwrap().ends_with('s'));
    time::OffsetDateTime::parse(
        health.body["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(app.get("/livez").await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    assert_eq!(app.get("/ready").await.body["status"], "ready");

    app.state.lifecycle.start_draining();
    let readyz = app.get("/readyz").await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz.body["reason"], "draining for shutdown");
    assert_eq!(app.get("/livez").await.status, StatusCode::OK);
}

#[tokio::test]
async fn readiness_fails_while_the_store_is_unreachable() {
    let app = app().await;
    app.state.store.close().await;
    let readyz = app.get("/readyz").await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz.body["reason"], "the store is unreachable");
    // A request that needs the store is a 503 problem, not a 500.
    problem(
        &app.get("/api/v1/projects").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
    );
}

#[tokio::test]
async fn the_openapi_document_and_swagger_ui_are_served() {
    let app = app().await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    for path in [
        "/api/v1/projects",
        "/api/v1/projects/{id}",
        "/readyz",
        "/health",
    ] {
        assert!(
            doc.body["paths"].get(path).is_some(),
            "{path} missing from the document"
        );
    }
    assert!(doc.body["components"]["schemas"].get("Problem").is_some());
    let ui = app.get("/docs/").await;
    assert_eq!(ui.status, StatusCode::OK);
    assert!(
        ui.body.as_str().unwrap().contains("swagger"),
        "{:?}",
        ui.body
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = app().await;
    let reply = app.get("/livez").await;
    assert!(!reply.headers["x-request-id"].is_empty());
    let reply = app
        .send(
            Request::get("/livez")
                .header("x-request-id", "abc-123")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.headers["x-request-id"], "abc-123");
}

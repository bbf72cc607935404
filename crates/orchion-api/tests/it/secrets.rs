//! `/api/v1/projects/{id}/secrets`: values go in and never come out, references are checked
//! when a job is made, and literal values are redacted in answers — on SQLite and PostgreSQL.

use axum::http::{Request, StatusCode, header};
use orchion_control::TokenRequest;
use orchion_domain::{ProjectId, Role, TokenKind};
use serde_json::{Value, json};

use crate::common::{App, app, postgres_app, problem};

const VALUE: &str = "s3cret-value-of-the-test";

fn secret_path(project: &str, name: &str) -> String {
    format!("/api/v1/projects/{project}/secrets/{name}")
}

async fn put(app: &App, project: &str, name: &str, value: &str) -> crate::common::Reply {
    app.json(
        "PUT",
        &secret_path(project, name),
        json!({ "value": value }).to_string(),
    )
    .await
}

fn no_value(body: &Value) {
    assert!(
        !body.to_string().contains(VALUE),
        "a value came out: {body}"
    );
}

async fn secrets_are_set_described_and_deleted_but_never_shown(app: App) {
    let default = ProjectId::DEFAULT.to_string();
    let made = put(&app, &default, "DB_PASSWORD", VALUE).await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    assert_eq!(made.body["version"], 1);
    assert_eq!(
        made.headers[header::LOCATION],
        secret_path(&default, "DB_PASSWORD").as_str()
    );
    no_value(&made.body);
    let changed = put(&app, &default, "DB_PASSWORD", &format!("{VALUE}-2")).await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
    assert_eq!(changed.body["version"], 2);
    assert_eq!(changed.body["created_at"], made.body["created_at"]);

    let got = app.get(&secret_path(&default, "DB_PASSWORD")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["name"], "DB_PASSWORD");
    assert_eq!(got.body["updated_by"], got.body["created_by"]);
    no_value(&got.body);
    let listed = app
        .get(&format!("/api/v1/projects/{default}/secrets"))
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["items"][0]["name"], "DB_PASSWORD");
    no_value(&listed.body);

    // Sealed at rest: the store holds no byte of the value.
    let sealed = app
        .state
        .store
        .sealed_secrets(ProjectId::DEFAULT)
        .await
        .unwrap();
    assert!(
        !sealed[0]
            .sealed
            .ciphertext
            .windows(6)
            .any(|w| w == &VALUE.as_bytes()[..6])
    );

    let gone = app
        .send(
            Request::delete(secret_path(&default, "DB_PASSWORD"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let again = app
        .send(
            Request::delete(secret_path(&default, "DB_PASSWORD"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    problem(&again, StatusCode::NOT_FOUND, "not-found");
    problem(
        &app.get(&secret_path(&default, "DB_PASSWORD")).await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
}

async fn bad_secrets_are_refused_naming_the_field(app: App) {
    let default = ProjectId::DEFAULT.to_string();
    let bad_name = put(&app, &default, "1bad", VALUE).await;
    let detail = problem(&bad_name, StatusCode::BAD_REQUEST, "invalid-parameter");
    assert!(detail.contains("`name`"), "{detail}");
    let empty = put(&app, &default, "EMPTY", "").await;
    problem(
        &empty,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(empty.body["errors"][0]["pointer"], "/value");
    let nul = put(&app, &default, "NUL", "a\u{0}b").await;
    problem(&nul, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    let missing = app
        .json("PUT", &secret_path(&default, "X"), "{}".to_owned())
        .await;
    problem(&missing, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    let extra = app
        .json(
            "PUT",
            &secret_path(&default, "X"),
            json!({"value": "v", "colour": 1}).to_string(),
        )
        .await;
    problem(&extra, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    let nowhere = put(&app, &ProjectId::new().to_string(), "X", VALUE).await;
    problem(&nowhere, StatusCode::NOT_FOUND, "not-found");
    let malformed = put(&app, "not-a-project", "X", VALUE).await;
    problem(&malformed, StatusCode::BAD_REQUEST, "invalid-parameter");
    assert!(
        app.get(&format!("/api/v1/projects/{default}/secrets"))
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing was written"
    );
}

async fn a_confined_admin_manages_only_its_own_projects_secrets(app: App) {
    let own = app.create("own").await["id"].as_str().unwrap().to_owned();
    let other = app.create("other").await["id"].as_str().unwrap().to_owned();
    let token = app
        .state
        .access
        .create(
            TokenRequest {
                kind: TokenKind::Api,
                name: "team-admin".into(),
                role: Role::Admin,
                project: Some(own.parse().unwrap()),
                ttl: None,
            },
            "test",
        )
        .await
        .unwrap()
        .secret;
    let as_team = |method: &str, path: String, body: Value| {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    };
    let mine = app
        .send(as_team(
            "PUT",
            secret_path(&own, "T"),
            json!({"value": VALUE}),
        ))
        .await;
    assert_eq!(mine.status, StatusCode::CREATED, "{:?}", mine.body);
    let theirs = app
        .send(as_team(
            "PUT",
            secret_path(&other, "T"),
            json!({"value": VALUE}),
        ))
        .await;
    problem(&theirs, StatusCode::NOT_FOUND, "not-found");
    let listed = app
        .send(
            Request::get(format!("/api/v1/projects/{other}/secrets"))
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    problem(&listed, StatusCode::NOT_FOUND, "not-found");
}

async fn jobs_refer_to_secrets_that_exist_and_show_literals_redacted(app: App) {
    let default = ProjectId::DEFAULT.to_string();
    assert_eq!(
        put(&app, &default, "TOKEN", VALUE).await.status,
        StatusCode::CREATED
    );
    let job = |env: Value| {
        json!({"executor": "shell", "spec": {"command": "env", "env": env}}).to_string()
    };
    let refused = app
        .json(
            "POST",
            "/api/v1/jobs",
            job(json!({"A": {"secret": "NOT_SET"}, "B": {"secret": "TOKEN"}})),
        )
        .await;
    let detail = problem(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(
        refused.body["errors"].as_array().unwrap().len(),
        1,
        "{detail}"
    );
    assert_eq!(refused.body["errors"][0]["pointer"], "/spec/env/A/secret");
    assert!(
        refused.body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("`NOT_SET`"),
        "{:?}",
        refused.body
    );
    let malformed = app
        .json("POST", "/api/v1/jobs", job(json!({"A": {"secret": "a b"}})))
        .await;
    problem(
        &malformed,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(malformed.body["errors"][0]["pointer"], "/spec/env/A/secret");

    let made = app
        .json(
            "POST",
            "/api/v1/jobs",
            job(json!({"A": {"secret": "TOKEN"}, "PLAIN": "literal-of-the-job"})),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    let shown = app
        .get(&format!(
            "/api/v1/jobs/{}",
            made.body["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(shown.body["spec"]["env"]["A"], json!({"secret": "TOKEN"}));
    assert_eq!(shown.body["spec"]["env"]["PLAIN"], "REDACTED");
    assert!(!shown.body.to_string().contains("literal-of-the-job"));
    let http = app
        .json(
            "POST",
            "/api/v1/jobs",
            json!({"executor": "http", "spec": {"url": "http://example.com",
                   "headers": {"authorization": "Bearer literal-of-the-job"}}})
            .to_string(),
        )
        .await;
    assert_eq!(http.body["spec"]["headers"]["authorization"], "REDACTED");

    let batch = app
        .json(
            "POST",
            "/api/v1/jobs/batch",
            json!({"jobs": [
                {"executor": "shell", "spec": {"command": "env", "env": {"A": {"secret": "TOKEN"}}}},
                {"executor": "shell", "spec": {"command": "env", "env": {"A": {"secret": "NOT_SET"}}}},
            ]})
            .to_string(),
        )
        .await;
    problem(
        &batch,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    );
    assert_eq!(
        batch.body["errors"][0]["pointer"],
        "/jobs/1/spec/env/A/secret"
    );
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::app().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(app) = super::postgres_app().await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    secrets_are_set_described_and_deleted_but_never_shown,
    bad_secrets_are_refused_naming_the_field,
    a_confined_admin_manages_only_its_own_projects_secrets,
    jobs_refer_to_secrets_that_exist_and_show_literals_redacted,
);

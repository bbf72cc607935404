//! Who may do what, over every route the router serves: the policy table, tokens of each role
//! and state, project confinement, and the audit log — on SQLite and on PostgreSQL.

use std::time::Duration;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use orchion_api::auth::{Policy, policy};
use orchion_control::TokenRequest;
use orchion_domain::{ProjectId, Role, TokenKind};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::{App, app, postgres_app, throttled_app};

/// The principals every route is tried with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Nobody,
    Revoked,
    Expired,
    /// A viewer confined to a project of its own.
    ForeignViewer,
    Viewer,
    Operator,
    Admin,
}

async fn token(app: &App, role: Role, project: Option<ProjectId>) -> String {
    let request = TokenRequest {
        kind: TokenKind::Api,
        name: format!("{role}"),
        role,
        project,
        ttl: None,
    };
    app.state
        .access
        .create(request, "test")
        .await
        .unwrap()
        .secret
}

/// An admin token whose expiry is already past.
async fn expired_token(app: &App) -> String {
    let text = "orc_expired-token-for-the-route-table";
    let now = orchion_store::now();
    let token = orchion_domain::Token {
        id: orchion_domain::TokenId::new(),
        kind: TokenKind::Api,
        name: "expired".into(),
        role: Role::Admin,
        project: None,
        digest: orchion_control::access::digest(text),
        created_by: "test".into(),
        created_at: now - Duration::from_secs(120),
        expires_at: Some(now - Duration::from_secs(60)),
        last_used_at: None,
        revoked_at: None,
    };
    app.state.store.create_token(&token).await.unwrap();
    text.to_owned()
}

/// Each principal's token (none for `Nobody`).
async fn tokens(app: &App) -> Vec<(Who, Option<String>)> {
    let project = app.create("elsewhere").await["id"]
        .as_str()
        .unwrap()
        .parse::<ProjectId>()
        .unwrap();
    let revoked = app
        .state
        .access
        .create(
            TokenRequest {
                kind: TokenKind::Api,
                name: "revoked".into(),
                role: Role::Admin,
                project: None,
                ttl: None,
            },
            "test",
        )
        .await
        .unwrap();
    app.state.access.revoke(revoked.token.id).await.unwrap();
    let expired = expired_token(app).await;
    vec![
        (Who::Nobody, None),
        (Who::Revoked, Some(revoked.secret)),
        (Who::Expired, Some(expired)),
        (
            Who::ForeignViewer,
            Some(token(app, Role::Viewer, Some(project)).await),
        ),
        (Who::Viewer, Some(token(app, Role::Viewer, None).await)),
        (Who::Operator, Some(token(app, Role::Operator, None).await)),
        (Who::Admin, Some(token(app, Role::Admin, None).await)),
    ]
}

/// Whether `who` gets past the gate of a route with `policy` (else: which status).
fn expected(policy: Policy, who: Who) -> Result<(), StatusCode> {
    let (needed, cluster) = match policy {
        Policy::Open => return Ok(()),
        Policy::Role(role) => (role, false),
        Policy::Cluster(role) => (role, true),
    };
    let (role, confined) = match who {
        Who::Nobody | Who::Revoked | Who::Expired => return Err(StatusCode::UNAUTHORIZED),
        Who::ForeignViewer => (Role::Viewer, true),
        Who::Viewer => (Role::Viewer, false),
        Who::Operator => (Role::Operator, false),
        Who::Admin => (Role::Admin, false),
    };
    if role < needed || (cluster && confined) {
        Err(StatusCode::FORBIDDEN)
    } else {
        Ok(())
    }
}

/// Every (method, route template) of the OpenAPI document, which is made from the router.
fn routes() -> Vec<(Method, String)> {
    let doc = serde_json::to_value(orchion_api::openapi()).unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if let Ok(method) = method.to_ascii_uppercase().parse::<Method>() {
                routes.push((method, path.clone()));
            }
        }
    }
    routes.push((Method::GET, "/openapi.json".into()));
    routes.push((Method::GET, "/".into()));
    routes
}

/// A concrete path for a template: ids that exist nowhere.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{id}" => ProjectId::new().to_string(),
            "{name}" => "nothing-here".to_owned(),
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The status of a request, without reading a body that may stream forever.
async fn status_of(app: &App, method: &Method, path: &str, token: Option<&str>) -> StatusCode {
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = if *method == Method::GET || *method == Method::DELETE {
        Body::empty()
    } else {
        Body::from("{}")
    };
    let response = app
        .router
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    response.status()
}

async fn every_route_enforces_its_policy_for_every_principal(app: App) {
    let principals = tokens(&app).await;
    let mut checked = 0;
    for (method, template) in routes() {
        let Some(policy) = policy(&method, &template) else {
            panic!("{method} {template} has no policy in orchion_api::auth::policy");
        };
        let path = concrete(&template);
        for (who, token) in &principals {
            let status = status_of(&app, &method, &path, token.as_deref()).await;
            match expected(policy, *who) {
                // An open route may check its callers itself (GitHub's signature: 401).
                Ok(()) if policy == Policy::Open => assert_ne!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {template} as {who:?}"
                ),
                Ok(()) => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {template} as {who:?} should pass the gate, got {status}"
                ),
                Err(want) => {
                    assert_eq!(status, want, "{method} {template} as {who:?} ({policy:?})")
                }
            }
            assert!(
                !status.is_server_error(),
                "{method} {template} as {who:?}: {status}"
            );
            checked += 1;
        }
    }
    assert!(checked > 300, "only {checked} requests were tried");
}

#[tokio::test]
async fn every_route_enforces_its_policy_on_sqlite() {
    every_route_enforces_its_policy_for_every_principal(app().await).await;
}

#[tokio::test]
async fn every_route_enforces_its_policy_on_postgres() {
    if let Some(app) = postgres_app().await {
        every_route_enforces_its_policy_for_every_principal(app).await;
    }
}

#[tokio::test]
async fn a_401_says_how_to_authenticate_and_tokens_in_query_strings_are_refused() {
    let app = app().await;
    let reply = app
        .send_as_is(Request::get("/api/v1/jobs").body(Body::empty()).unwrap())
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.headers[header::WWW_AUTHENTICATE],
        "Bearer realm=\"orchion\""
    );
    let reply = app
        .send_as_is(
            Request::get("/api/v1/jobs")
                .header(header::AUTHORIZATION, "Bearer orc_not-a-token")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(
        reply.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    for malformed in ["Basic abc", "Bearer", "Bearer  "] {
        let reply = app
            .send_as_is(
                Request::get("/api/v1/jobs")
                    .header(header::AUTHORIZATION, malformed)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{malformed}");
    }
    let reply = app.get("/api/v1/jobs?access_token=x").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("query string")
    );
}

#[tokio::test]
async fn failed_attempts_are_limited_per_client() {
    let app = throttled_app(20).await;
    let mut statuses = Vec::new();
    for _ in 0..22 {
        let reply = app
            .send_as_is(
                Request::get("/api/v1/jobs")
                    .header(header::AUTHORIZATION, "Bearer orc_guess")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        statuses.push(reply.status);
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert_eq!(statuses[21], StatusCode::TOO_MANY_REQUESTS);
}

fn bearer(method: &str, uri: &str, token: &str, body: Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(if method == "GET" {
            Body::empty()
        } else {
            Body::from(body.to_string())
        })
        .unwrap()
}

#[tokio::test]
async fn a_confined_token_sees_nothing_of_another_project() {
    let app = app().await;
    let a = app.create("a").await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let b = app.create("b").await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let operator_a = token(&app, Role::Operator, Some(a)).await;
    let viewer_b = token(&app, Role::Viewer, Some(b)).await;
    let job = json!({"executor": "noop", "spec": {}});
    let created = app
        .send(bearer("POST", "/api/v1/jobs", &operator_a, job.clone()))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(
        created.body["project_id"],
        a.to_string(),
        "the token's own project"
    );
    let id = created.body["id"].as_str().unwrap().to_owned();

    // Another project's job is missing, in every way one can ask, in the same words as one
    // that does not exist.
    let unknown = ProjectId::new().to_string();
    let missing = app
        .send(bearer(
            "GET",
            &format!("/api/v1/jobs/{unknown}"),
            &viewer_b,
            json!({}),
        ))
        .await;
    let missing = missing.body["detail"]
        .as_str()
        .unwrap()
        .replace(&unknown, "X");
    for path in [
        format!("/api/v1/jobs/{id}"),
        format!("/api/v1/jobs/{id}/logs"),
    ] {
        let reply = app.send(bearer("GET", &path, &viewer_b, json!({}))).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            reply.body["detail"].as_str().unwrap().replace(&id, "X"),
            missing
        );
    }
    let listed = app
        .send(bearer("GET", "/api/v1/jobs", &viewer_b, json!({})))
        .await;
    assert_eq!(listed.body["items"], json!([]));
    let asked = app
        .send(bearer(
            "GET",
            &format!("/api/v1/jobs?project_id={a}"),
            &viewer_b,
            json!({}),
        ))
        .await;
    assert_eq!(asked.body["items"], json!([]));
    let projects = app
        .send(bearer("GET", "/api/v1/projects", &viewer_b, json!({})))
        .await;
    let ids: Vec<&str> = projects.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b.to_string()]);
    let project_a = app
        .send(bearer(
            "GET",
            &format!("/api/v1/projects/{a}"),
            &viewer_b,
            json!({}),
        ))
        .await;
    assert_eq!(project_a.status, StatusCode::NOT_FOUND);

    // A confined operator cannot act on, or create in, another project.
    let operator_b = token(&app, Role::Operator, Some(b)).await;
    let cancel = app
        .send(bearer(
            "POST",
            &format!("/api/v1/jobs/{id}/cancel"),
            &operator_b,
            json!({}),
        ))
        .await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    let mut elsewhere = job.clone();
    elsewhere["project_id"] = json!(a.to_string());
    let refused = app
        .send(bearer("POST", "/api/v1/jobs", &operator_b, elsewhere))
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.body["errors"][0]["pointer"], "/project_id");

    // Another project's workflow type cannot be started: it reads as one that does not exist.
    let definition =
        json!({"name": "a-only", "steps": [{"name": "s", "executor": "noop", "spec": {}}]});
    let stored = app
        .send(bearer(
            "POST",
            "/api/v1/workflow-types",
            &operator_a,
            definition,
        ))
        .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{:?}", stored.body);
    assert_eq!(stored.body["project_id"], a.to_string());
    let start = |name: &str| json!({"type": name, "input": {}});
    let foreign = app
        .send(bearer(
            "POST",
            "/api/v1/workflows",
            &operator_b,
            start("a-only"),
        ))
        .await;
    let absent = app
        .send(bearer(
            "POST",
            "/api/v1/workflows",
            &operator_b,
            start("nowhere"),
        ))
        .await;
    assert_eq!(foreign.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        foreign.body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .replace("a-only", "X"),
        absent.body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .replace("nowhere", "X"),
    );
    let own = app
        .send(bearer(
            "POST",
            "/api/v1/workflows",
            &operator_a,
            start("a-only"),
        ))
        .await;
    assert_eq!(own.status, StatusCode::CREATED, "{:?}", own.body);

    // The unconfined admin sees it.
    let seen = app.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(seen.status, StatusCode::OK);
}

#[tokio::test]
async fn tokens_are_shown_once_stored_as_digests_and_revoked_at_once() {
    let app = app().await;
    let made = app
        .json(
            "POST",
            "/api/v1/tokens",
            json!({"name": "ci", "role": "operator", "ttl": "30d"}).to_string(),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    let text = made.body["token_text"].as_str().unwrap().to_owned();
    assert!(text.starts_with("orc_"));
    let id = made.body["id"].as_str().unwrap().to_owned();
    let listed = app.get("/api/v1/tokens").await;
    assert!(
        !listed.body.to_string().contains(&text),
        "never shown again"
    );
    let works = app
        .send(bearer("GET", "/api/v1/jobs", &text, json!({})))
        .await;
    assert_eq!(works.status, StatusCode::OK);
    let revoked = app
        .send(
            Request::delete(format!("/api/v1/tokens/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revoked_at"].is_string());
    let refused = app
        .send(bearer("GET", "/api/v1/jobs", &text, json!({})))
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.body["detail"].as_str().unwrap().contains("revoked"));

    // An operator cannot make tokens; an admin cannot make one stronger than itself.
    let operator = token(&app, Role::Operator, None).await;
    let refused = app
        .send(bearer(
            "POST",
            "/api/v1/tokens",
            &operator,
            json!({"name": "x", "role": "viewer"}),
        ))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let bad = app
        .json(
            "POST",
            "/api/v1/tokens",
            json!({"name": "", "role": "root", "ttl": "soon", "project_id": "nope"}).to_string(),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let pointers: Vec<&str> = bad.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/name", "/ttl", "/role", "/project_id"]);
}

#[tokio::test]
async fn join_tokens_are_shown_once_listed_without_secrets_and_revoked() {
    let app = app().await;
    let made = app
        .json(
            "POST",
            "/api/v1/join-tokens",
            json!({"name": "rack-7", "ttl": "24h", "labels": {"zone": "*", "gpu": "false"},
                   "max_capacity": {"cpu_millis": 4000, "memory_bytes": 8589934592u64, "gpus": 0}})
            .to_string(),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    let text = made.body["token_text"].as_str().unwrap();
    assert!(text.starts_with("orcj_"), "{text}");
    assert_eq!(made.body["labels"]["zone"], "*");
    assert!(made.body["expires_at"].is_string());
    let id = made.body["id"].as_str().unwrap().to_owned();

    let again = app
        .json(
            "POST",
            "/api/v1/join-tokens",
            json!({"name": "rack-7"}).to_string(),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);
    assert!(again.body["detail"].as_str().unwrap().contains("`rack-7`"));

    let listed = app.get("/api/v1/join-tokens").await;
    assert_eq!(listed.status, StatusCode::OK);
    let listed_text = listed.body.to_string();
    assert!(listed_text.contains("rack-7"));
    assert!(!listed_text.contains(text), "the secret is shown once");
    assert!(!listed_text.contains("digest"));

    let revoked = app
        .json("DELETE", &format!("/api/v1/join-tokens/{id}"), "")
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revoked_at"].is_string());
    let admitted = app.state.join_tokens.admit(text).await.unwrap();
    assert_eq!(admitted, None, "a revoked join token admits no node");
    let missing = app
        .json(
            "DELETE",
            &format!("/api/v1/join-tokens/{}", orchion_domain::JoinTokenId::new()),
            "",
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let bad = app
        .json(
            "POST",
            "/api/v1/join-tokens",
            json!({"name": " ", "ttl": "0s", "labels": {"Bad Key": "x"},
                   "max_capacity": {"cpu_millis": u64::MAX, "memory_bytes": 1, "gpus": 0}})
            .to_string(),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let pointers: Vec<&str> = bad.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        ["/name", "/ttl", "/labels/Bad Key", "/max_capacity"]
    );
    let unknown = app
        .json(
            "POST",
            "/api/v1/join-tokens",
            json!({"name": "x", "role": "admin"}).to_string(),
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        unknown.body
    );
}

#[tokio::test]
async fn each_change_is_audited_once_with_its_actor() {
    let app = app().await;
    let operator = app
        .state
        .access
        .create(
            TokenRequest {
                kind: TokenKind::Api,
                name: "op".into(),
                role: Role::Operator,
                project: None,
                ttl: None,
            },
            "test",
        )
        .await
        .unwrap();
    let created = app
        .send(bearer(
            "POST",
            "/api/v1/jobs",
            &operator.secret,
            json!({"executor": "noop", "spec": {}}),
        ))
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let denied = app
        .send(bearer(
            "DELETE",
            &format!("/api/v1/nodes/{id}"),
            &operator.secret,
            json!({}),
        ))
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let read = app
        .send(bearer("GET", "/api/v1/jobs", &operator.secret, json!({})))
        .await;
    assert_eq!(read.status, StatusCode::OK);

    let actor = format!("token:{}", operator.token.id);
    let audit = app.get(&format!("/api/v1/audit?actor={actor}")).await;
    let entries = audit.body["items"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        2,
        "two changes tried, reads are not audited: {entries:?}"
    );
    assert_eq!(entries[0]["route"], "/api/v1/jobs");
    assert_eq!(entries[0]["method"], "POST");
    assert_eq!(entries[0]["status"], 201);
    assert_eq!(entries[0]["role"], "operator");
    assert_eq!(entries[0]["resource"], id);
    assert_eq!(entries[1]["route"], "/api/v1/nodes/{id}");
    assert_eq!(entries[1]["status"], 403);
    assert!(!audit.body.to_string().contains(&operator.secret));
    let viewer_reads = app
        .send(bearer("GET", "/api/v1/audit", &operator.secret, json!({})))
        .await;
    assert_eq!(viewer_reads.status, StatusCode::FORBIDDEN, "admins only");
    for (query, parameter) in [("limit=0", "limit"), ("since=yesterday", "since")] {
        let bad = app.get(&format!("/api/v1/audit?{query}")).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            bad.body["detail"].as_str().unwrap().contains(parameter),
            "{query}"
        );
    }
}

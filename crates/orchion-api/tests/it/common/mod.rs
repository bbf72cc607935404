//! The real router over a real SQLite store and node registry, driven with `oneshot`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt;
use orchion_api::{AppState, Lifecycle, Limits, router};
use orchion_control::{NodeRegistry, RegistrySettings};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The admin token the test app accepts; [`App::send`] adds it to requests that carry no
/// `Authorization` header of their own.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

pub struct App {
    pub router: Router,
    pub state: AppState,
    _db: Option<orchion_testkit::SqliteDatabase>,
}

/// The app over a fresh SQLite store.
pub async fn app() -> App {
    let db = orchion_testkit::sqlite_database();
    let url = db.url().to_owned();
    app_on(&url, Some(db), 0).await
}

/// The app over a fresh SQLite store, refusing a client after `failures` failed attempts a
/// minute.
pub async fn throttled_app(failures: u32) -> App {
    let db = orchion_testkit::sqlite_database();
    let url = db.url().to_owned();
    app_on(&url, Some(db), failures).await
}

/// The app over a fresh PostgreSQL database; `None` where PostgreSQL is not available (CI
/// always has it).
pub async fn postgres_app() -> Option<App> {
    let url = orchion_testkit::postgres_database().await?;
    Some(app_on(&url, None, 0).await)
}

async fn app_on(url: &str, db: Option<orchion_testkit::SqliteDatabase>, failures: u32) -> App {
    // Enough connections for requests sent at once to race each other in the database.
    let store = orchion_store::connect(url, 8).await.unwrap();
    let settings = RegistrySettings::default();
    let nodes = Arc::new(NodeRegistry::load(store.clone(), settings).await.unwrap());
    let work = Arc::new(orchion_control::WorkQueue::new(
        store.clone(),
        nodes.clone(),
    ));
    let scheduler = Arc::new(orchion_control::Scheduler::new(store.clone(), work.clone()));
    let workflows = Arc::new(orchion_control::Workflows::new(store.clone(), work.clone()));
    let events = Arc::new(
        orchion_api::events::EventHub::new(store.clone(), 3, 2)
            .await
            .unwrap(),
    );
    let webhooks = Arc::new(orchion_control::Webhooks::new(
        webhooks(),
        orchion_domain::ProjectId::DEFAULT,
        store.clone(),
        work.clone(),
        workflows.clone(),
    ));
    let access = Arc::new(orchion_control::Access::new(store.clone()));
    access.bootstrap(Some(ADMIN_TOKEN)).await.unwrap();
    let state = AppState::new(orchion_api::Services {
        access,
        oidc: None,
        join_tokens: Arc::new(orchion_control::JoinTokens::new(
            store.clone(),
            "test-join-token",
        )),
        throttle: Arc::new(orchion_api::auth::Throttle::new(failures)),
        kubernetes: Arc::new(orchion_spec::executor::KubernetesPolicy {
            namespace: "default".into(),
            control_plane: orchion_spec::executor::KubernetesNames {
                service_accounts: vec!["orchion".into()],
                secrets: vec!["orchion".into()],
                ..Default::default()
            },
            ..Default::default()
        }),
        secrets: Arc::new(orchion_control::Secrets::new(
            store.clone(),
            orchion_control::SecretKey::generate().unwrap().0,
        )),
        events,
        store,
        nodes,
        work,
        scheduler,
        workflows,
        engines: Arc::new([("pulumi".to_owned(), false)].into()),
        webhooks,
        probes: orchion_api::executors::Probes::default(),
        lifecycle: Arc::new(Lifecycle::new()),
        enqueue: Arc::new(orchion_api::enqueue::EnqueueSettings {
            worker_url: "http://127.0.0.1:9".into(),
            max_attempts: 2,
            project: orchion_domain::ProjectId::DEFAULT,
        }),
    });
    let router = router(
        state.clone(),
        Limits {
            body_limit_bytes: 4096,
            request_timeout: std::time::Duration::from_secs(30),
        },
        orchion_api::browser::Browser::default(),
    );
    App {
        router,
        state,
        _db: db,
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl App {
    pub async fn send(&self, mut request: Request<Body>) -> Reply {
        if !request.headers().contains_key(header::AUTHORIZATION) {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
            );
        }
        self.send_as_is(request).await
    }

    /// Sends the request with exactly the headers it has.
    pub async fn send_as_is(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn json(&self, method: &str, uri: &str, body: impl Into<String>) -> Reply {
        self.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.into()))
                .unwrap(),
        )
        .await
    }

    pub async fn create(&self, name: &str) -> Value {
        let reply = self
            .json(
                "POST",
                "/api/v1/projects",
                json!({"name": name}).to_string(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body
    }
}

/// Asserts a problem+json answer with this status and code, and returns its detail.
pub fn problem(reply: &Reply, status: StatusCode, code: &str) -> String {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{:?}",
        reply.body
    );
    assert_eq!(reply.body["type"], format!("urn:orchion:problem:{code}"));
    assert_eq!(reply.body["code"], code);
    assert_eq!(reply.body["status"], status.as_u16());
    reply.body["detail"].as_str().unwrap().to_owned()
}

/// The webhook configuration the handler tests use: a default secret, one for the `acme`
/// organisation, and rules for issues, pushes and pull requests.
pub fn webhooks() -> orchion_config::GithubWebhooks {
    use orchion_config::{Secret, WebhookRule};
    let rule = |name: &str, event: &str, value: Value| -> WebhookRule {
        let mut rule = serde_json::json!({"name": name, "event": event});
        for (k, v) in value.as_object().unwrap() {
            rule[k] = v.clone();
        }
        serde_json::from_value(rule).unwrap()
    };
    orchion_config::GithubWebhooks {
        secret: Some(Secret::new("test-webhook-secret")),
        secrets: [("acme".to_owned(), Secret::new("acme-org-secret"))].into(),
        project: None,
        replay_window: std::time::Duration::from_secs(3600),
        rules: vec![
            rule(
                "triage",
                "issues",
                serde_json::json!({"actions": ["opened", "labeled"], "labels": ["bug"], "workflow": "triage",
                    "input": {"number": "${{ event.issue.number }}", "repo": "${{ event.repository.full_name }}"}}),
            ),
            rule(
                "ci",
                "push",
                serde_json::json!({"branches": ["main"],
                    "job": {"executor": "noop", "spec": {"outputs": {"sha": "${{ event.after }}"}}}}),
            ),
            rule(
                "reads-a-missing-field",
                "pull_request",
                serde_json::json!({"actions": ["opened"],
                    "job": {"executor": "noop", "spec": {"outputs": {"x": "${{ event.pull_request.nope }}"}}}}),
            ),
            rule(
                "review",
                "pull_request",
                serde_json::json!({"actions": ["opened"], "workflow": "triage",
                    "input": {"number": "${{ event.number }}", "repo": "${{ event.repository.full_name }}"}}),
            ),
        ],
    }
}

//! Signing in through an OpenID Connect provider: a real `orchion server` process configured
//! for the fake provider of `orchion_oidc::fake`, the flow followed by hand (redirect by
//! redirect, the cookies carried as a browser carries them), and the ways it must refuse.

use std::{path::Path, time::Duration};

use orchion_oidc::fake::FakeSettings;
use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::common::{Orchion, anonymous, free_port, get_json, listening_addr};

/// The fake provider of `orchion_oidc::fake`, on a loopback port of its own thread (so it
/// answers while a test blocks), stopped on drop.
pub struct FakeIssuer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub url: String,
}

impl Drop for FakeIssuer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl FakeIssuer {
    /// The fake with its defaults (subject `alice` in `orchion-admins`), changed by `adjust`.
    pub fn start(adjust: impl FnOnce(&mut FakeSettings)) -> FakeIssuer {
        let mut settings = FakeSettings::default();
        adjust(&mut settings);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = orchion_oidc::fake::router(url.clone(), settings);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        FakeIssuer {
            stop: Some(stop),
            thread: Some(thread),
            url,
        }
    }
}

/// `orchion <mode>` on a fixed HTTP port, signing in through `issuer`, with the
/// `orchion-admins` group mapped to admin and `developers` to operator.
pub fn server_with_oidc(dir: &Path, mode: &str, issuer: &FakeIssuer) -> Orchion {
    let http_port = free_port();
    let config = dir.join("oidc.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
http_port = {http_port}

[auth.oidc]
issuer = "{}"
client_id = "orchion"
redirect_url = "http://127.0.0.1:{http_port}/auth/oidc/callback"
name = "Fake IdP"

[auth.oidc.roles]
orchion-admins = "admin"
developers = "operator"
"#,
            issuer.url
        ),
    )
    .unwrap();
    let mut server = Orchion::spawn(
        dir,
        &[
            mode,
            "--config",
            config.to_str().unwrap(),
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
        &[("ORCHION_KUBERNETES__ENABLED", "false")],
    );
    let line = server.wait_for_line("HTTP API listening on http://", Duration::from_secs(60));
    server.addr = listening_addr(&line, "HTTP API listening on http://").unwrap();
    server
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(response: &reqwest::Response) -> String {
    response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The `name=value` part of the response's cookie named `name`.
fn cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .find(|pair| pair.starts_with(&format!("{name}=")) && pair.len() > name.len() + 1)
}

/// Follows a sign-in to the callback's answer, as a browser would.
async fn sign_in(server: &Orchion) -> reqwest::Response {
    let client = no_redirects();
    let login = client
        .get(server.url("/auth/oidc/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let pending = cookie(&login, "orchion_oidc").expect("the login cookie");
    let at_provider = client.get(location(&login)).send().await.unwrap();
    assert_eq!(at_provider.status(), StatusCode::FOUND);
    client
        .get(location(&at_provider))
        .header(header::COOKIE, pending)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_person_signs_in_through_the_provider_and_acts_as_their_subject() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = FakeIssuer::start(|fake| fake.groups = vec!["developers".into()]);
    let server = server_with_oidc(dir.path(), "server", &issuer);
    // Open: asked without a token.
    let methods: Value = anonymous()
        .get(server.url("/api/v1/session/methods"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(methods["oidc"]["name"], "Fake IdP");

    let answer = sign_in(&server).await;
    assert_eq!(
        answer.status(),
        StatusCode::SEE_OTHER,
        "{:?}",
        answer.text().await
    );
    assert_eq!(location(&answer), "/");
    let session = cookie(&answer, "orchion_session").expect("a session cookie");
    let me: Value = no_redirects()
        .get(server.url("/api/v1/session"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["actor"], "oidc:alice");
    assert_eq!(me["role"], "operator", "developers map to operator");
    assert!(me["csrf_token"].is_string());

    // An operator may not manage tokens; the refusal is audited under the person's subject.
    let refused = no_redirects()
        .post(server.url("/api/v1/tokens"))
        .header(header::COOKIE, &session)
        .header("x-csrf-token", me["csrf_token"].as_str().unwrap())
        .json(&serde_json::json!({"name": "x", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let audit = get_json(&server, "/api/v1/audit?actor=oidc:alice")
        .await
        .unwrap();
    let routes: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["/auth/oidc/callback", "/api/v1/tokens"]);
}

#[tokio::test]
async fn the_callback_refuses_foreign_tokens_forged_state_and_people_without_a_role() {
    let dir = tempfile::tempdir().unwrap();
    let foreign_audience: fn(&mut FakeSettings) =
        |fake| fake.audience = Some("another-client".into());
    let foreign_issuer: fn(&mut FakeSettings) =
        |fake| fake.token_issuer = Some("https://evil.example.com".into());
    let no_role: fn(&mut FakeSettings) = |fake| fake.groups = vec!["visitors".into()];
    for (case, adjust, status, expected) in [
        (
            "foreign audience",
            foreign_audience,
            StatusCode::UNAUTHORIZED,
            "Audience",
        ),
        (
            "foreign issuer",
            foreign_issuer,
            StatusCode::UNAUTHORIZED,
            "Issuer",
        ),
        (
            "no role",
            no_role,
            StatusCode::FORBIDDEN,
            "no value of its `groups` claim",
        ),
    ] {
        let issuer = FakeIssuer::start(adjust);
        let data = tempfile::tempdir_in(dir.path()).unwrap();
        let server = server_with_oidc(data.path(), "server", &issuer);
        let answer = sign_in(&server).await;
        assert_eq!(answer.status(), status, "{case}");
        assert!(cookie(&answer, "orchion_session").is_none());
        let problem: Value = answer.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(expected),
            "{case}: {problem}"
        );
    }

    let issuer = FakeIssuer::start(|_| {});
    let server = server_with_oidc(dir.path(), "server", &issuer);
    let forged = no_redirects()
        .get(server.url("/auth/oidc/callback?code=stolen&state=guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert!(forged.headers().contains_key(header::WWW_AUTHENTICATE));
    let problem: Value = forged.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no sign-in is in progress"),
        "{problem}"
    );
    // A login cookie from another login does not fit this callback's state.
    let client = no_redirects();
    let login = client
        .get(server.url("/auth/oidc/login"))
        .send()
        .await
        .unwrap();
    let pending = cookie(&login, "orchion_oidc").unwrap();
    let mismatched = client
        .get(server.url("/auth/oidc/callback?code=stolen&state=guess"))
        .header(header::COOKIE, pending)
        .send()
        .await
        .unwrap();
    assert_eq!(mismatched.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_a_provider_the_oidc_routes_say_it_is_not_configured() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["server"], &[]);
    // Open: asked without a token.
    let methods: Value = anonymous()
        .get(server.url("/api/v1/session/methods"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(methods.get("oidc").is_none(), "{methods}");
    let login = no_redirects()
        .get(server.url("/auth/oidc/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::NOT_FOUND);
}

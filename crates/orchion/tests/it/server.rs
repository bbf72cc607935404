//! The real binary, as a user runs it: `orchion dev` and `orchion server` over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::{Orchion, command, http};
use serde_json::{Value, json};

async fn create_project(server: &Orchion, name: &str) -> Value {
    let response = http()
        .post(server.url("/api/v1/projects"))
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_project_created_before_a_restart_is_there_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Orchion::start(dir.path(), &["dev"], &[]);
    let project = create_project(&first, "survivor").await;
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(30)).success());
    assert!(
        dir.path().join(".orchion/orchion.db").exists(),
        "dev keeps its data under ./.orchion"
    );

    let second = Orchion::start(dir.path(), &["dev"], &[]);
    let url = second.url(&format!(
        "/api/v1/projects/{}",
        project["id"].as_str().unwrap()
    ));
    let got: Value = http().get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, project);
}

#[tokio::test]
async fn sigkill_loses_nothing_that_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let first = Orchion::start(dir.path(), &["dev"], &[]);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(create_project(&first, &format!("p{i}")).await["id"].clone());
    }
    first.signal("KILL");
    drop(first);

    let second = Orchion::start(dir.path(), &["dev"], &[]);
    let page: Value = http()
        .get(second.url("/api/v1/projects?limit=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].clone())
        .filter(|id| id != "00000000-0000-7000-8000-000000000001")
        .collect();
    assert_eq!(
        listed, ids,
        "every acknowledged project, besides the default one"
    );
}

#[tokio::test]
async fn the_audit_log_keeps_every_acknowledged_change_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let first = Orchion::start(dir.path(), &["server"], &[]);
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            create_project(&first, &format!("audited-{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let refused = crate::common::anonymous()
        .post(first.url("/api/v1/projects"))
        .json(&serde_json::json!({"name": "nobody's"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // Killed at once after the last answer: what was acknowledged is in the log.
    first.signal("KILL");
    drop(first);

    let second = Orchion::start(dir.path(), &["server"], &[]);
    let page: Value = http()
        .get(second.url("/api/v1/audit?limit=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = page["items"].as_array().unwrap();
    for id in &ids {
        let mine: Vec<&Value> = entries
            .iter()
            .filter(|e| e["resource"].as_str().unwrap().contains(id.as_str()))
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "project {id} is in the log once: {entries:?}"
        );
        assert!(mine[0]["actor"].as_str().unwrap().starts_with("token:"));
        assert_eq!(mine[0]["route"], "/api/v1/projects");
        assert_eq!(mine[0]["status"], 201);
    }
    let anonymous: Vec<&Value> = entries
        .iter()
        .filter(|e| e["actor"] == "anonymous")
        .collect();
    assert_eq!(anonymous.len(), 1, "{entries:?}");
    assert_eq!(anonymous[0]["status"], 401);
}

#[tokio::test]
async fn enqueue_acts_in_its_configured_project_which_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Orchion::start(dir.path(), &["server"], &[]);
    let project = create_project(&first, "forwarding").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(30)).success());

    let missing = "0190aaaa-0000-7000-8000-000000000000";
    for (var, value) in [
        ("ORCHION_ENQUEUE__PROJECT", missing),
        ("ORCHION_WEBHOOKS__GITHUB__PROJECT", "not-an-id"),
    ] {
        let out = command(&[
            "server",
            "--http-port",
            "0",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ])
        .current_dir(dir.path())
        .env(var, value)
        .output()
        .unwrap();
        // The error is the server's last log line (stdout, JSON off a terminal).
        let stderr = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}: started anyway");
        let key = var
            .trim_start_matches("ORCHION_")
            .replace("__", ".")
            .to_lowercase();
        assert!(stderr.contains(&key), "{var}: {stderr}");
    }

    let server = Orchion::start(
        dir.path(),
        &["server"],
        &[("ORCHION_ENQUEUE__PROJECT", project.as_str())],
    );
    let accepted: Value = crate::common::anonymous()
        .post(server.url("/enqueue"))
        .json(&json!({"placeId": "p-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jobs = crate::common::get_json(&server, &format!("/api/v1/jobs?project_id={project}"))
        .await
        .unwrap();
    let jobs = jobs["items"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["name"], accepted["jobId"]);
    let audit = crate::common::get_json(&server, "/api/v1/audit?actor=enqueue")
        .await
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
}

#[tokio::test]
async fn sigterm_drains_then_exits_zero_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Orchion::start(
        dir.path(),
        &["server"],
        &[
            ("ORCHION_SERVER__DRAIN_DELAY", "3s"),
            ("ORCHION_SERVER__SHUTDOWN_GRACE", "5s"),
        ],
    );
    let client = http();
    assert_eq!(
        client
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let sent = Instant::now();
    server.signal("TERM");
    // During the drain delay the server still answers, and says it is not ready.
    let mut saw_draining = false;
    while sent.elapsed() < Duration::from_secs(2) {
        let response = client.get(server.url("/readyz")).send().await.unwrap();
        if response.status() == 503 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["reason"], "draining for shutdown");
            saw_draining = true;
            break;
        }
    }
    assert!(saw_draining, "/readyz never turned 503 after SIGTERM");
    assert_eq!(
        client
            .get(server.url("/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let status = server.wait(Duration::from_secs(8));
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        server.output()
    );
}

#[tokio::test]
async fn sigint_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Orchion::start(dir.path(), &["dev"], &[]);
    server.signal("INT");
    assert!(server.wait(Duration::from_secs(30)).success());
}

#[tokio::test]
async fn the_seed_port_variables_choose_the_port() {
    let dir = tempfile::tempdir().unwrap();
    // `--http-port 0` (a flag) overrides PORT, which is how Orchion::start finds a free port;
    // so check the seed variable through --print-config instead.
    let out = command(&["server", "--print-config"])
        .env("PORT", "9999")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("http_port = 9999"), "{printed}");
}

#[tokio::test]
async fn print_config_redacts_secrets() {
    let out = command(&[
        "server",
        "--print-config",
        "--database-url",
        "postgres://admin:s3cret@db:5432/orchion",
    ])
    .output()
    .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(
        printed.contains("postgres://admin:REDACTED@db:5432/orchion"),
        "{printed}"
    );
}

#[tokio::test]
async fn a_bad_config_file_exits_2_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orchion.toml");
    std::fs::write(&file, "[server]\nhttp_prot = 8080\n").unwrap();
    let out = command(&["server", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("http_prot"),
        "{stderr}"
    );

    let out = command(&["server"])
        .env("ORCHION_LOG", "info,=bad=")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ORCHION_LOG"));
}

#[tokio::test]
async fn an_unusable_secrets_key_stops_the_server_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "ORCHION_SECRETS__KEY",
            "c2hvcnQ=",
            "secrets.key: the secrets key must be 32 bytes; this one is 5",
        ),
        (
            "ORCHION_SECRETS__KEY_FILE",
            "/nonexistent/key",
            "cannot read secrets.key_file",
        ),
    ];
    for (var, value, expected) in cases {
        let out = command(&[
            "server",
            "--http-port",
            "0",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ])
        .env(var, value)
        .current_dir(dir.path())
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(1), "{var}={value}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(expected), "{var}={value}: {stderr}");
        assert!(!stderr.contains("c2hvcnQ"), "the key was printed: {stderr}");
    }
}

#[tokio::test]
async fn a_second_server_on_one_data_dir_is_refused_naming_the_lock_and_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = Orchion::start(dir.path(), &["server"], &[]);
    let out = command(&[
        "server",
        "--http-port",
        "0",
        "--port",
        "0",
        "--metrics-port",
        "0",
    ])
    .current_dir(dir.path())
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("process {} holds its lock", first.pid())),
        "{stderr}"
    );
    assert!(stderr.contains(".orchion/orchion.db.lock"), "{stderr}");
    // The first one still serves, on its own data.
    let health = http().get(first.url("/readyz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn an_unusable_admin_token_setting_stops_the_server_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "long-enough-admin-token-0123").unwrap();
    let file = file.to_str().unwrap();
    // (variable, value, whether the test harness's own admin token stays set, the message)
    let cases = [
        (
            "ORCHION_AUTH__ADMIN_TOKEN",
            "short",
            true,
            "at least 16 characters",
        ),
        (
            "ORCHION_AUTH__ADMIN_TOKEN_FILE",
            "/nonexistent/token",
            false,
            "cannot read auth.admin_token_file",
        ),
        ("ORCHION_AUTH__ADMIN_TOKEN_FILE", file, true, "not both"),
    ];
    for (var, value, keep_token, expected) in cases {
        let mut cmd = command(&[
            "server",
            "--http-port",
            "0",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ]);
        if !keep_token {
            cmd.env_remove("ORCHION_AUTH__ADMIN_TOKEN");
        }
        let out = cmd
            .env(var, value)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{var}={value}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(expected), "{var}={value}: {stderr}");
    }
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = command(&["server", "--http-port", &port])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_server_runs_on_postgres_and_keeps_data_across_restarts() {
    let Some(url) = orchion_testkit::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut first = Orchion::start(dir.path(), &["server", "--database-url", &url], &[]);
    let project = create_project(&first, "on postgres").await;
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(30)).success());
    assert!(
        !dir.path().join(".orchion/orchion.db").exists(),
        "no SQLite file when PostgreSQL is configured"
    );

    let second = Orchion::start(
        dir.path(),
        &["server"],
        &[("ORCHESTRATOR_DATABASE_URL", &url)],
    );
    let got: Value = http()
        .get(second.url(&format!(
            "/api/v1/projects/{}",
            project["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, project);
    let ready = http().get(second.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// A database migrated by a newer Orchion than this server: it refuses to start and says so.
#[tokio::test]
async fn a_database_from_a_newer_orchion_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Orchion::start(dir.path(), &["server"], &[]);
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(30)).success());
    // A migration this binary does not have, as a newer version would have applied it.
    let db = dir.path().join(".orchion/orchion.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
         VALUES (9999, 'from the future', CURRENT_TIMESTAMP, true, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let out = command(&[
        "server",
        "--http-port",
        "0",
        "--port",
        "0",
        "--metrics-port",
        "0",
    ])
    .current_dir(dir.path())
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("migrated by a newer Orchion"), "{stderr}");
    assert!(stderr.contains("9999"), "{stderr}");
}

/// A web page cannot use a loopback server: not by DNS rebinding (a foreign `Host`), not by a
/// cross-site request or WebSocket (a foreign `Origin`), not with a `text/plain` body.
#[tokio::test]
async fn a_foreign_host_or_origin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["server"], &[]);
    let port = server.addr.port();
    let status = |host: &'static str| {
        http()
            .get(server.url("/api/v1/status"))
            .header("Host", host.replace("PORT", &port.to_string()))
            .send()
    };
    assert_eq!(status("evil.example:PORT").await.unwrap().status(), 403);
    assert_eq!(status("localhost:PORT").await.unwrap().status(), 200);
    let refused = status("attacker.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("attacker.example"),
        "{body}"
    );

    let create = |origin: Option<String>| {
        let mut request = http()
            .post(server.url("/api/v1/projects"))
            .json(&json!({"name": "from a page"}));
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        request.send()
    };
    assert_eq!(
        create(Some("https://evil.example".into()))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(create(Some("null".into())).await.unwrap().status(), 403);
    let own = format!("http://127.0.0.1:{port}");
    assert_eq!(
        create(Some(own)).await.unwrap().status(),
        201,
        "its own pages"
    );
    assert_eq!(
        create(None).await.unwrap().status(),
        201,
        "clients that are not browsers"
    );

    let socket = http()
        .get(server.url("/api/v1/ws"))
        .header("Origin", "https://evil.example")
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(socket.status(), 403);

    let plain = http()
        .post(server.url("/enqueue"))
        .header("Content-Type", "text/plain")
        .body(r#"{"placeId": "abc"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400, "a text/plain body is no JSON body");

    let docs = http().get(server.url("/docs/")).send().await.unwrap();
    let policy = docs.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
}

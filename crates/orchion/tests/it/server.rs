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
        .collect();
    assert_eq!(listed, ids);
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

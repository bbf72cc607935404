//! Work that cannot be turned against the cluster, and input the server survives: each test is
//! one attack, made with real processes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    common::{Orchion, http},
    jobs::{submit, wait_job},
};

/// What a job's `env` printed: its output and its log lines, as `NAME=value` lines.
async fn printed(server: &Orchion, id: &str) -> String {
    let done = wait_job(server, id, "succeeded", Duration::from_secs(30)).await;
    let logs: Value = http()
        .get(server.url(&format!("/api/v1/jobs/{id}/logs")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut text = done["output"].as_str().unwrap_or_default().to_owned();
    for line in logs["lines"].as_array().unwrap() {
        text.push_str(line["line"].as_str().unwrap());
        text.push('\n');
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_dev_sees_neither_the_join_token_nor_the_servers_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Orchion::start(
        dir.path(),
        &["dev", "--inherit-env", "PASSED_ON"],
        &[
            ("ORCHION_CLUSTER__JOIN_TOKEN", "join-token-of-the-cluster"),
            ("GITHUB_WEBHOOK_SECRET", "secret-of-the-webhooks"),
            ("SERVER_ONLY", "a-variable-of-the-server"),
            ("PASSED_ON", "named-by-inherit-env"),
        ],
    );
    let join_token = server.wait_for_line("Join token", Duration::from_secs(10));
    assert!(
        join_token.ends_with("join-token-of-the-cluster"),
        "{join_token}"
    );
    let created = submit(
        &server,
        json!({"executor": "shell", "spec": {"command": "env", "env": {"OWN": "of-the-job"}}}),
    )
    .await;
    let seen = printed(&server, created["id"].as_str().unwrap()).await;
    for leaked in [
        "join-token-of-the-cluster",
        "secret-of-the-webhooks",
        "a-variable-of-the-server",
        crate::common::ADMIN_TOKEN,
        "ORCHION_AUTH",
        "ORCHION_LOG",
    ] {
        assert!(!seen.contains(leaked), "{leaked} reached the task:\n{seen}");
    }
    assert!(seen.contains("OWN=of-the-job"), "{seen}");
    assert!(seen.contains("PASSED_ON=named-by-inherit-env"), "{seen}");
    assert!(seen.contains("ORCHION_JOB_ID="), "{seen}");
    assert!(seen.contains("PATH="), "{seen}");
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_the_database_are_the_servers_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(".orchion");
    let files = ["orchion.db", "orchion.db-wal", "orchion.db-shm"];
    let check = |data: &std::path::Path| {
        assert_eq!(mode(data), 0o700, "the data directory");
        for file in files {
            assert_eq!(mode(&data.join(file)), 0o600, "{file}");
        }
        for file in ["admin-token", "join-token"] {
            if data.join(file).exists() {
                assert_eq!(mode(&data.join(file)), 0o600, "{file}");
            }
        }
    };
    let mut server = Orchion::start(dir.path(), &["server"], &[]);
    submit(&server, json!({"executor": "noop", "spec": {}})).await;
    check(&data);

    // An older version left them readable by everyone: the next start takes that back.
    server.signal("TERM");
    server.wait(Duration::from_secs(30));
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in files {
        let path = data.join(file);
        if !path.exists() {
            std::fs::write(&path, b"").unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = Orchion::start(dir.path(), &["server"], &[]);
    submit(&server, json!({"executor": "noop", "spec": {}})).await;
    check(&data);
}

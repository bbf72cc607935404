//! Deployments with real processes: `orchion dev` (server and agent) with the fake engine tools
//! first on the agent's `PATH`. Five resources in a diamond, one of which fails: what was
//! applied is destroyed in reverse dependency order, and the status says which failed and why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, time::Duration};

use crate::common::{Orchion, eventually, get_json, http};
use serde_json::{Value, json};

/// The fake tools (`orchion-fake-tool` from `orchion-engines`), linked as the real tools' names
/// in `dir`. Built here if this test runs without the rest of the workspace.
fn fake_tools(dir: &std::path::Path) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_orchion")).with_file_name("orchion-fake-tool");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "orchion-engines",
                "--bin",
                "orchion-fake-tool",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build the fake engine tools");
    }
    for tool in ["terraform", "helm", "pulumi", "kubectl"] {
        std::os::unix::fs::symlink(&bin, dir.join(tool)).unwrap();
    }
}

fn diamond(id: &str, fail: bool) -> Value {
    let app_values = if fail {
        json!({"//": "fail"})
    } else {
        json!({"db": "${{ resources.db.outputs.endpoint }}"})
    };
    json!({
        "id": id,
        "composer": "team-alpha",
        "environment": "production",
        "resources": [
            {"name": "network", "catalogRef": "vpc:1.0.0", "engine": "terraform",
             "config": {"resource": {"terraform_data": {"vpc": {}}}, "output": {"cidr": {"value": "10.0.0.0/16"}}}},
            {"name": "db", "catalogRef": "aws-rds-mysql:1.0.0", "engine": "terraform",
             "config": {"resource": {"terraform_data": {"db": {}}},
                        "output": {"endpoint": {"value": "db.internal:3306"}},
                        "locals": {"cidr": "${{ resources.network.outputs.cidr }}"}}},
            {"name": "cache", "catalogRef": "redis:7.0.0", "engine": "helm",
             "config": {"values": {"cidr": "${{ resources.network.outputs.cidr }}"}}},
            {"name": "app", "catalogRef": "k8s-deployment:2.1.0", "engine": "helm",
             "config": {"values": app_values}},
            {"name": "dns", "catalogRef": "dns-record:1.0.0", "engine": "pulumi",
             "config": {"outputs": {"fqdn": "app.example.com"}}},
        ],
        "dependencies": [
            {"from": "network", "to": "db"}, {"from": "network", "to": "cache"},
            {"from": "db", "to": "app"}, {"from": "cache", "to": "app"},
            {"from": "app", "to": "dns"},
        ],
    })
}

async fn finished(server: &Orchion, id: &str) -> Value {
    eventually(
        &format!("deployment {id} to finish"),
        Duration::from_secs(60),
        || async {
            let d = get_json(server, &format!("/api/v1/deployments/{id}")).await?;
            (d["phase"] == "complete").then_some(d)
        },
    )
    .await
}

fn statuses(deployment: &Value) -> Vec<(String, String)> {
    deployment["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resource_rolls_back_what_was_applied_in_reverse_order() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    fake_tools(&tools);
    let log = dir.path().join("calls.log");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The fake tools log their calls where ORCHION_FAKE_LOG says, which tasks get only because
    // the agent passes it on by name.
    let server = Orchion::start(
        dir.path(),
        &["dev", "--inherit-env", "ORCHION_FAKE_LOG"],
        &[
            ("PATH", path.as_str()),
            ("ORCHION_FAKE_LOG", log.to_str().unwrap()),
        ],
    );
    // The agent offers the engines whose tools it finds, once it has joined.
    eventually(
        "the engines to be healthy",
        Duration::from_secs(30),
        || async {
            let engines = get_json(&server, "/api/v1/engines").await?;
            (engines["items"][0]["health"] == "healthy" && engines["items"][2]["agents"] == 1)
                .then_some(())
        },
    )
    .await;

    let created = http()
        .post(server.url("/api/v1/deployments"))
        .json(&diamond("web-v1", true))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let done = finished(&server, "web-v1").await;
    assert_eq!(done["status"], "rolled_back", "{done:#}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.starts_with("resource `app` failed") && error.contains("UPGRADE FAILED"),
        "{error}"
    );
    assert_eq!(
        statuses(&done),
        [
            ("network".to_owned(), "rolled_back".to_owned()),
            ("db".to_owned(), "rolled_back".to_owned()),
            ("cache".to_owned(), "rolled_back".to_owned()),
            ("app".to_owned(), "failed".to_owned()),
            ("dns".to_owned(), "skipped".to_owned()),
        ]
    );
    // The order the tools saw: network applied first and destroyed last.
    let calls = std::fs::read_to_string(&log).unwrap();
    let position = |needle: &str| {
        calls
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in\n{calls}"))
    };
    let network_destroyed = calls
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("terraform destroy"))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    assert_eq!(network_destroyed.len(), 2, "network and db: {calls}");
    // helm is given its release (and chart) after `--`.
    assert!(
        position("helm uninstall --namespace production --wait -- web-v1-cache")
            < network_destroyed[1]
    );
    assert!(position("terraform apply") < position("-- web-v1-cache redis"));
    assert!(!calls.contains("pulumi up"), "dns never ran");

    // A deployment that succeeds, then is deleted: everything is destroyed.
    let created = http()
        .post(server.url("/api/v1/deployments"))
        .json(&diamond("web-v2", false))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let ready = finished(&server, "web-v2").await;
    assert_eq!(ready["status"], "ready", "{ready:#}");
    let db = &ready["resources"][1];
    assert_eq!(db["outputs"]["endpoint"], "db.internal:3306");
    assert_eq!(db["progress"], "100%");
    assert_eq!(ready["resources"][4]["outputs"]["fqdn"], "app.example.com");
    let deleted = http()
        .delete(server.url("/api/v1/deployments/web-v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202);
    let gone = finished(&server, "web-v2").await;
    assert_eq!(gone["status"], "rolled_back", "{gone:#}");
    assert!(
        statuses(&gone).iter().all(|(_, s)| s == "rolled_back"),
        "{gone:#}"
    );
}

#[test]
fn deployments_are_applied_followed_and_removed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    fake_tools(&tools);
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let server = Orchion::start(dir.path(), &["dev"], &[("PATH", path.as_str())]);
    let cli = |args: &[&str]| {
        crate::common::command(args)
            .env("ORCHION_ADDR", format!("http://{}", server.addr))
            .output()
            .unwrap()
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let file = dir.path().join("deployment.yaml");
    std::fs::write(
        &file,
        r#"
id: cli-v1
composer: team-beta
environment: staging
resources:
  - name: bucket
    catalogRef: s3-bucket:1.0.0
    engine: terraform
    config:
      resource: {terraform_data: {bucket: {}}}
      output: {name: {value: assets}}
"#,
    )
    .unwrap();
    let out = cli(&["deploy", "apply", "-f", file.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("bucket (terraform): ready"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("deployment ready"));
    let out = cli(&["deploy", "ls", "-o", "json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["items"][0]["id"], "cli-v1");
    let out = cli(&["deploy", "rm", "cli-v1", "--wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("rolled_back"),
        "{}",
        text(&out.stdout)
    );

    // A deployment that fails exits 1 and says which resource failed and why.
    std::fs::write(
        &file,
        r#"{"id": "cli-v2", "composer": "team-beta", "environment": "staging",
            "resources": [{"name": "web", "catalogRef": "chart:1", "engine": "helm",
                           "config": {"values": {"//": "fail"}}}]}"#,
    )
    .unwrap();
    let out = cli(&["deploy", "apply", "-f", file.to_str().unwrap(), "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("resource `web` failed"),
        "{}",
        text(&out.stderr)
    );
    // An unknown engine is refused before anything starts, naming the field.
    std::fs::write(
        &file,
        r#"{"id": "cli-v3", "composer": "c", "environment": "e",
            "resources": [{"name": "x", "catalogRef": "y:1", "engine": "ansible"}]}"#,
    )
    .unwrap();
    let out = cli(&["deploy", "apply", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/resources/0/engine: unknown engine `ansible`"),
        "{}",
        text(&out.stderr)
    );
}

//! The command-line client against a real server: output formats, exit codes, error lines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use crate::common::{Orchion, command};
use serde_json::Value;

fn orchion(server: &Orchion, args: &[&str]) -> Output {
    let addr = format!("http://{}", server.addr);
    command(args).env("ORCHION_ADDR", addr).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn projects_are_managed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);

    let out = orchion(
        &server,
        &[
            "project",
            "create",
            "--name",
            "CLI Project",
            "--type",
            "batch",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let created: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["type"], "batch");

    let out = orchion(&server, &["project", "get", &id, "-o", "yaml"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains(&format!("id: {id}")),
        "{}",
        stdout(&out)
    );

    let out = orchion(&server, &["project", "ls"]);
    assert!(out.status.success());
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("NAME") && lines[0].contains("STATUS"));
    assert!(
        lines[1].contains("default"),
        "the default project comes first"
    );
    assert!(
        lines[2].contains(&id) && lines[2].contains("CLI Project") && lines[2].contains("active")
    );

    let out = orchion(&server, &["project", "rm", &id]);
    assert!(out.status.success());
    assert!(
        stdout(&out).is_empty(),
        "data on stdout only: {}",
        stdout(&out)
    );

    let out = orchion(&server, &["project", "get", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[test]
fn ls_follows_every_page_with_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);
    for i in 0..5 {
        assert!(
            orchion(&server, &["project", "create", "--name", &format!("p{i}")])
                .status
                .success()
        );
    }
    let out = orchion(&server, &["project", "ls", "--limit", "2", "-o", "json"]);
    let page: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(page["next_cursor"].is_string());

    let out = orchion(
        &server,
        &["project", "ls", "--limit", "2", "--all", "-o", "json"],
    );
    let all: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        6,
        "the five made and the default project"
    );
}

#[test]
fn server_side_validation_errors_are_shown_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);
    let out = orchion(
        &server,
        &["project", "create", "--name", " ", "--type", "Bad Type"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("/name: name must not be empty"), "{err}");
    assert!(err.contains("/type: type `Bad Type` is invalid"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_unreachable_servers_exit_1() {
    let out = command(&["project", "create"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing --name is a usage error"
    );
    let out = command(&["project", "ls", "-o", "xml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = command(&["project", "ls", "--addr", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach Orchion"),
        "{}",
        stderr(&out)
    );

    let out = command(&["project", "ls", "--addr", "not a url"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--addr"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_managed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);
    // `orchion dev` runs a local agent; wait for it to join.
    let id = crate::common::eventually(
        "the local agent to join",
        std::time::Duration::from_secs(30),
        || async {
            let out = orchion(&server, &["node", "ls", "-o", "json"]);
            let list: Value = serde_json::from_str(&stdout(&out)).ok()?;
            list["items"][0]["id"].as_str().map(str::to_owned)
        },
    )
    .await;

    let out = orchion(&server, &["node", "ls"]);
    let table = stdout(&out);
    assert!(
        table.starts_with("ID") && table.contains("STATUS") && table.contains(&id),
        "{table}"
    );

    let out = orchion(&server, &["node", "get", &id, "-o", "yaml"]);
    assert!(stdout(&out).contains("status: ready"), "{}", stdout(&out));

    let out = orchion(&server, &["node", "drain", &id, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let drained: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(drained["status"], "draining");

    let out = orchion(
        &server,
        &["node", "ls", "--status", "draining", "-o", "json"],
    );
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let out = orchion(&server, &["node", "rm", &id]);
    assert!(out.status.success());
    let out = orchion(&server, &["node", "get", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not registered"), "{}", stderr(&out));

    let out = orchion(&server, &["node", "ls", "--status", "sleeping"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`sleeping` is not a node status"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn jobs_are_submitted_and_followed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);

    let out = orchion(
        &server,
        &[
            "job",
            "submit",
            "--wait",
            "-o",
            "json",
            "--",
            "sh",
            "-c",
            "echo from-the-job",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(job["status"], "succeeded");
    assert!(
        stderr(&out).contains("succeeded (attempt 1 of 3)"),
        "live progress: {}",
        stderr(&out)
    );
    let id = job["id"].as_str().unwrap();

    let out = orchion(&server, &["job", "logs", id]);
    assert_eq!(stdout(&out), "from-the-job\n");

    let out = orchion(
        &server,
        &[
            "job",
            "submit",
            "--wait",
            "--max-attempts",
            "1",
            "--",
            "false",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "a failed job fails the command");
    assert!(stdout(&out).contains("failed"), "{}", stdout(&out));

    let file = dir.path().join("job.yaml");
    std::fs::write(
        &file,
        "executor: shell\nspec:\n  command: sleep\n  args: [\"600\"]\n",
    )
    .unwrap();
    let out = orchion(
        &server,
        &["job", "submit", "-f", file.to_str().unwrap(), "-o", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let sleeper: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let sleeper_id = sleeper["id"].as_str().unwrap();
    let out = orchion(&server, &["job", "cancel", sleeper_id, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = orchion(&server, &["job", "ls"]);
    let table = stdout(&out);
    assert!(table.starts_with("ID") && table.contains(id), "{table}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "executor: cobol\nspec: {}\n").unwrap();
    let out = orchion(&server, &["job", "submit", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown executor `cobol`"),
        "{}",
        stderr(&out)
    );

    let out = orchion(&server, &["job", "submit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("give a command after `--`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn schedules_are_managed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);
    let out = orchion(
        &server,
        &[
            "schedule",
            "create",
            "--name",
            "hourly",
            "--cron",
            "@hourly",
            "--timezone",
            "Asia/Tokyo",
            "-o",
            "json",
            "--",
            "echo",
            "hi",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let schedule: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = schedule["id"].as_str().unwrap();
    assert_eq!(schedule["spec"]["command"], "echo");
    let out = orchion(&server, &["schedule", "ls"]);
    assert!(
        stdout(&out).contains(id) && stdout(&out).contains("Asia/Tokyo"),
        "{}",
        stdout(&out)
    );
    let out = orchion(
        &server,
        &[
            "schedule", "create", "--name", "x", "--cron", "nope", "--", "true",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cron `nope`"), "{}", stderr(&out));
    assert!(orchion(&server, &["schedule", "rm", id]).status.success());
    assert_eq!(
        orchion(&server, &["schedule", "rm", id]).status.code(),
        Some(1)
    );
}

#[test]
fn workflows_are_stored_started_and_followed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[]);
    let definition = dir.path().join("greet.yaml");
    std::fs::write(
        &definition,
        r#"
name: greet
steps:
  - name: hello
    executor: shell
    spec:
      command: sh
      args: ["-c", "echo hello \"$WHO\"; echo who=\"$WHO\" >> $ORCHION_OUTPUTS"]
      env: {WHO: "${{ input.who }}"}
  - name: shout
    needs: [hello]
    executor: shell
    spec:
      command: sh
      args: ["-c", "echo \"$GREETED\"! >&2; test \"$WHO\" != nobody"]
      env: {GREETED: "${{ steps.hello.outputs.who }}", WHO: "${{ input.who }}"}
"#,
    )
    .unwrap();
    let out = orchion(
        &server,
        &["workflow-type", "apply", "-f", definition.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("hello → shout"), "{}", stdout(&out));

    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"who": "world"}"#).unwrap();
    let at_input = format!("@{}", input.display());
    let out = orchion(
        &server,
        &["run", "start", "greet", "--input", &at_input, "--wait"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let progress = stderr(&out);
    assert!(
        progress.contains("hello: succeeded") && progress.contains("run succeeded"),
        "live per-step view: {progress}"
    );
    assert!(stdout(&out).contains("shout"), "{}", stdout(&out));

    let out = orchion(
        &server,
        &["run", "ls", "-o", "json", "--status", "succeeded"],
    );
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    let out = orchion(&server, &["run", "logs", &id]);
    assert_eq!(stdout(&out), "[hello] hello world\n");
    assert_eq!(stderr(&out), "[shout] world!\n");

    // A run that fails exits 1, and says which step failed.
    let out = orchion(
        &server,
        &[
            "run",
            "start",
            "greet",
            "--input",
            r#"{"who": "nobody"}"#,
            "--wait",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("shout: failed"), "{}", stderr(&out));
    assert!(stdout(&out).contains("exit status 1"), "{}", stdout(&out));

    let out = orchion(&server, &["run", "start", "greet", "--input", "{oops"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--input is not JSON"),
        "{}",
        stderr(&out)
    );
    let out = orchion(&server, &["run", "start", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("workflow type `nope` does not exist"),
        "{}",
        stderr(&out)
    );
}

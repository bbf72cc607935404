//! The executors against real processes and a real local HTTP server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nix::{sys::signal::killpg, unistd::Pid};
use orchion_executor::{Context, Outcome, OutputLine, Registry, validate};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn context(deadline: Option<Duration>) -> (Context, mpsc::Receiver<OutputLine>) {
    let (tx, rx) = mpsc::channel(1024);
    (
        Context {
            output: tx,
            cancel: CancellationToken::new(),
            deadline,
            inherited: std::sync::Arc::new(orchion_executor::inherited_env(&[])),
            egress: orchion_executor::Egress::allowing(&["127.0.0.1"]),
            env: [("ORCHION_JOB_ID".to_owned(), "job-1".to_owned())].into(),
            kill_grace: Duration::from_secs(2),
            fence: None,
            leaving: CancellationToken::new(),
        },
        rx,
    )
}

fn shell(command: &str, args: &[&str]) -> String {
    validate("shell", &json!({"command": command, "args": args})).unwrap()
}

async fn drain(mut rx: mpsc::Receiver<OutputLine>) -> Vec<(&'static str, String)> {
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push((line.stream, line.line));
    }
    lines
}

#[tokio::test]
async fn a_shell_command_streams_its_lines_and_keeps_stdout() {
    let registry = Registry::all();
    let (ctx, rx) = context(None);
    let spec = shell(
        "sh",
        &["-c", "echo one; echo two >&2; echo \"$ORCHION_JOB_ID\""],
    );
    let outcome = registry.get("shell").unwrap().run(&spec, ctx).await;
    assert_eq!(
        outcome,
        Outcome::Succeeded {
            output: Some("one\njob-1\n".into()),
            outputs: None,
        }
    );
    let lines = drain(rx).await;
    assert!(lines.contains(&("stdout", "one".into())));
    assert!(lines.contains(&("stderr", "two".into())));
    assert!(lines.contains(&("stdout", "job-1".into())));
}

#[tokio::test]
async fn a_failing_command_reports_its_exit_code() {
    let (ctx, _rx) = context(None);
    let outcome = Registry::all()
        .get("shell")
        .unwrap()
        .run(&shell("sh", &["-c", "exit 3"]), ctx)
        .await;
    assert!(
        matches!(
            outcome,
            Outcome::Failed {
                exit_code: Some(3),
                ..
            }
        ),
        "{outcome:?}"
    );
    let (ctx, _rx) = context(None);
    let outcome = Registry::all()
        .get("shell")
        .unwrap()
        .run(&shell("/no/such/program", &[]), ctx)
        .await;
    match outcome {
        Outcome::Failed {
            exit_code: None,
            error,
            ..
        } => assert!(error.contains("cannot start"), "{error}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn cancelling_kills_the_whole_process_group() {
    let (ctx, mut rx) = context(None);
    let cancel = ctx.cancel.clone();
    let spec = shell("sh", &["-c", "echo $$; sleep 600 & sleep 600 & wait"]);
    let run =
        tokio::spawn(async move { Registry::all().get("shell").unwrap().run(&spec, ctx).await });
    let first = rx.recv().await.unwrap();
    let group = Pid::from_raw(first.line.trim().parse().unwrap());
    assert_eq!(killpg(group, None), Ok(()), "the group is alive");
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
    // Killed processes may linger as zombies until init reaps them: count the living.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while live_in_group(group.as_raw()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "processes of the group outlived the grace"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Processes of group `pgid` that are not zombies, from /proc.
fn live_in_group(pgid: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            // After the command name: state, ppid, pgrp.
            fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z"
        })
        .count()
}

#[tokio::test]
async fn a_command_past_its_deadline_times_out() {
    let (ctx, _rx) = context(Some(Duration::from_millis(200)));
    let outcome = Registry::all()
        .get("shell")
        .unwrap()
        .run(&shell("sleep", &["30"]), ctx)
        .await;
    assert_eq!(outcome, Outcome::TimedOut);
}

#[tokio::test]
async fn http_requests_succeed_on_expected_statuses_only() {
    use axum::{Router, http::StatusCode, routing::get};
    let app = Router::new()
        .route("/ok", get(|| async { "hello" }))
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
        )
        .route(
            "/created",
            axum::routing::post(|body: String| async move { (StatusCode::CREATED, body) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = Registry::all().get("http").unwrap();

    let (ctx, _rx) = context(None);
    let spec = validate("http", &json!({"url": format!("http://{addr}/ok")})).unwrap();
    assert_eq!(
        http.run(&spec, ctx).await,
        Outcome::Succeeded {
            output: Some("hello".into()),
            outputs: Some(r#"{"body":"hello","status":200}"#.into()),
        }
    );

    let (ctx, _rx) = context(None);
    let spec = validate("http", &json!({"url": format!("http://{addr}/boom")})).unwrap();
    match http.run(&spec, ctx).await {
        Outcome::Failed { error, output, .. } => {
            assert!(error.contains("500"), "{error}");
            assert_eq!(output.as_deref(), Some("broken"));
        }
        other => panic!("{other:?}"),
    }

    let (ctx, _rx) = context(None);
    let spec = validate(
        "http",
        &json!({"method": "POST", "url": format!("http://{addr}/created"), "body": "{\"a\":1}", "expected_status": [201]}),
    )
    .unwrap();
    assert_eq!(
        http.run(&spec, ctx).await,
        Outcome::Succeeded {
            output: Some("{\"a\":1}".into()),
            outputs: Some(r#"{"body":{"a":1},"status":201}"#.into()),
        }
    );
}

#[test]
fn http_specs_are_checked() {
    let err = validate("http", &json!({"url": "ftp://example.com/x"})).unwrap_err();
    assert_eq!(err.0[0].pointer, "/spec/url");
    assert!(err.0[0].message.contains("ftp"));
    let err = validate(
        "http",
        &json!({"url": "http://x", "method": "NOT A METHOD", "timeout": "0s"}),
    )
    .unwrap_err();
    let pointers: Vec<&str> = err.0.iter().map(|e| e.pointer.as_str()).collect();
    assert_eq!(pointers, ["/spec/method", "/spec/timeout"]);
    let err = validate("http", &json!({"url": "not a url"})).unwrap_err();
    assert_eq!(err.0[0].pointer, "/spec/url");
}

#[tokio::test]
async fn huge_output_is_cut_never_held_whole() {
    // One 1 MiB line and 200,000 short ones.
    let script = "head -c 1048576 /dev/zero | tr '\\0' 'a'; echo; seq 1 200000";
    let (ctx, rx) = context(None);
    let run = tokio::spawn(async move {
        Registry::all()
            .get("shell")
            .unwrap()
            .run(&shell("sh", &["-c", script]), ctx)
            .await
    });
    let lines = drain(rx).await;
    let outcome = run.await.unwrap();
    let Outcome::Succeeded {
        output: Some(output),
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(
        output.len() <= orchion_executor::MAX_OUTPUT_TAIL,
        "{}",
        output.len()
    );
    assert!(
        output.ends_with("199999\n200000\n"),
        "the output keeps the tail"
    );
    assert!(lines[0].1.len() <= orchion_executor::MAX_LINE_BYTES);
    assert!(lines[0].1.ends_with("cut by orchion]"));
    assert_eq!(lines.len(), 200_001);
}

#[tokio::test]
async fn a_command_writes_outputs_to_the_outputs_file() {
    let shell_executor = Registry::all().get("shell").unwrap();
    let run = |script: &'static str| {
        let (ctx, _rx) = context(None);
        let spec = shell("sh", &["-c", script]);
        let executor = shell_executor.clone();
        async move { executor.run(&spec, ctx).await }
    };
    let outcome = run(
        "echo image=reg/app:1 >> \"$ORCHION_OUTPUTS\"; echo 'note=a=b' >> \"$ORCHION_OUTPUTS\"",
    )
    .await;
    assert_eq!(
        outcome,
        Outcome::Succeeded {
            output: None,
            outputs: Some(r#"{"image":"reg/app:1","note":"a=b"}"#.into()),
        }
    );
    let json = run(r#"echo '{"files": ["a.rs", "b.rs"], "n": 2}' > "$ORCHION_OUTPUTS""#).await;
    assert_eq!(
        json,
        Outcome::Succeeded {
            output: None,
            outputs: Some(r#"{"files":["a.rs","b.rs"],"n":2}"#.into()),
        }
    );
    match run("echo 'not a pair' > \"$ORCHION_OUTPUTS\"").await {
        Outcome::Failed { error, .. } => {
            assert_eq!(
                error,
                "line 1 of $ORCHION_OUTPUTS is not `key=value`: not a pair"
            );
        }
        other => panic!("{other:?}"),
    }
    // The file is gone afterwards.
    let (ctx, _rx) = context(None);
    let spec = shell("sh", &["-c", "echo \"$ORCHION_OUTPUTS\""]);
    let Outcome::Succeeded {
        output: Some(path), ..
    } = shell_executor.run(&spec, ctx).await
    else {
        panic!("the command failed");
    };
    assert!(!std::path::Path::new(path.trim()).exists());
}

#[tokio::test]
async fn noop_produces_the_outputs_its_spec_names() {
    let noop = Registry::all().get("noop").unwrap();
    let (ctx, _rx) = context(None);
    let spec = validate("noop", &json!({"outputs": {"image": "x"}})).unwrap();
    assert_eq!(
        noop.run(&spec, ctx).await,
        Outcome::Succeeded {
            output: None,
            outputs: Some(r#"{"image":"x"}"#.into()),
        }
    );
}

/// The variables a command sees, from its `env` output.
fn variables(output: &str) -> std::collections::BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn a_command_gets_only_its_own_environment() {
    // Cargo runs tests with CARGO_MANIFEST_DIR set: a variable of the agent's environment.
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    let shell_executor = Registry::all().get("shell").unwrap();
    let spec = validate(
        "shell",
        &json!({"command": "env", "env": {"GREETING": "hello", "LANG": "C"}}),
    )
    .unwrap();
    let (ctx, _rx) = context(None);
    let Outcome::Succeeded {
        output: Some(output),
        ..
    } = shell_executor.run(&spec, ctx).await
    else {
        panic!("env failed");
    };
    let seen = variables(&output);
    let names: Vec<&str> = seen.keys().map(String::as_str).collect();
    let mut expected = vec![
        "GREETING",
        "LANG",
        "ORCHION_JOB_ID",
        "ORCHION_OUTPUTS",
        "ORCHION_TASK_DIR",
        "PATH",
        "TMPDIR",
    ];
    if std::env::var("HOME").is_ok() {
        expected.push("HOME");
        expected.sort_unstable();
    }
    assert_eq!(names, expected, "{output}");
    // The spec's env overrides what is inherited; Orchion's own variables are its own.
    assert_eq!(seen["LANG"], "C");
    assert_eq!(seen["ORCHION_JOB_ID"], "job-1");
    assert_eq!(seen["PATH"], std::env::var("PATH").unwrap());

    // A variable the agent passes through by name (`--inherit-env`).
    let (mut ctx, _rx) = context(None);
    ctx.inherited = std::sync::Arc::new(orchion_executor::inherited_env(&[
        "CARGO_MANIFEST_DIR".to_owned(),
        "ORCHION_NOT_SET_ANYWHERE".to_owned(),
    ]));
    let Outcome::Succeeded {
        output: Some(output),
        ..
    } = shell_executor.run(&spec, ctx).await
    else {
        panic!("env failed");
    };
    let seen = variables(&output);
    assert_eq!(
        seen.get("CARGO_MANIFEST_DIR"),
        Some(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
    );
    assert!(!seen.contains_key("ORCHION_NOT_SET_ANYWHERE"));
}

#[tokio::test]
async fn each_attempt_gets_a_private_directory_removed_afterwards() {
    let shell_executor = Registry::all().get("shell").unwrap();
    let script = "stat -c %a \"$ORCHION_TASK_DIR\"; pwd; echo \"$TMPDIR\"; dirname \"$ORCHION_OUTPUTS\"; \
                  touch \"$TMPDIR/scratch\"";
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let (ctx, _rx) = context(None);
        let Outcome::Succeeded {
            output: Some(output),
            ..
        } = shell_executor.run(&shell("sh", &["-c", script]), ctx).await
        else {
            panic!("the command failed");
        };
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines[0], "700", "{output}");
        // It runs in its directory, which is also its TMPDIR and holds its outputs file.
        assert_eq!(lines[1], lines[2]);
        assert_eq!(lines[2], lines[3]);
        let dir = std::path::PathBuf::from(lines[1]);
        assert!(
            dir.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("orchion-task-")
        );
        assert!(!dir.exists(), "{} is left behind", dir.display());
        dirs.push(dir);
    }
    assert_ne!(dirs[0], dirs[1]);
}

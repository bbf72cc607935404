//! Work that cannot be turned against the cluster, and input the server survives: each test is
//! one attack, made with real processes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    common::{Orchion, http},
    jobs::{logs, submit, wait_job},
};

/// What a job's `env` printed: its output and its log lines, as `NAME=value` lines.
async fn printed(server: &Orchion, id: &str) -> String {
    let done = wait_job(server, id, "succeeded", Duration::from_secs(30)).await;
    let logs = logs(server, id).await;
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

/// Whether the server closed `stream` (it reads end of file, or a reset), waiting at most
/// `limit`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_requests_are_closed_and_livez_stays_fast() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(
        dir.path(),
        &["server"],
        &[("ORCHION_SERVER__HEADER_READ_TIMEOUT", "2s")],
    );
    // 1,200 clients that send half a request and then nothing (slowloris).
    let mut half_open = Vec::new();
    for _ in 0..1200 {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        half_open.push(stream);
    }
    let started = std::time::Instant::now();
    let live = http().get(server.url("/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "/livez took {:?} beside 1,200 half-open requests",
        started.elapsed()
    );
    // Past server.header_read_timeout the server has closed every one of them.
    for stream in &mut half_open[..20] {
        assert!(closed_by_server(stream, Duration::from_secs(15)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(
        dir.path(),
        &["server"],
        &[
            ("ORCHION_SERVER__MAX_CONNECTIONS", "8"),
            ("ORCHION_SERVER__IDLE_TIMEOUT", "5s"),
        ],
    );
    // Eight connections, each answered once (so the server has taken every one), then idle.
    let mut held = Vec::new();
    for _ in 0..8 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut ninth = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_by_server(&mut ninth, Duration::from_secs(2)).await,
        "the ninth connection was served"
    );
    // Idle, the eight are closed after server.idle_timeout, and the server serves again.
    for stream in &mut held {
        assert!(closed_by_server(stream, Duration::from_secs(30)).await);
    }
    let live = http().get(server.url("/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_too_slowly_is_answered_503_within_the_request_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(
        dir.path(),
        &["server"],
        &[("ORCHION_SERVER__REQUEST_TIMEOUT", "1s")],
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"executor\"",
        crate::common::ADMIN_TOKEN
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("server.request_timeout") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a body that never arrives");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("server.request_timeout"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_logs_count_with_event_streams_and_one_client_gets_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(
        dir.path(),
        &["dev"],
        &[
            ("ORCHION_SERVER__MAX_EVENT_STREAMS", "3"),
            ("ORCHION_SERVER__MAX_EVENT_STREAMS_PER_CLIENT", "2"),
        ],
    );
    let created = submit(
        &server,
        json!({"executor": "shell", "spec": {"command": "sleep", "args": ["30"]}}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let follow = || {
        http()
            .get(server.url(&format!("/api/v1/jobs/{id}/logs?follow=true")))
            .send()
    };
    let events = || http().get(server.url("/api/v1/events")).send();
    let first = follow().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = events().await.unwrap();
    assert_eq!(second.status(), 200);
    // A third stream from this client: over its share.
    let third = events().await.unwrap();
    assert_eq!(third.status(), 429, "{:?}", third.text().await);
    let third = follow().await.unwrap();
    assert_eq!(third.status(), 429);
    let problem: Value = third.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("max_event_streams_per_client"),
        "{problem}"
    );
    // Closing one gives the place back.
    drop(first);
    crate::common::eventually("a place to be free", Duration::from_secs(10), || async {
        (follow().await.ok()?.status() == 200).then_some(())
    })
    .await;
}

/// Serves, on `127.0.0.2`, a redirect to `to` at `/redirect` and 64 MiB at `/huge`.
async fn redirector(to: String) -> std::net::SocketAddr {
    use axum::{Router, response::Redirect, routing::get};
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route(
            "/redirect",
            get(move || async move { Redirect::temporary(&to) }),
        )
        .route(
            "/huge",
            get(|| async {
                let chunk = axum::body::Bytes::from(vec![b'x'; 1 << 20]);
                let chunks = futures::stream::iter(
                    (0..64).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                axum::body::Body::from_stream(chunks)
            }),
        )
        .route("/ok", get(|| async { "fine" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The job, once it has ended.
async fn ended(server: &Orchion, id: &str) -> Value {
    crate::common::eventually(
        &format!("job {id} to end"),
        Duration::from_secs(30),
        || async {
            let job = crate::jobs::job(server, id).await;
            matches!(job["status"].as_str(), Some("failed" | "succeeded")).then_some(job)
        },
    )
    .await
}

/// The error of an `http` job to `url`, which must fail.
async fn failed_with(server: &Orchion, url: &str) -> String {
    let created = submit(
        server,
        json!({"executor": "http", "spec": {"url": url}, "retry": {"max_attempts": 1}}),
    )
    .await;
    let done = ended(server, created["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    done["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tasks_reach_only_what_egress_allows_and_read_bodies_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(
        dir.path(),
        &["dev"],
        &[("ORCHION_EGRESS__ALLOW", "[\"127.0.0.2\"]")],
    );
    // The server's own API and its metrics, on loopback: never allowed here.
    let own = server.url("/livez");
    let error = failed_with(&server, &own).await;
    assert!(
        error.contains("egress refused") && error.contains("loopback"),
        "{error}"
    );
    let by_name = own.replace("127.0.0.1", "localhost");
    let error = failed_with(&server, &by_name).await;
    assert!(error.contains("egress refused for `localhost`"), "{error}");
    let metadata = failed_with(&server, "http://169.254.169.254/latest/meta-data/").await;
    assert!(metadata.contains("link-local"), "{metadata}");

    // An allowed host that redirects to a refused one: refused at the redirect.
    let redirect = redirector(own.clone()).await;
    let error = failed_with(&server, &format!("http://{redirect}/redirect")).await;
    assert!(error.contains("egress refused for the redirect"), "{error}");

    // The allowed host itself is reached, and a huge body is read only as far as the cap.
    let ok = submit(
        &server,
        json!({"executor": "http", "spec": {"url": format!("http://{redirect}/ok")}}),
    )
    .await;
    let ok = wait_job(
        &server,
        ok["id"].as_str().unwrap(),
        "succeeded",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(ok["output"], "fine");
    let huge = submit(
        &server,
        json!({"executor": "http", "spec": {"url": format!("http://{redirect}/huge")}}),
    )
    .await;
    let id = huge["id"].as_str().unwrap();
    let done = ended(&server, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let logs = logs(&server, id).await;
    assert!(
        logs["lines"].as_array().unwrap().iter().any(|l| l["line"]
            .as_str()
            .unwrap()
            .contains("the rest was not read")),
        "{logs}"
    );
}

/// The value of the secret the secrets test sets: it may reach its tasks and nothing else.
const SECRET_VALUE: &str = "pa55-w0rd-of-the-db";

/// `orchion secret <args>` against `server`, with `stdin` as its input.
fn secret_cli(server: &Orchion, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut all = vec!["secret"];
    all.extend(args);
    let mut child = crate::common::command(&all)
        .env("ORCHION_ADDR", format!("http://{}", server.addr))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_its_tasks_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["dev"], &[("ORCHION_LOG", "debug")]);
    let set = secret_cli(
        &server,
        &["set", "DB_PASSWORD"],
        &format!("{SECRET_VALUE}\n"),
    );
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );

    // The task gets the value (its bytes, printed as hex, are the value's); everything it
    // reports has it masked.
    let script = "printf %s \"$PW\" | od -An -tx1 | tr -d ' \\n'; echo; echo \"pw=$PW\"; \
                  echo \"leak=$PW\" >> \"$ORCHION_OUTPUTS\"";
    let env = json!({"PW": {"secret": "DB_PASSWORD"}, "PLAIN": "literal-of-the-job"});
    let made = submit(
        &server,
        json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", script], "env": env}}),
    )
    .await;
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(made["spec"]["env"]["PW"], json!({"secret": "DB_PASSWORD"}));
    assert_eq!(made["spec"]["env"]["PLAIN"], "REDACTED");
    let seen = printed(&server, &id).await;
    assert!(
        seen.contains(&hex(SECRET_VALUE)),
        "the task got another value:\n{seen}"
    );
    assert!(seen.contains("pw=***"), "{seen}");
    assert!(!seen.contains(SECRET_VALUE), "{seen}");

    // A failure's error and output are masked too.
    let failing = submit(
        &server,
        json!({"executor": "shell", "retry": {"max_attempts": 1}, "spec": {"command": "sh",
               "args": ["-c", "echo \"$PW\" >&2; echo \"$PW\"; exit 3"], "env": env}}),
    )
    .await;
    let failed = wait_job(
        &server,
        failing["id"].as_str().unwrap(),
        "failed",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        failed["output"].as_str().unwrap().contains("***"),
        "{failed}"
    );
    assert!(!failed.to_string().contains(SECRET_VALUE), "{failed}");

    // A workflow step's outputs are masked.
    let stored = http()
        .post(server.url("/api/v1/workflow-types"))
        .json(
            &json!({"name": "uses-secret", "steps": [{"name": "a", "executor": "shell",
            "spec": {"command": "sh", "args": ["-c", "echo \"pw=$PW\" >> \"$ORCHION_OUTPUTS\""],
                     "env": {"PW": {"secret": "DB_PASSWORD"}}}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201, "{:?}", stored.text().await);
    let run: Value = http()
        .post(server.url("/api/v1/workflows"))
        .json(&json!({"type": "uses-secret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = run["id"].as_str().unwrap().to_owned();
    let done = crate::common::eventually("the run to succeed", Duration::from_secs(30), || async {
        let run = crate::common::get_json(&server, &format!("/api/v1/workflows/{run_id}")).await?;
        (run["status"] == "succeeded").then_some(run)
    })
    .await;
    assert_eq!(
        done["steps"][0]["tasks"][0]["outputs"]["pw"], "***",
        "{done}"
    );

    // Listed by name, never by value.
    let listed = secret_cli(&server, &["ls", "-o", "json"], "");
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("\"DB_PASSWORD\""), "{listed}");
    assert!(!listed.contains(SECRET_VALUE), "{listed}");

    // A job waiting to run when its secret is removed fails naming it.
    let run_at = orchion_store::now() + Duration::from_secs(3);
    let later = submit(
        &server,
        json!({"executor": "shell", "retry": {"max_attempts": 1},
               "run_at": run_at.format(&time::format_description::well_known::Rfc3339).unwrap(),
               "spec": {"command": "true", "env": env}}),
    )
    .await;
    let removed = secret_cli(&server, &["rm", "DB_PASSWORD"], "");
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let orphan = wait_job(
        &server,
        later["id"].as_str().unwrap(),
        "failed",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        orphan["error"]
            .as_str()
            .unwrap()
            .contains("`DB_PASSWORD` does not exist"),
        "{orphan}"
    );
    // And one made now is refused.
    let refused = http()
        .post(server.url("/api/v1/jobs"))
        .json(&json!({"executor": "shell", "spec": {"command": "true", "env": env}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);

    // Nowhere outside the task: not in the server's log (at debug), not in any file of the data
    // directory (the database, its log, the events and task logs in it).
    assert!(
        !server.output().contains(SECRET_VALUE),
        "the server logged the value"
    );
    for entry in std::fs::read_dir(dir.path().join(".orchion")).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes
                .windows(SECRET_VALUE.len())
                .any(|w| w == SECRET_VALUE.as_bytes()),
            "{} holds the value",
            path.display()
        );
    }
}

//! The live event log against a real server: SSE resumed with `Last-Event-ID` after a
//! disconnect gets exactly what it missed; filters; bad parameters; the stream limit; WebSocket;
//! and streams that end on shutdown instead of holding it up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::{Orchion, http};
use futures::StreamExt;
use serde_json::{Value, json};

/// An open SSE response, read event by event.
pub(crate) struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(server: &Orchion, query: &str, last_event_id: Option<i64>) -> reqwest::Response {
        let mut request = http().get(server.url(&format!("/api/v1/events{query}")));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        request.send().await.unwrap()
    }

    pub(crate) async fn connect(server: &Orchion, query: &str, last_event_id: Option<i64>) -> Sse {
        let response = Sse::open(server, query, last_event_id).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's `(id, data)`; keep-alive comments are skipped.
    pub(crate) async fn next(&mut self) -> (i64, Value) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut id = None;
                    let mut data = None;
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            id = v.parse().ok();
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data = serde_json::from_str(v).ok();
                        }
                    }
                    if let (Some(id), Some(data)) = (id, data) {
                        return (id, data);
                    }
                    continue;
                }
                let chunk = self
                    .response
                    .chunk()
                    .await
                    .unwrap()
                    .expect("the stream stays open");
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .expect("an event within 10s")
    }
}

pub(crate) async fn create_project(server: &Orchion, name: &str) -> String {
    let response = http()
        .post(server.url("/api/v1/projects"))
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_gets_exactly_the_missed_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["server"], &[]);
    let mut stream = Sse::connect(&server, "?kind=project.*", None).await;
    create_project(&server, "p1").await;
    create_project(&server, "p2").await;
    let (first, event) = stream.next().await;
    assert_eq!(event["kind"], "project.created");
    assert_eq!(event["data"]["name"], "p1");
    assert_eq!(event["seq"], first);
    let (second, _) = stream.next().await;
    assert!(second > first);
    drop(stream);

    // Missed while disconnected.
    let missed: Vec<String> = [
        create_project(&server, "p3").await,
        create_project(&server, "p4").await,
    ]
    .into();
    let mut resumed = Sse::connect(&server, "?kind=project.*", Some(second)).await;
    let (a, e3) = resumed.next().await;
    let (b, e4) = resumed.next().await;
    assert!(second < a && a < b);
    assert_eq!(
        [
            e3["subject"].as_str().unwrap(),
            e4["subject"].as_str().unwrap()
        ],
        [missed[0].as_str(), missed[1].as_str()]
    );
    // And then live ones, with nothing repeated.
    let live = create_project(&server, "p5").await;
    let (c, e5) = resumed.next().await;
    assert!(c > b);
    assert_eq!(e5["subject"], live);

    // From the start of the log: every event, in order.
    let mut all = Sse::connect(&server, "?after=0&kind=project.created", None).await;
    let mut names = Vec::new();
    for _ in 0..5 {
        names.push(
            all.next().await.1["data"]["name"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(names, ["p1", "p2", "p3", "p4", "p5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_pick_events_and_bad_parameters_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["server"], &[]);
    let a = create_project(&server, "a").await;
    let b = create_project(&server, "b").await;
    let mut only_b = Sse::connect(&server, &format!("?after=0&project={b}"), None).await;
    let (_, event) = only_b.next().await;
    assert_eq!(event["subject"], b);
    assert_ne!(event["subject"], a);

    for (query, header, name) in [
        ("?colour=red", None, "colour"),
        ("?kind=project.exploded", None, "kind"),
        ("?kind=nothing.*", None, "kind"),
        ("?run=not-an-id", None, "run"),
        ("?after=-1", None, "after"),
        ("?after=999999", None, "after"),
        ("", Some("abc"), "Last-Event-ID"),
        ("", Some("999999"), "Last-Event-ID"),
    ] {
        let mut request = http().get(server.url(&format!("/api/v1/events{query}")));
        if let Some(value) = header {
            request = request.header("Last-Event-ID", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{query} {header:?}");
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(name),
            "{name} in {problem}"
        );
    }
    let ahead = http()
        .get(server.url("/api/v1/events"))
        .header("Last-Event-ID", "999999")
        .send()
        .await
        .unwrap();
    let problem: Value = ahead.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("ahead of the event log"),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(
        dir.path(),
        &["server"],
        &[("ORCHION_SERVER__MAX_EVENT_STREAMS", "2")],
    );
    let first = Sse::connect(&server, "", None).await;
    let _second = Sse::connect(&server, "", None).await;
    let refused = Sse::open(&server, "", None).await;
    assert_eq!(refused.status(), 503);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("max_event_streams"),
        "{problem}"
    );
    // A closed stream frees its place.
    drop(first);
    let started = Instant::now();
    loop {
        let response = Sse::open(&server, "", None).await;
        if response.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the place is freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = http().get(server.url("/livez")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

/// A WebSocket handshake signed in as the test admin.
fn ws_request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", crate::common::ADMIN_TOKEN)
            .parse()
            .unwrap(),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_carries_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = Orchion::start(dir.path(), &["server"], &[]);
    let url = format!("ws://{}/api/v1/ws?kind=project.created", server.addr);
    let anonymous = tokio_tungstenite::connect_async(url.clone()).await;
    assert!(anonymous.is_err(), "a WebSocket without a token is refused");
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_request(&url))
        .await
        .unwrap();
    let id = create_project(&server, "over-ws").await;
    let message = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await.unwrap().unwrap() {
                tokio_tungstenite::tungstenite::Message::Text(text) => {
                    return serde_json::from_str::<Value>(&text).unwrap();
                }
                _ => continue,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(message["kind"], "project.created");
    assert_eq!(message["subject"], id);
    socket.close(None).await.unwrap();
    let bad = tokio_tungstenite::connect_async(ws_request(&format!(
        "ws://{}/api/v1/ws?kind=bogus",
        server.addr
    )))
    .await;
    assert!(bad.is_err(), "a bad filter is refused before the upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_do_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Orchion::start(dir.path(), &["server"], &[]);
    let mut stream = Sse::connect(&server, "", None).await;
    let started = Instant::now();
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20));
    assert!(status.success(), "{}", server.output());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.response.chunk()).await;
    assert!(
        matches!(end, Ok(Ok(None)) | Ok(Err(_))),
        "the stream ended: {end:?}"
    );
}

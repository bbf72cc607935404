//! One trace from the API request to the task's process: a real server and agent export spans
//! over OTLP/HTTP to a collector the test runs, and the task's process gets `TRACEPARENT`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::{Orchion, TOKEN, eventually, free_port, get_json, post_json};
use axum::{Router, body::Bytes, extract::State, routing::post};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

/// A span as the collector got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

type Spans = Arc<Mutex<Vec<Received>>>;

async fn collect(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.lock().unwrap().push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
    }
    ""
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_trace_from_the_request_to_its_process() {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let port = grpc.to_string();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let server = Orchion::start(
        dir.path(),
        &["server", "--port", &port, "--join-token", TOKEN],
        &otel,
    );
    let state = dir.path().join("worker");
    let _agent = Orchion::spawn(
        dir.path(),
        &[
            "agent",
            "--server",
            &format!("http://127.0.0.1:{grpc}"),
            "--join-token",
            TOKEN,
            "--name",
            "worker",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &otel,
    );
    let job = post_json(
        &server,
        "/api/v1/jobs",
        json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", "printf %s \"$TRACEPARENT\""]}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let done = eventually("the job to succeed", Duration::from_secs(30), || async {
        let j = get_json(&server, &format!("/api/v1/jobs/{id}")).await?;
        (j["status"] == "succeeded").then_some(j)
    })
    .await;
    let traceparent = done["output"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {traceparent}");
    let (trace_id, task_span) = (parts[1].to_owned(), parts[2].to_owned());

    let (request, task) = eventually(
        "the server's request span and the agent's task span",
        Duration::from_secs(30),
        || async {
            let spans = spans.lock().unwrap().clone();
            let in_trace: Vec<&Received> =
                spans.iter().filter(|s| s.trace_id == trace_id).collect();
            let request = in_trace.iter().find(|s| {
                s.name == "http" && s.service.contains("orchion") && !s.service.contains("agent")
            })?;
            let task = in_trace
                .iter()
                .find(|s| s.name == "task" && s.service.contains("orchion-agent"))?;
            Some(((*request).clone(), (*task).clone()))
        },
    )
    .await;
    assert_eq!(
        task.parent_span_id, request.span_id,
        "the task continues the request that created it"
    );
    assert_eq!(
        task.span_id, task_span,
        "the process's TRACEPARENT is the task's span"
    );

    // A workflow run's steps join the trace of the request that started the run.
    post_json(
        &server,
        "/api/v1/workflow-types",
        json!({"name": "traced", "steps": [
            {"name": "first", "executor": "noop", "spec": {}},
            {"name": "second", "needs": ["first"], "executor": "shell",
             "spec": {"command": "sh", "args": ["-c", "printf %s \"$TRACEPARENT\""]}}
        ]}),
    )
    .await;
    let run = post_json(&server, "/api/v1/workflows", json!({"type": "traced"})).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    let done = eventually("the run to succeed", Duration::from_secs(30), || async {
        let r = get_json(&server, &format!("/api/v1/workflows/{run_id}")).await?;
        (r["status"] == "succeeded").then_some(r)
    })
    .await;
    let step_parent = done["steps"][1]["tasks"][0]["output"]
        .as_str()
        .unwrap()
        .to_owned();
    let step_trace = step_parent.split('-').nth(1).unwrap().to_owned();
    assert_ne!(step_trace, trace_id, "a run is a trace of its own");
    eventually(
        "the request that started the run to be in the step's trace",
        Duration::from_secs(30),
        || async {
            let spans = spans.lock().unwrap().clone();
            spans
                .iter()
                .any(|s| s.trace_id == step_trace && s.name == "http")
                .then_some(())
        },
    )
    .await;
}

//! The example workflows in `examples/workflows/` — the workflow service's five workflow types —
//! run end to end on a real server and agent, against a local HTTP service that plays the
//! services they call (Intent Processor, Agent Manager, SCM, analyzers, CI, deployer) and
//! records every request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::{Orchion, eventually, get_json, http};
use axum::{
    Json, Router,
    extract::{Request, State},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// One request the fake services received.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Services {
    calls: Arc<Mutex<Vec<Call>>>,
    base: Arc<Mutex<String>>,
}

impl Services {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn called(&self, method: Method, path: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.path == path)
            .map(|c| c.body)
            .collect()
    }
}

/// What each fake endpoint answers.
async fn answer(State(services): State<Services>, request: Request) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let path = uri.path().to_owned();
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    services.calls.lock().unwrap().push(Call {
        method: method.clone(),
        path: format!(
            "{path}{}",
            uri.query().map(|q| format!("?{q}")).unwrap_or_default()
        ),
        body: body.clone(),
    });
    let base = services.base.lock().unwrap().clone();
    let ok = |value: Value| Json(value).into_response();
    match (method.as_str(), path.as_str()) {
        // Intent Processor and agents.
        ("POST", "/intent/v1/intents/analyze") => {
            ok(json!({"kind": "api", "intent": body["intent"]}))
        }
        ("POST", "/intent/v1/plans") => ok(json!({"steps": [
            {"id": 1, "action": "scaffold", "kind": body["analysis"]["kind"]},
            {"id": 2, "action": "implement"},
            {"id": 3, "action": "test"},
        ]})),
        ("POST", "/agents/v1/execute") => ok(json!({"step": body["step"]["id"], "status": "done"})),
        ("POST", "/intent/v1/results") => ok(json!({"ok": true})),
        // Agent Manager and one agent.
        ("GET", "/agents/v1/agents/select") => {
            ok(json!({"id": "agent-7", "url": format!("{base}/agent-7")}))
        }
        ("POST", "/agent-7/v1/environments") => {
            (StatusCode::CREATED, Json(json!({"id": "env-1"}))).into_response()
        }
        ("POST", "/agent-7/v1/environments/env-1/execute") => {
            ok(json!({"exit_code": 0, "stdout": "42\nok\n"}))
        }
        ("DELETE", "/agent-7/v1/environments/env-1") => StatusCode::NO_CONTENT.into_response(),
        // Source control.
        ("GET", "/scm/v1/repos/acme/shop/archive") => {
            ok(json!({"archive": "shop-main.tar", "files": 12}))
        }
        ("GET", "/scm/v1/repos/acme/shop/pulls/42/changes") => {
            ok(json!({"diff": "+fn main() {}", "file_count": 1}))
        }
        ("POST", "/scm/v1/repos/acme/shop/pulls/42/comments") => {
            (StatusCode::CREATED, Json(json!({"id": 99}))).into_response()
        }
        // Analyzers, reports, AI reviewer.
        ("POST", "/analysis/v1/static") => ok(json!({"findings": 3})),
        ("POST", "/analysis/v1/security") => ok(json!({"findings": 1})),
        ("POST", "/analysis/v1/performance") => ok(json!({"findings": 0})),
        ("POST", "/reports/v1/reports") => ok(json!({"report_id": "r-1"})),
        ("POST", "/ai/v1/reviews") => ok(json!({"comments": ["main is empty"]})),
        ("POST", "/ai/v1/summaries") => ok(
            json!({"summary": format!("{} comment(s)", body["comments"].as_array().map_or(0, Vec::len))}),
        ),
        // Build, CI, deployer.
        ("POST", "/deployer/v1/validate") => ok(json!({"valid": true})),
        ("POST", "/builder/v1/builds") => ok(
            json!({"artifact": format!("{}-{}.tar", body["app"].as_str().unwrap_or(""), body["version"].as_str().unwrap_or(""))}),
        ),
        ("POST", "/ci/v1/test-runs") | ("POST", "/ci/v1/smoke-tests") => {
            ok(json!({"passed": true}))
        }
        ("POST", "/deployer/v1/deployments") => ok(json!({
            "id": format!("dep-{}", body["environment"].as_str().unwrap_or("")),
            "url": format!("{base}/{}", body["environment"].as_str().unwrap_or("")),
        })),
        ("GET", "/deployer/v1/deployments/dep-production/health") => ok(json!({"healthy": true})),
        _ => (
            StatusCode::NOT_FOUND,
            format!("no fake for {method} {path}"),
        )
            .into_response(),
    }
}

async fn fake_services() -> (Services, String) {
    let services = Services::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *services.base.lock().unwrap() = base.clone();
    let app = Router::new().fallback(answer).with_state(services.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (services, base)
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/workflows")
        .join(format!("{name}.yaml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Stores the example, runs it with `input`, and returns the finished run.
async fn run_example(server: &Orchion, name: &str, input: Value) -> Value {
    let stored = http()
        .post(server.url("/api/v1/workflow-types"))
        .header("content-type", "application/yaml")
        .body(example(name))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201, "{name}: {:?}", stored.text().await);
    let started: Value = http()
        .post(server.url("/api/v1/workflows"))
        .json(&json!({"type": name, "input": input}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().unwrap().to_owned();
    eventually(
        &format!("{name} to finish"),
        Duration::from_secs(60),
        || async {
            let run = get_json(server, &format!("/api/v1/workflows/{id}")).await?;
            (run["status"] != "running").then_some(run)
        },
    )
    .await
}

fn step_statuses(run: &Value) -> Vec<(String, String)> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn all_succeeded(run: &Value, names: &[&str]) {
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let expected: Vec<(String, String)> = names
        .iter()
        .map(|n| ((*n).to_owned(), "succeeded".to_owned()))
        .collect();
    assert_eq!(step_statuses(run), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_five_example_workflows_run_against_their_services() {
    let (services, base) = fake_services().await;
    let dir = tempfile::tempdir().unwrap();
    // The fake services listen on loopback, which tasks reach only when allowed.
    let server = Orchion::start(
        dir.path(),
        &["dev"],
        &[("ORCHION_EGRESS__ALLOW", "[\"127.0.0.1\"]")],
    );
    let urls = |names: &[&str]| -> Value {
        names
            .iter()
            .map(|n| ((*n).to_owned(), json!(format!("{base}/{n}"))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };

    // Intent processing: the plan's three steps run as a fan-out, then are aggregated.
    let run = run_example(
        &server,
        "intent_processing",
        json!({"intent": "create a REST API", "services": {"intent": format!("{base}/intent"), "agents": format!("{base}/agents")}}),
    )
    .await;
    all_succeeded(
        &run,
        &[
            "AnalyzeIntent",
            "CreateExecutionPlan",
            "ExecuteSteps",
            "AggregateResults",
        ],
    );
    let executed = services.called(Method::POST, "/agents/v1/execute");
    assert_eq!(executed.len(), 3, "one call per plan step");
    assert_eq!(
        services.called(Method::POST, "/intent/v1/plans")[0]["analysis"]["kind"],
        "api"
    );
    let results = &services.called(Method::POST, "/intent/v1/results")[0];
    assert_eq!(results["intent"], "create a REST API");
    let steps: Vec<&Value> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["body"]["step"])
        .collect();
    assert_eq!(
        steps,
        [&json!(1), &json!(2), &json!(3)],
        "results in plan order"
    );

    // Code execution: the selected agent's URL and the environment id flow through.
    let run = run_example(
        &server,
        "code_execution",
        json!({"language": "python", "code": "print(42)", "services": {"agent_manager": format!("{base}/agents")}}),
    )
    .await;
    all_succeeded(
        &run,
        &[
            "SelectAgent",
            "PrepareEnvironment",
            "ExecuteCode",
            "ProcessResults",
            "CleanupEnvironment",
        ],
    );
    assert_eq!(
        services.called(Method::POST, "/agent-7/v1/environments/env-1/execute")[0]["code"],
        "print(42)"
    );
    assert_eq!(
        services
            .called(Method::DELETE, "/agent-7/v1/environments/env-1")
            .len(),
        1
    );
    let processed = run["steps"][3]["tasks"][0]["outputs"].clone();
    assert_eq!(processed, json!({"exit_code": "0", "stdout_lines": "2"}));

    // Code analysis: three analyses of the fetched archive, one report of all three.
    let run = run_example(
        &server,
        "code_analysis",
        json!({"repo": "acme/shop", "ref": "main", "services": urls(&["scm", "analysis", "reports"])}),
    )
    .await;
    all_succeeded(
        &run,
        &[
            "FetchCode",
            "RunStaticAnalysis",
            "RunSecurityAnalysis",
            "RunPerformanceAnalysis",
            "GenerateReport",
        ],
    );
    assert_eq!(
        services.called(Method::POST, "/analysis/v1/security")[0]["archive"],
        "shop-main.tar"
    );
    let report = &services.called(Method::POST, "/reports/v1/reports")[0];
    assert_eq!(
        (
            &report["static"]["findings"],
            &report["security"]["findings"],
            &report["performance"]["findings"]
        ),
        (&json!(3), &json!(1), &json!(0))
    );

    // Code review: checks (a shell step) and the AI review feed the summary that is posted.
    let run = run_example(
        &server,
        "code_review",
        json!({"repo": "acme/shop", "pull": 42, "services": urls(&["scm", "ai"])}),
    )
    .await;
    all_succeeded(
        &run,
        &[
            "FetchChanges",
            "RunAutomatedChecks",
            "RunAIReview",
            "GenerateSummary",
            "PostComments",
        ],
    );
    assert_eq!(
        services.called(Method::POST, "/ai/v1/reviews")[0]["diff"],
        "+fn main() {}"
    );
    let summary = &services.called(Method::POST, "/ai/v1/summaries")[0];
    assert_eq!(summary["checks_passed"], "true");
    assert_eq!(
        services.called(Method::POST, "/scm/v1/repos/acme/shop/pulls/42/comments")[0]["body"],
        "1 comment(s)"
    );

    // Deployment: staging, smoke tests, production (promote), health.
    let input = |promote: bool| {
        json!({"app": "shop", "version": "1.2.0", "promote": promote,
               "services": urls(&["deployer", "builder", "ci"])})
    };
    let run = run_example(&server, "deployment", input(true)).await;
    all_succeeded(
        &run,
        &[
            "ValidateDeployment",
            "BuildArtifacts",
            "RunTests",
            "DeployToStaging",
            "RunSmokeTests",
            "DeployToProduction",
            "HealthCheck",
        ],
    );
    let deployments = services.called(Method::POST, "/deployer/v1/deployments");
    assert_eq!(
        deployments,
        [
            json!({"environment": "staging", "artifact": "shop-1.2.0.tar"}),
            json!({"environment": "production", "artifact": "shop-1.2.0.tar"}),
        ]
    );
    // Without `promote`, production and its health check are skipped; the run succeeds.
    let start = http()
        .post(server.url("/api/v1/workflows"))
        .json(&json!({"type": "deployment", "input": input(false)}))
        .send()
        .await
        .unwrap();
    let id = start.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = eventually(
        "the unpromoted deployment",
        Duration::from_secs(60),
        || async {
            let run = get_json(&server, &format!("/api/v1/workflows/{id}")).await?;
            (run["status"] != "running").then_some(run)
        },
    )
    .await;
    assert_eq!(run["status"], "succeeded");
    let statuses = step_statuses(&run);
    assert_eq!(
        statuses[5],
        ("DeployToProduction".to_owned(), "skipped".to_owned())
    );
    assert_eq!(
        statuses[6],
        ("HealthCheck".to_owned(), "skipped".to_owned())
    );
    assert_eq!(
        services
            .called(Method::POST, "/deployer/v1/deployments")
            .len(),
        3
    );
}

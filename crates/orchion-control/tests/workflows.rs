//! The workflow engine over a real store: steps are claimed and reported as an agent would
//! (through the store), and the engine moves each run on. Parallelism, outputs between steps,
//! skip-on-failure, retry from the failed steps, `when`, fan-out and fan-in, cancellation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use orchion_control::{NodeRegistry, RegistrySettings, StartRun, Told, WorkQueue, Workflows};
use orchion_domain::{
    AttemptOutcome, Capacity, Labels, NodeId, RunId, RunStatus, WorkflowRunRecord,
};
use orchion_store::{AttemptReport, ClaimRequest, ClaimedTask, Store};
use serde_json::{Value, json};

struct Harness {
    store: Arc<dyn Store>,
    workflows: Arc<Workflows>,
    node: NodeId,
    _db: orchion_testkit::SqliteDatabase,
}

impl Harness {
    async fn new() -> Self {
        let db = orchion_testkit::sqlite_database();
        let store = orchion_store::connect(db.url(), 2).await.unwrap();
        let settings = RegistrySettings::default();
        let nodes = Arc::new(NodeRegistry::load(store.clone(), settings).await.unwrap());
        let work = Arc::new(WorkQueue::new(store.clone(), nodes));
        Harness {
            workflows: Arc::new(Workflows::new(store.clone(), work)),
            store,
            node: NodeId::new(),
            _db: db,
        }
    }

    async fn start(&self, definition: Value, input: Value) -> RunId {
        let name = definition["name"].as_str().unwrap().to_owned();
        self.store
            .put_workflow_type(&name, None, &definition.to_string())
            .await
            .unwrap();
        self.workflows
            .start(
                StartRun {
                    name: None,
                    workflow: name,
                    version: None,
                    project_id: None,
                    input,
                    trace_parent: None,
                },
                None,
            )
            .await
            .unwrap()
            .value
            .id
    }

    /// Everything claimable now, as an agent with room for it all would claim.
    async fn claim(&self) -> Vec<ClaimedTask> {
        self.store
            .claim_tasks(&ClaimRequest {
                node_id: self.node,
                executors: vec!["noop".into(), "shell".into()],
                labels: Labels::default(),
                capacity: Capacity::new(64_000, 1 << 40, 8).unwrap(),
                max: 100,
                now: orchion_store::now(),
            })
            .await
            .unwrap()
    }

    /// Reports how a claimed task ended and lets the engine move its run on.
    async fn finish(&self, task: &ClaimedTask, outcome: AttemptOutcome, outputs: Option<Value>) {
        let done = self
            .store
            .complete_attempts(vec![AttemptReport {
                node: self.node,
                task: task.task_id,
                attempt: task.attempt,
                outcome,
                output: None,
                outputs: outputs.map(|o| o.to_string()),
            }])
            .await
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        assert!(done.workflow);
        // As the work queue tells it: by the task that finished.
        self.workflows
            .advance_told(done.run_id, Told::Tasks(vec![task.task_id]))
            .await
            .unwrap();
    }

    async fn record(&self, id: RunId) -> WorkflowRunRecord {
        self.store.get_workflow_run(id).await.unwrap()
    }

    /// Each step's state, as the API shows it.
    async fn states(&self, id: RunId) -> Vec<(String, &'static str)> {
        let record = self.record(id).await;
        let workflow = self
            .workflows
            .definition(&record.run.workflow, Some(record.run.version))
            .await
            .unwrap();
        orchion_control::plan(&workflow, &record)
            .steps
            .into_iter()
            .map(|(name, state)| (name, state.as_str()))
            .collect()
    }
}

fn step_of(h: &[ClaimedTask], spec_contains: &str) -> ClaimedTask {
    h.iter()
        .find(|t| t.spec.contains(spec_contains))
        .unwrap_or_else(|| panic!("no claimed task with `{spec_contains}` in {h:?}"))
        .clone()
}

fn noop(name: &str, needs: &[&str], outputs: Value) -> Value {
    json!({"name": name, "needs": needs, "executor": "noop", "spec": {"outputs": outputs}})
}

#[tokio::test]
async fn independent_steps_run_together_and_outputs_flow_downstream() {
    let h = Harness::new().await;
    let run = h
        .start(
            json!({"name": "diamond", "steps": [
                noop("build", &[], json!({"step": "build"})),
                noop("test", &["build"], json!({"step": "test", "image": "${{ steps.build.outputs.image }}"})),
                noop("scan", &["build"], json!({"step": "scan", "image": "${{ steps.build.outputs.image }}"})),
                noop("ship", &["test", "scan"], json!({"step": "ship", "verdict": "${{ steps.test.outputs.ok }}/${{ steps.scan.outputs.ok }}", "env": "${{ input.env }}"})),
            ]}),
            json!({"env": "prod"}),
        )
        .await;
    let first = h.claim().await;
    assert_eq!(first.len(), 1, "only the root is ready: {first:?}");
    h.finish(
        &first[0],
        AttemptOutcome::Succeeded,
        Some(json!({"image": "reg/app:7"})),
    )
    .await;
    let second = h.claim().await;
    assert_eq!(second.len(), 2, "test and scan are ready together");
    for task in &second {
        assert!(
            task.spec.contains(r#""image":"reg/app:7""#),
            "{}",
            task.spec
        );
    }
    assert!(h.claim().await.is_empty(), "ship waits for both");
    h.finish(
        &step_of(&second, "\"test\""),
        AttemptOutcome::Succeeded,
        Some(json!({"ok": "yes"})),
    )
    .await;
    assert!(h.claim().await.is_empty(), "ship still waits for scan");
    h.finish(
        &step_of(&second, "\"scan\""),
        AttemptOutcome::Succeeded,
        Some(json!({"ok": "clean"})),
    )
    .await;
    let third = h.claim().await;
    assert_eq!(third.len(), 1);
    assert!(
        third[0].spec.contains(r#""verdict":"yes/clean""#)
            && third[0].spec.contains(r#""env":"prod""#),
        "{}",
        third[0].spec
    );
    h.finish(&third[0], AttemptOutcome::Succeeded, None).await;
    let record = h.record(run).await;
    assert_eq!(record.run.status, RunStatus::Succeeded);
    assert!(record.run.finished_at.is_some());
    assert!(h.states(run).await.iter().all(|(_, s)| *s == "succeeded"));
}

#[tokio::test]
async fn a_failed_step_skips_its_dependents_and_retry_runs_only_what_failed() {
    let h = Harness::new().await;
    let once = json!({"max_attempts": 1});
    let run = h
        .start(
            json!({"name": "chain", "steps": [
                noop("fetch", &[], json!({"step": "fetch"})),
                {"name": "compile", "needs": ["fetch"], "executor": "noop", "spec": {"outputs": {"step": "compile"}}, "retry": once},
                noop("package", &["compile"], json!({"step": "package"})),
                noop("docs", &[], json!({"step": "docs"})),
            ]}),
            json!({}),
        )
        .await;
    let roots = h.claim().await;
    assert_eq!(roots.len(), 2, "fetch and docs need nothing");
    for task in &roots {
        h.finish(task, AttemptOutcome::Succeeded, None).await;
    }
    let compile = h.claim().await;
    assert_eq!(compile.len(), 1);
    h.finish(
        &compile[0],
        AttemptOutcome::Failed {
            exit_code: Some(2),
            error: "exit 2".into(),
        },
        None,
    )
    .await;
    assert_eq!(h.record(run).await.run.status, RunStatus::Failed);
    assert_eq!(
        h.states(run).await,
        [
            ("fetch".to_owned(), "succeeded"),
            ("compile".to_owned(), "failed"),
            ("package".to_owned(), "skipped"),
            ("docs".to_owned(), "succeeded"),
        ]
    );
    assert!(h.claim().await.is_empty());

    // Retry: only compile runs again (a second attempt), then package.
    h.workflows.retry(run).await.unwrap();
    assert_eq!(h.record(run).await.run.status, RunStatus::Running);
    let again = h.claim().await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0].spec.contains("compile"));
    assert_eq!(again[0].attempt, 2, "the earlier attempt is kept");
    h.finish(&again[0], AttemptOutcome::Succeeded, None).await;
    let package = h.claim().await;
    assert_eq!(package.len(), 1);
    assert!(package[0].spec.contains("package"));
    h.finish(&package[0], AttemptOutcome::Succeeded, None).await;
    let record = h.record(run).await;
    assert_eq!(record.run.status, RunStatus::Succeeded);
    let fetch = record
        .tasks
        .iter()
        .find(|t| t.step.name == "fetch")
        .unwrap();
    assert_eq!(
        fetch.task.state.attempts, 1,
        "succeeded steps are not run again"
    );
    // A succeeded run cannot be retried.
    assert!(h.workflows.retry(run).await.is_err());
}

#[tokio::test]
async fn for_each_fans_out_and_the_next_step_reads_every_result() {
    let h = Harness::new().await;
    let definition = json!({"name": "fan", "steps": [
        noop("list", &[], json!({})),
        {"name": "lint", "needs": ["list"], "executor": "noop", "for_each": "${{ steps.list.outputs.files }}",
         "spec": {"outputs": {"file": "${{ item }}"}}},
        noop("report", &["lint"], json!({"results": "${{ steps.lint.outputs }}"})),
    ]});
    let run = h.start(definition.clone(), json!({})).await;
    let list = h.claim().await;
    h.finish(
        &list[0],
        AttemptOutcome::Succeeded,
        Some(json!({"files": ["a.rs", "b.rs", "c.rs"]})),
    )
    .await;
    let lints = h.claim().await;
    assert_eq!(lints.len(), 3, "one task per file");
    let steps: Vec<String> = h
        .record(run)
        .await
        .tasks
        .iter()
        .map(|t| t.step.to_string())
        .filter(|s| s.starts_with("lint"))
        .collect();
    assert_eq!(steps, ["lint[0]", "lint[1]", "lint[2]"]);
    // Finish them out of order; each reports what it linted.
    for task in lints.iter().rev() {
        let file: Value = serde_json::from_str(&task.spec).unwrap();
        h.finish(
            task,
            AttemptOutcome::Succeeded,
            Some(json!({"file": file["outputs"]["file"], "warnings": 0})),
        )
        .await;
    }
    let report = h.claim().await;
    assert_eq!(report.len(), 1);
    let spec: Value = serde_json::from_str(&report[0].spec).unwrap();
    assert_eq!(
        spec["outputs"]["results"],
        json!([
            {"file": "a.rs", "warnings": 0},
            {"file": "b.rs", "warnings": 0},
            {"file": "c.rs", "warnings": 0},
        ]),
        "fan-in keeps the order of the list"
    );
    h.finish(&report[0], AttemptOutcome::Succeeded, None).await;
    assert_eq!(h.record(run).await.run.status, RunStatus::Succeeded);

    // An empty list: the fan-out succeeds with no tasks, and the next step runs.
    let run = h.start(definition, json!({})).await;
    let list = h.claim().await;
    h.finish(
        &list[0],
        AttemptOutcome::Succeeded,
        Some(json!({"files": []})),
    )
    .await;
    let report = h.claim().await;
    assert_eq!(report.len(), 1);
    assert!(
        report[0].spec.contains(r#""results":[]"#),
        "{}",
        report[0].spec
    );
    h.finish(&report[0], AttemptOutcome::Succeeded, None).await;
    assert_eq!(h.record(run).await.run.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_false_when_skips_and_a_missing_output_fails_the_step_without_running_it() {
    let h = Harness::new().await;
    let run = h
        .start(
            json!({"name": "gated", "steps": [
                noop("check", &[], json!({})),
                {"name": "deploy", "needs": ["check"], "executor": "noop", "when": "${{ input.target == 'prod' }}", "spec": {}},
                noop("announce", &["deploy"], json!({})),
                noop("always", &["check"], json!({"tag": "${{ steps.check.outputs.tag }}"})),
                noop("after", &["always"], json!({})),
            ]}),
            json!({"target": "staging"}),
        )
        .await;
    let check = h.claim().await;
    h.finish(
        &check[0],
        AttemptOutcome::Succeeded,
        Some(json!({"other": 1})),
    )
    .await;
    assert!(h.claim().await.is_empty(), "nothing else can run");
    let record = h.record(run).await;
    assert_eq!(record.run.status, RunStatus::Failed);
    let always = record
        .tasks
        .iter()
        .find(|t| t.step.name == "always")
        .unwrap();
    assert_eq!(always.task.state.attempts, 0, "it never ran");
    assert_eq!(
        always.task.error.as_deref(),
        Some("spec/outputs/tag: `steps.check.outputs` has no `tag`")
    );
    assert_eq!(
        h.states(run).await,
        [
            ("check".to_owned(), "succeeded"),
            ("deploy".to_owned(), "skipped"),
            ("announce".to_owned(), "skipped"),
            ("always".to_owned(), "failed"),
            ("after".to_owned(), "skipped"),
        ]
    );
}

#[tokio::test]
async fn cancelling_a_run_cancels_its_queued_steps_and_starts_nothing_new() {
    let h = Harness::new().await;
    let run = h
        .start(
            json!({"name": "long", "steps": [
                noop("a", &[], json!({})),
                noop("b", &[], json!({})),
                noop("c", &["a"], json!({})),
            ]}),
            json!({}),
        )
        .await;
    let running = h.claim().await;
    assert_eq!(running.len(), 2);
    h.workflows.cancel(run).await.unwrap();
    // The running tasks are asked to stop; their agents report them cancelled.
    for task in &running {
        h.finish(task, AttemptOutcome::Cancelled, None).await;
    }
    assert!(h.claim().await.is_empty(), "c never starts");
    let record = h.record(run).await;
    assert_eq!(record.run.status, RunStatus::Cancelled);
    assert_eq!(
        h.states(run).await,
        [
            ("a".to_owned(), "cancelled"),
            ("b".to_owned(), "cancelled"),
            ("c".to_owned(), "skipped"),
        ]
    );
    assert!(h.workflows.cancel(run).await.is_err(), "it has ended");
}

/// A step with a rollback: noop steps whose rollback is a noop naming the step.
fn undoable(name: &str, needs: &[&str]) -> Value {
    json!({"name": name, "needs": needs, "executor": "noop", "spec": {"outputs": {"step": name}},
           "rollback": {"executor": "noop", "spec": {"outputs": {"undo": name}}}})
}

#[tokio::test]
async fn a_failed_run_undoes_its_succeeded_steps_in_reverse_order() {
    let h = Harness::new().await;
    // A diamond of five: network → (db, cache) → app → dns. app fails.
    let once = json!({"max_attempts": 1});
    let mut app = undoable("app", &["db", "cache"]);
    app["retry"] = once;
    let run = h
        .start(
            json!({"name": "stack", "steps": [
                undoable("network", &[]),
                undoable("db", &["network"]),
                undoable("cache", &["network"]),
                app,
                undoable("dns", &["app"]),
            ]}),
            json!({}),
        )
        .await;
    let step = |tasks: &[ClaimedTask], name: &str| step_of(tasks, &format!("\"{name}\""));
    let network = h.claim().await;
    h.finish(&network[0], AttemptOutcome::Succeeded, None).await;
    let wave = h.claim().await;
    assert_eq!(wave.len(), 2);
    for task in &wave {
        h.finish(task, AttemptOutcome::Succeeded, None).await;
    }
    let app = h.claim().await;
    h.finish(
        &app[0],
        AttemptOutcome::Failed {
            exit_code: None,
            error: "quota exceeded".into(),
        },
        None,
    )
    .await;
    // Rollback: db and cache first (both need network), in parallel; then network.
    let undo = h.claim().await;
    assert_eq!(undo.len(), 2, "{undo:?}");
    let (db, cache) = (step(&undo, "db"), step(&undo, "cache"));
    assert!(db.spec.contains("undo"));
    assert_eq!(
        h.record(run).await.run.status,
        RunStatus::Running,
        "rolling back"
    );
    h.finish(&db, AttemptOutcome::Succeeded, None).await;
    assert!(
        h.claim().await.is_empty(),
        "network waits for cache's rollback too"
    );
    h.finish(&cache, AttemptOutcome::Succeeded, None).await;
    let last = h.claim().await;
    assert_eq!(last.len(), 1);
    assert!(last[0].spec.contains(r#""undo":"network""#));
    h.finish(&last[0], AttemptOutcome::Succeeded, None).await;
    let record = h.record(run).await;
    assert_eq!(record.run.status, RunStatus::Failed);
    let order: Vec<String> = record
        .tasks
        .iter()
        .filter(|t| t.step.is_rollback())
        .map(|t| t.step.to_string())
        .collect();
    assert_eq!(order[2], "network:rollback");
    assert!(
        h.workflows.retry(run).await.is_err(),
        "a rolled-back run is not retried"
    );
}

#[tokio::test]
async fn undoing_a_succeeded_run_rolls_all_of_it_back() {
    let h = Harness::new().await;
    let run = h
        .start(
            json!({"name": "pair", "steps": [undoable("a", &[]), undoable("b", &["a"])]}),
            json!({}),
        )
        .await;
    for _ in 0..2 {
        let tasks = h.claim().await;
        h.finish(&tasks[0], AttemptOutcome::Succeeded, None).await;
    }
    assert_eq!(h.record(run).await.run.status, RunStatus::Succeeded);
    h.workflows.undo(run).await.unwrap();
    let first = h.claim().await;
    assert!(
        first[0].spec.contains(r#""undo":"b""#),
        "b is undone before a"
    );
    h.finish(&first[0], AttemptOutcome::Succeeded, None).await;
    let second = h.claim().await;
    assert!(second[0].spec.contains(r#""undo":"a""#));
    h.finish(&second[0], AttemptOutcome::Succeeded, None).await;
    assert_eq!(h.record(run).await.run.status, RunStatus::Cancelled);
}

#[tokio::test]
async fn a_run_keeps_the_version_it_started_on() {
    let h = Harness::new().await;
    let v1 = json!({"name": "pinned", "steps": [
        noop("first", &[], json!({"v": 1})),
        noop("second", &["first"], json!({"v": 1})),
    ]});
    let run = h.start(v1, json!({})).await;
    // A new version renames the second step and changes what it produces.
    let v2 = json!({"name": "pinned", "steps": [
        noop("first", &[], json!({"v": 2})),
        noop("renamed", &["first"], json!({"v": 2})),
    ]});
    let stored = h
        .store
        .put_workflow_type("pinned", None, &v2.to_string())
        .await
        .unwrap();
    assert_eq!(stored.value.version, 2);
    let first = h.claim().await;
    h.finish(&first[0], AttemptOutcome::Succeeded, None).await;
    let second = h.claim().await;
    assert_eq!(second.len(), 1);
    assert!(second[0].spec.contains(r#""v":1"#), "{}", second[0].spec);
    h.finish(&second[0], AttemptOutcome::Succeeded, None).await;
    let record = h.record(run).await;
    assert_eq!(record.run.version, 1);
    assert_eq!(record.run.status, RunStatus::Succeeded);
    assert!(record.tasks.iter().any(|t| t.step.name == "second"));
}

/// Runs every claimable task to success, a claim at a time, each with the outputs its no-op
/// spec names, telling the engine of each batch as the work queue does (by its tasks), until
/// the run ends; returns how many tasks ran.
async fn drain(h: &Harness, run: RunId) -> usize {
    let mut ran = 0;
    loop {
        let claimed = h.claim().await;
        if claimed.is_empty() {
            break;
        }
        let done = h
            .store
            .complete_attempts(
                claimed
                    .iter()
                    .map(|task| AttemptReport {
                        node: h.node,
                        task: task.task_id,
                        attempt: task.attempt,
                        outcome: AttemptOutcome::Succeeded,
                        output: None,
                        outputs: Some(
                            serde_json::from_str::<Value>(&task.spec).unwrap()["outputs"]
                                .to_string(),
                        ),
                    })
                    .collect(),
            )
            .await
            .unwrap();
        assert!(done.iter().all(Result::is_ok));
        ran += claimed.len();
        h.workflows
            .advance_told(
                run,
                Told::Tasks(claimed.iter().map(|t| t.task_id).collect()),
            )
            .await
            .unwrap();
    }
    ran
}

#[tokio::test]
async fn a_long_chain_and_a_wide_fan_out_cost_a_bounded_number_of_reads_per_step() {
    let h = Harness::new().await;
    // A chain: each step's end reads the run's state and the one task, never the whole run.
    let steps = 300;
    let chain: Vec<Value> = (0..steps)
        .map(|i| {
            let needs: Vec<String> = if i == 0 {
                Vec::new()
            } else {
                vec![format!("s{}", i - 1)]
            };
            json!({"name": format!("s{i}"), "needs": needs, "executor": "noop", "spec": {}})
        })
        .collect();
    let run = h
        .start(json!({"name": "chain", "steps": chain}), json!({}))
        .await;
    let reads = h.workflows.reads();
    let before = |r: &orchion_control::Reads| {
        use std::sync::atomic::Ordering::Relaxed;
        (
            r.head.load(Relaxed),
            r.tasks.load(Relaxed),
            r.whole.load(Relaxed),
        )
    };
    let (head, tasks, whole) = before(reads);
    assert_eq!(whole, 1, "the start reads its new run once");
    assert_eq!(drain(&h, run).await, steps);
    assert_eq!(h.record(run).await.run.status, RunStatus::Succeeded);
    let (head2, tasks2, whole2) = before(reads);
    assert_eq!(whole2, whole, "no step's end read the whole run");
    let per_step = (head2 - head + tasks2 - tasks) as f64 / steps as f64;
    assert!(per_step <= 2.0, "{per_step} reads per step");

    // A fan-out: its elements end in batches; each batch costs its own reads.
    let width = 1000;
    let items: Vec<usize> = (0..width).collect();
    let run = h
        .start(
            json!({"name": "fan", "steps": [
                noop("root", &[], json!({"items": items})),
                {"name": "fan", "needs": ["root"], "for_each": "${{ steps.root.outputs.items }}",
                 "executor": "noop", "spec": {"outputs": {"n": "${{ item }}"}}},
                noop("join", &["fan"], json!({"count": "${{ steps.fan.outputs }}"})),
            ]}),
            json!({}),
        )
        .await;
    let (head, tasks, whole) = before(reads);
    assert_eq!(drain(&h, run).await, width + 2);
    let record = h.record(run).await;
    assert_eq!(record.run.status, RunStatus::Succeeded);
    let (head2, tasks2, whole2) = before(reads);
    assert_eq!(whole2, whole, "no batch's end read the whole run");
    // root, ten batches of a hundred elements, the join.
    assert!(
        head2 - head + tasks2 - tasks <= 2 * 12,
        "{} reads",
        head2 - head + tasks2 - tasks
    );
}

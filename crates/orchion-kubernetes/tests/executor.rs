//! The `kubernetes` executor against `orchion-fake-kube`, a fake API server run as its own
//! process, through the real kube client: each scripted scenario, cancellation, a Job deleted
//! by someone else, a deadline, a watch that keeps dropping, and specs refused before anything
//! is created.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use orchion_executor::{Context, Executor, Outcome, OutputLine};
use orchion_kubernetes::{Kubernetes, Settings};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The fake API server, killed on drop.
struct FakeApi {
    child: Child,
    url: String,
}

impl FakeApi {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orchion-fake-kube"))
            .args(["--tick-ms", "40"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the fake API server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the fake prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("an address");
        Self {
            child,
            url: format!("http://{addr}"),
        }
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("a URL"));
        kube::Client::try_from(config).expect("a client")
    }

    async fn requests(&self) -> Value {
        reqwest::get(format!("{}/fake/requests", self.url))
            .await
            .expect("the fake answers")
            .json()
            .await
            .expect("JSON")
    }

    async fn changes(&self) -> Vec<String> {
        serde_json::from_value(self.requests().await["changes"].clone()).expect("a list")
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings() -> Settings {
    let config = orchion_config::KubernetesConfig {
        image_pull_timeout: Duration::from_millis(300),
        poll_interval: Duration::from_millis(30),
        ..Default::default()
    };
    Settings::from_config(&config).expect("valid settings")
}

const TASK: &str = "0190b2c4-7d3e-7a51-9f0e-3c2d1b0a9f90";
const JOB: &str = "orchion-0190b2c4-7d3e-7a51-9f0e-3c2d1b0a9f90-1";

/// One execution: its outcome and every line it wrote.
struct Run {
    outcome: Outcome,
    lines: Vec<OutputLine>,
}

impl Run {
    fn said(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.line.contains(needle))
    }

    fn stdout(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.stream == "stdout")
            .map(|l| l.line.as_str())
            .collect()
    }
}

/// The context the agent gives attempt `attempt` of [`TASK`].
fn context(
    output: mpsc::Sender<OutputLine>,
    cancel: CancellationToken,
    leaving: CancellationToken,
    deadline: Option<Duration>,
    attempt: u32,
) -> Context {
    Context {
        output,
        cancel,
        deadline,
        inherited: std::sync::Arc::new(orchion_executor::inherited_env(&[])),
        egress: Default::default(),
        env: BTreeMap::from([
            (
                "ORCHION_JOB_ID".into(),
                "0190b2c4-7d3e-7a51-9f0e-3c2d1b0a9f8e".into(),
            ),
            ("ORCHION_TASK_ID".into(), TASK.into()),
            ("ORCHION_ATTEMPT".into(), attempt.to_string()),
        ]),
        kill_grace: Duration::from_secs(1),
        fence: None,
        leaving,
    }
}

/// Runs `spec` as attempt 1; `during` gets the lines as they come and the cancel token.
async fn execute_with(
    fake: &FakeApi,
    spec: Value,
    deadline: Option<Duration>,
    during: impl AsyncFnOnce(&mut mpsc::Receiver<OutputLine>, CancellationToken) + Send,
) -> Run {
    execute_attempt(fake, spec, 1, deadline, during).await
}

/// Runs `spec` as `attempt` of the task.
async fn execute_attempt(
    fake: &FakeApi,
    spec: Value,
    attempt: u32,
    deadline: Option<Duration>,
    during: impl AsyncFnOnce(&mut mpsc::Receiver<OutputLine>, CancellationToken) + Send,
) -> Run {
    let executor = Kubernetes::new(fake.client(), settings());
    let spec = orchion_executor::validate("kubernetes", &spec).expect("a valid spec");
    let (output, mut lines) = mpsc::channel(1000);
    let cancel = CancellationToken::new();
    let context = context(
        output,
        cancel.clone(),
        CancellationToken::new(),
        deadline,
        attempt,
    );
    let run = tokio::spawn(async move { executor.run(&spec, context).await });
    let mut seen = Vec::new();
    during(&mut lines, cancel).await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the execution ends")
        .expect("no panic");
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    Run {
        outcome,
        lines: seen,
    }
}

async fn execute(fake: &FakeApi, image: &str) -> Run {
    execute_with(fake, json!({"image": image}), None, async |_, _| {}).await
}

/// Waits for a line containing `needle`.
async fn wait_for(lines: &mut mpsc::Receiver<OutputLine>, needle: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.recv().await {
            if line.line.contains(needle) {
                return;
            }
        }
        panic!("the output ended before `{needle}`");
    })
    .await
    .unwrap_or_else(|_| panic!("no line with `{needle}`"));
}

#[tokio::test]
async fn a_job_that_succeeds_streams_its_log() {
    let fake = FakeApi::start(&[]);
    let run = execute(&fake, "ghcr.io/acme/succeed:1").await;
    let Outcome::Succeeded { output, .. } = &run.outcome else {
        panic!("{:?}", run.outcome);
    };
    assert_eq!(output.as_deref(), Some("starting\nworking\ndone\n"));
    assert_eq!(run.stdout(), ["starting", "working", "done"]);
    assert!(run.said(&format!("created Job default/{JOB}")));
    assert!(run.said("running"), "the pod's state changes are said");
    assert_eq!(fake.changes().await, [format!("POST jobs/{JOB}")]);
}

#[tokio::test]
async fn a_failed_container_reports_its_exit_code() {
    let fake = FakeApi::start(&[]);
    let run = execute(&fake, "ghcr.io/acme/fail:1").await;
    let Outcome::Failed {
        exit_code,
        error,
        output,
    } = &run.outcome
    else {
        panic!("{:?}", run.outcome);
    };
    assert_eq!(*exit_code, Some(3));
    assert!(error.contains("exited with code 3 (Error)"), "{error}");
    assert_eq!(output.as_deref(), Some("about to fail\n"));
}

#[tokio::test]
async fn an_oom_killed_container_says_so() {
    let fake = FakeApi::start(&[]);
    let run = execute(&fake, "ghcr.io/acme/oom:1").await;
    let Outcome::Failed {
        exit_code, error, ..
    } = &run.outcome
    else {
        panic!("{:?}", run.outcome);
    };
    assert_eq!(*exit_code, Some(137));
    assert!(error.contains("OOMKilled"), "{error}");
    assert!(error.contains("more memory than its limit"), "{error}");
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_the_task_and_removes_the_job() {
    let fake = FakeApi::start(&[]);
    let run = execute(&fake, "ghcr.io/acme/pull-backoff:1").await;
    let Outcome::Failed { error, .. } = &run.outcome else {
        panic!("{:?}", run.outcome);
    };
    assert!(error.contains("ImagePullBackOff"), "{error}");
    assert!(error.contains("pull access denied"), "{error}");
    assert!(
        run.said("ErrImagePull"),
        "the pull trouble is said as it happens"
    );
    assert_eq!(
        fake.changes().await,
        [
            format!("POST jobs/{JOB}"),
            format!("DELETE jobs/{JOB} propagationPolicy=Foreground")
        ]
    );
}

#[tokio::test]
async fn cancelling_deletes_the_job_with_its_pods() {
    let fake = FakeApi::start(&[]);
    let run = execute_with(
        &fake,
        json!({"image": "ghcr.io/acme/sleep:1"}),
        None,
        async |lines, cancel| {
            wait_for(lines, "tick 2").await;
            cancel.cancel();
        },
    )
    .await;
    assert_eq!(run.outcome, Outcome::Cancelled);
    assert_eq!(
        fake.changes().await,
        [
            format!("POST jobs/{JOB}"),
            format!("DELETE jobs/{JOB} propagationPolicy=Foreground")
        ]
    );
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> =
        kube::Api::namespaced(fake.client(), "default");
    assert!(jobs.get_opt(JOB).await.expect("the fake answers").is_none());
}

#[tokio::test]
async fn a_job_deleted_by_someone_else_fails_the_task() {
    let fake = FakeApi::start(&[]);
    let client = fake.client();
    let run = execute_with(
        &fake,
        json!({"image": "ghcr.io/acme/sleep:1"}),
        None,
        async |lines, _| {
            wait_for(lines, "tick 1").await;
            let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> =
                kube::Api::namespaced(client, "default");
            jobs.delete(JOB, &Default::default())
                .await
                .expect("deleted");
        },
    )
    .await;
    let Outcome::Failed { error, output, .. } = &run.outcome else {
        panic!("{:?}", run.outcome);
    };
    assert!(error.contains("deleted outside Orchion"), "{error}");
    assert!(output.as_deref().unwrap_or("").contains("tick 1"));
}

#[tokio::test]
async fn a_job_past_its_deadline_times_out() {
    let fake = FakeApi::start(&[]);
    let run = execute_with(
        &fake,
        json!({"image": "ghcr.io/acme/sleep:1"}),
        Some(Duration::from_secs(1)),
        async |_, _| {},
    )
    .await;
    assert_eq!(run.outcome, Outcome::TimedOut);
    assert!(run.said("deadline"), "{:?}", run.lines);
}

#[tokio::test]
async fn a_watch_that_keeps_dropping_is_resumed() {
    let fake = FakeApi::start(&["--drop-watch-after", "1"]);
    let run = execute(&fake, "ghcr.io/acme/succeed:1").await;
    assert!(
        matches!(run.outcome, Outcome::Succeeded { .. }),
        "{:?}",
        run.outcome
    );
    let watches = fake.requests().await["watches"].as_u64().unwrap_or(0);
    assert!(
        watches >= 3,
        "the watch was resumed after each drop: {watches}"
    );
}

#[tokio::test]
async fn a_log_stream_that_keeps_dropping_loses_and_repeats_nothing() {
    let fake = FakeApi::start(&["--drop-logs-after", "2"]);
    let run = execute(&fake, "ghcr.io/acme/succeed:1").await;
    let Outcome::Succeeded { output, .. } = &run.outcome else {
        panic!("{:?}", run.outcome);
    };
    assert_eq!(run.stdout(), ["starting", "working", "done"]);
    assert_eq!(output.as_deref(), Some("starting\nworking\ndone\n"));
}

#[tokio::test]
async fn the_same_attempt_twice_follows_the_existing_job() {
    let fake = FakeApi::start(&[]);
    let first = execute(&fake, "ghcr.io/acme/succeed:1").await;
    assert!(matches!(first.outcome, Outcome::Succeeded { .. }));
    let again = execute(&fake, "ghcr.io/acme/succeed:1").await;
    assert!(
        matches!(again.outcome, Outcome::Succeeded { .. }),
        "{:?}",
        again.outcome
    );
    assert!(again.said("exists already"));
    assert_eq!(fake.changes().await, [format!("POST jobs/{JOB}")]);
}

#[tokio::test]
async fn a_request_over_the_default_limit_creates_nothing() {
    let fake = FakeApi::start(&[]);
    let run = execute_with(
        &fake,
        json!({"image": "busybox", "resources": {"requests": {"memory": "16Gi"}}}),
        None,
        async |_, _| {},
    )
    .await;
    let Outcome::Failed { error, .. } = &run.outcome else {
        panic!("{:?}", run.outcome);
    };
    assert!(
        error.contains("resources.requests.memory `16Gi`"),
        "{error}"
    );
    assert!(fake.changes().await.is_empty());
}

#[tokio::test]
async fn the_probe_tells_a_reachable_cluster_from_an_unreachable_one() {
    let fake = FakeApi::start(&[]);
    assert_eq!(
        orchion_kubernetes::probe(&fake.client(), "default").await,
        Ok(())
    );
    let nobody = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.local_addr().expect("an address")
    };
    let config = kube::Config::new(format!("http://{nobody}").parse().expect("a URL"));
    let client = kube::Client::try_from(config).expect("a client");
    let err = orchion_kubernetes::probe(&client, "default")
        .await
        .unwrap_err();
    assert!(
        err.contains("cannot list Jobs in namespace `default`"),
        "{err}"
    );
}

/// An attempt lost with its agent (a server replica restarted while it ran) leaves its Job
/// running; the retry adopts that Job instead of starting the work again.
#[tokio::test]
async fn a_retry_adopts_the_job_its_lost_predecessor_left_running() {
    let fake = FakeApi::start(&[]);
    let spec = json!({"image": "ghcr.io/acme/ticks:1"});
    // Attempt 1's follower dies midway, as with its agent: it deletes nothing.
    let executor = Kubernetes::new(fake.client(), settings());
    let valid = orchion_executor::validate("kubernetes", &spec).expect("a valid spec");
    let (output, mut lines) = mpsc::channel(1000);
    let context = context(
        output,
        CancellationToken::new(),
        CancellationToken::new(),
        None,
        1,
    );
    let first = tokio::spawn(async move { executor.run(&valid, context).await });
    wait_for(&mut lines, "tick 2").await;
    first.abort();
    let _ = first.await;

    let run = execute_attempt(&fake, spec, 2, None, async |_, _| {}).await;
    assert!(
        matches!(run.outcome, Outcome::Succeeded { .. }),
        "{:?}",
        run.outcome
    );
    assert!(run.said(&format!("adopting Job default/{JOB} of attempt 1")));
    assert!(
        run.stdout().contains(&"tick 15"),
        "it follows the work to its end"
    );
    assert_eq!(
        fake.changes().await,
        [format!("POST jobs/{JOB}")],
        "one Job, never a second for the retry"
    );
}

/// A predecessor whose Job failed by its work is not adopted: the retry starts it again.
#[tokio::test]
async fn a_retry_after_a_failure_starts_a_new_job() {
    let fake = FakeApi::start(&[]);
    let failed = execute(&fake, "ghcr.io/acme/fail:1").await;
    assert!(matches!(failed.outcome, Outcome::Failed { .. }));
    let run = execute_attempt(
        &fake,
        json!({"image": "ghcr.io/acme/succeed:1"}),
        2,
        None,
        async |_, _| {},
    )
    .await;
    assert!(
        matches!(run.outcome, Outcome::Succeeded { .. }),
        "{:?}",
        run.outcome
    );
    assert!(!run.said("adopting"));
    let second = JOB.replace("-1", "-2");
    assert_eq!(
        fake.changes().await,
        [format!("POST jobs/{JOB}"), format!("POST jobs/{second}")]
    );
}

/// An agent that leaves (its server replica stops in a rolling update) leaves its Jobs running:
/// nothing is deleted, and the next attempt adopts the Job.
#[tokio::test]
async fn a_leaving_agent_leaves_its_jobs_running_for_the_next_attempt() {
    let fake = FakeApi::start(&[]);
    let spec = json!({"image": "ghcr.io/acme/ticks:1"});
    let executor = Kubernetes::new(fake.client(), settings());
    let valid = orchion_executor::validate("kubernetes", &spec).expect("a valid spec");
    let (output, mut lines) = mpsc::channel(1000);
    let (cancel, leaving) = (CancellationToken::new(), CancellationToken::new());
    let context = context(output, cancel.clone(), leaving.clone(), None, 1);
    let first = tokio::spawn(async move { executor.run(&valid, context).await });
    wait_for(&mut lines, "tick 2").await;
    leaving.cancel();
    cancel.cancel();
    assert_eq!(first.await.unwrap(), Outcome::Cancelled);
    assert_eq!(
        fake.changes().await,
        [format!("POST jobs/{JOB}")],
        "nothing deleted"
    );

    let run = execute_attempt(&fake, spec, 2, None, async |_, _| {}).await;
    assert!(
        matches!(run.outcome, Outcome::Succeeded { .. }),
        "{:?}",
        run.outcome
    );
    assert!(run.said("adopting"));
}

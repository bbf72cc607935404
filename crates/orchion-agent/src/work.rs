//! The agent's work loop: claims tasks for its free slots (a long poll the server answers as
//! soon as work arrives), runs each with its executor, ships output lines in batches, keeps the
//! leases alive, stops work whose lease is lost or whose job is cancelled, and reports results.
//!
//! Invariant: a result is reported only for an attempt this agent still holds and finished
//! itself; work stopped because the lease was lost, or because the agent is shutting down, is
//! not reported (the server retries it by policy).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use orchion_executor::{Context, Masker, Outcome, OutputLine, Registry};
use orchion_proto::v1::{self as pb, work_service_client::WorkServiceClient};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};
use tracing::Instrument;

use crate::{servers::Servers, state::Credentials};

/// How long one claim waits on the server.
pub(crate) const CLAIM_WAIT: Duration = Duration::from_secs(30);
/// Output lines are sent in batches of at most this many…
const LOG_BATCH: usize = 500;
/// …or after this long.
const LOG_FLUSH: Duration = Duration::from_millis(200);
/// After a cancel or deadline, how long a process has before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// How long a result report is retried while the server is away.
const REPORT_PATIENCE: Duration = Duration::from_secs(120);
/// The first and the longest wait between reports of a batch the server did not take.
const REPORT_RETRY_FIRST: Duration = Duration::from_millis(100);
const REPORT_RETRY_MAX: Duration = Duration::from_secs(5);
/// The first and the longest wait between claims that failed.
const CLAIM_RETRY_FIRST: Duration = Duration::from_millis(200);
const CLAIM_RETRY_MAX: Duration = Duration::from_secs(5);
/// A busy agent claims once a slot in this many is free…
const CLAIM_BATCH_SHARE: usize = 4;
/// …or after this long with fewer free.
const CLAIM_GATHER: Duration = Duration::from_millis(5);
/// Results not yet acknowledged, per slot, counting the running task: a slot's next tasks may
/// run while its last results are reported (measured in BENCHMARKS.md: 2 drained PostgreSQL
/// 1.28× faster than 1, and 4 another 1.2×).
const UNREPORTED_PER_SLOT: usize = 4;
/// The most results one report carries.
const REPORT_BATCH: usize = 500;

/// What the loop needs from the agent.
#[derive(Clone)]
pub(crate) struct WorkConfig {
    pub credentials: Credentials,
    pub executors: Registry,
    pub slots: usize,
    /// Until when the node is alive to the servers, by the heartbeats they answered.
    pub node_until: NodeUntil,
    /// What every task's environment starts from.
    pub inherited: Arc<BTreeMap<String, String>>,
}

/// Until when the servers take the node to be alive: renewed by every answered heartbeat.
/// Past it, they may hand the node's attempts to another node. The lease keeper watches it, so
/// each renewal reaches the attempts' fences at once.
#[derive(Clone)]
pub(crate) struct NodeUntil(Arc<watch::Sender<Instant>>);

impl NodeUntil {
    pub(crate) fn new(until: Instant) -> Self {
        Self(Arc::new(watch::Sender::new(until)))
    }

    pub(crate) fn renew(&self, until: Instant) {
        self.0.send_if_modified(|at| {
            let later = until > *at;
            if later {
                *at = until;
            }
            later
        });
    }

    fn get(&self) -> Instant {
        *self.0.borrow()
    }

    fn watch(&self) -> watch::Receiver<Instant> {
        self.0.subscribe()
    }
}

/// A running attempt, as the lease keeper sees it.
struct Held {
    attempt: u32,
    lease: Duration,
    /// Until when the lease is surely held: the last renewal's sending plus the lease, less
    /// [`lease_margin`].
    lease_until: Instant,
    /// The attempt's deadline (the earlier of the lease's and the node's), as its fence sees it.
    until: watch::Sender<Instant>,
    /// Stops the work.
    stop: CancellationToken,
    /// The server no longer gives this node the attempt: report nothing.
    lost: Arc<AtomicBool>,
}

/// What of a lease the agent does not count on: a tenth, for the stopping itself and for the
/// time the server took to answer.
fn lease_margin(lease: Duration) -> Duration {
    lease / 10
}

type HeldMap = Arc<Mutex<HashMap<String, Held>>>;

fn locked(held: &HeldMap) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
    held.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request with the node's credential and the deadline of a short call.
fn authorized<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(crate::RPC_TIMEOUT);
    if let Ok(value) = format!("Bearer {credential}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Runs until `stop`; running work is stopped then, and not reported.
pub(crate) async fn run(servers: Servers, config: WorkConfig, stop: CancellationToken) {
    let client = WorkServiceClient::new(servers);
    let held: HeldMap = Arc::default();
    let slots = Arc::new(Semaphore::new(config.slots.max(1)));
    // A slot is free again once its task's execution ends, so the next claim overlaps the
    // report of the last results; up to three slots' worth of results wait for the server's
    // answer on top of the tasks running, so that short tasks keep every slot busy while
    // their reports are written, and a server that takes no reports stops the claims.
    let unreported = Arc::new(Semaphore::new(config.slots.max(1) * UNREPORTED_PER_SLOT));
    let keeper = tokio::spawn(keep_leases(
        client.clone(),
        config.credentials.clone(),
        config.node_until.clone(),
        held.clone(),
        stop.clone(),
    ));
    let reporter = Reporter::spawn(client.clone(), config.credentials.clone());
    let executors = config.executors.names();
    let mut retries = crate::backoff(CLAIM_RETRY_FIRST, CLAIM_RETRY_MAX);
    loop {
        // Wait for at least one free slot, then ask for as many tasks as there are free slots.
        let first = tokio::select! {
            permits = both(&slots, &unreported) => match permits { Some(p) => p, None => break },
            () = stop.cancelled() => break,
        };
        let room = || {
            slots
                .available_permits()
                .min(unreported.available_permits())
        };
        let mut permits = vec![first];
        // A busy agent waits a moment for more room, so that it claims in batches rather than
        // one task for each slot freed.
        let batch = (config.slots / CLAIM_BATCH_SHARE).max(1);
        if permits.len() + room() < batch {
            let gather = async {
                while permits.len() + room() < batch {
                    match both(&slots, &unreported).await {
                        Some(p) => permits.push(p),
                        None => break,
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::timeout(CLAIM_GATHER, gather) => {}
                () = stop.cancelled() => break,
            }
        }
        let free = permits.len() + room();
        let mut request = authorized(
            pb::ClaimTasksRequest {
                node_id: config.credentials.node_id.clone(),
                executors: executors.clone(),
                max_tasks: u32::try_from(free).unwrap_or(1000).min(1000),
                wait_ms: u32::try_from(CLAIM_WAIT.as_millis()).unwrap_or(30_000),
            },
            &config.credentials.credential,
        );
        // The long poll answers within CLAIM_WAIT; its deadline leaves room for the answer.
        request.set_timeout(CLAIM_WAIT + crate::RPC_TIMEOUT);
        let mut claim_client = client.clone();
        let response = tokio::select! {
            response = claim_client.claim_tasks(request) => response,
            () = stop.cancelled() => break,
        };
        let tasks = match response {
            Ok(response) => {
                retries = crate::backoff(CLAIM_RETRY_FIRST, CLAIM_RETRY_MAX);
                response.into_inner().tasks
            }
            Err(status) if matches!(status.code(), Code::Unauthenticated | Code::NotFound) => {
                tracing::warn!(
                    error = status.message(),
                    "the server no longer accepts this node's credential; the work loop waits for a new registration"
                );
                break;
            }
            Err(status) => {
                let wait = crate::next_wait(&mut retries, CLAIM_RETRY_MAX);
                tracing::warn!(code = ?status.code(), error = status.message(), retry_in = ?wait, "claiming work failed");
                drop(permits);
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        for task in tasks {
            // The server never gives more than asked; should it, the task waits for a slot.
            let (slot, unreported) = match permits.pop() {
                Some(p) => p,
                None => match both(&slots, &unreported).await {
                    Some(p) => p,
                    None => break,
                },
            };
            let client = client.clone();
            let reporter = reporter.clone();
            let config = config.clone();
            let held = held.clone();
            let stop = stop.clone();
            // The task's span continues the trace of the request that created it.
            let span = tracing::info_span!(
                "task",
                job_id = %task.job_id,
                task_id = %task.task_id,
                attempt = task.attempt,
                executor = %task.executor,
            );
            if !task.traceparent.is_empty() {
                orchion_otel::continue_trace(&span, &task.traceparent);
            }
            tokio::spawn(
                async move {
                    run_task(client, reporter, config, task, held, slot, stop).await;
                    drop(unreported);
                }
                .instrument(span),
            );
        }
    }
    // Stop everything still running; the server retries it once this node leaves.
    for held in locked(&held).values() {
        held.stop.cancel();
    }
    keeper.abort();
}

/// A free slot and room for one more unreported result, or `None` once the loop is closing.
async fn both(
    slots: &Arc<Semaphore>,
    unreported: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    let unreported = unreported.clone().acquire_owned().await.ok()?;
    Some((slot, unreported))
}

/// Extends the leases of running attempts at a third of the shortest lease; stops work whose
/// lease is lost or whose job was cancelled.
async fn keep_leases(
    mut client: WorkServiceClient<Servers>,
    credentials: Credentials,
    node_until: NodeUntil,
    held: HeldMap,
    stop: CancellationToken,
) {
    let mut renewed = node_until.watch();
    loop {
        let (leases, shortest) = {
            let held = locked(&held);
            let leases: Vec<pb::Lease> = held
                .iter()
                .map(|(task_id, h)| pb::Lease {
                    task_id: task_id.clone(),
                    attempt: h.attempt,
                })
                .collect();
            let shortest = held.values().map(|h| h.lease).min();
            (leases, shortest)
        };
        let every = shortest
            .map_or(Duration::from_millis(500), |l| l / 3)
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
        let sent = Instant::now();
        if !leases.is_empty() {
            let request = authorized(
                pb::ExtendLeasesRequest {
                    node_id: credentials.node_id.clone(),
                    leases,
                },
                &credentials.credential,
            );
            match client.extend_leases(request).await {
                Ok(response) => {
                    let mut held = locked(&held);
                    for status in response.into_inner().leases {
                        if let Some(h) = held.get_mut(&status.task_id) {
                            if !status.held {
                                tracing::warn!(task_id = %status.task_id, attempt = status.attempt, "lease lost: stopping the work");
                                h.lost.store(true, Ordering::SeqCst);
                                h.stop.cancel();
                            } else if status.cancel_requested {
                                h.stop.cancel();
                            }
                            if status.held {
                                h.lease_until = sent + h.lease - lease_margin(h.lease);
                            }
                        }
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), error = status.message(), "extending leases failed");
                }
            }
        }
        fence(&held, node_until.get());
        // Until the next extension, every heartbeat answered moves the fences on.
        let next = tokio::time::sleep(every);
        tokio::pin!(next);
        loop {
            tokio::select! {
                () = &mut next => break,
                changed = renewed.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    fence(&held, node_until.get());
                }
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Moves each attempt's deadline to the earlier of its lease's and the node's; an attempt past
/// it is stopped and not reported, since the server may already have handed it on. Its fence
/// kills its processes at the same deadline even if this agent cannot (stopped, killed).
fn fence(held: &HeldMap, node_until: Instant) {
    let now = Instant::now();
    for (task_id, h) in locked(held).iter() {
        let until = h.lease_until.min(node_until);
        h.until.send_if_modified(|at| {
            let changed = *at != until;
            *at = until;
            changed
        });
        if until <= now && !h.lost.swap(true, Ordering::SeqCst) {
            tracing::warn!(%task_id, attempt = h.attempt, "the lease could not be renewed in time: stopping the work");
            h.stop.cancel();
        }
    }
}

async fn run_task(
    client: WorkServiceClient<Servers>,
    reporter: Reporter,
    config: WorkConfig,
    task: pb::TaskAssignment,
    held: HeldMap,
    slot: OwnedSemaphorePermit,
    agent_stop: CancellationToken,
) {
    let stop = agent_stop.child_token();
    let lost = Arc::new(AtomicBool::new(false));
    let lease = Duration::from_millis(task.lease_ms.max(100));
    // The lease was granted before its answer arrived: counted from now, less the margin.
    let lease_until = Instant::now() + lease - lease_margin(lease);
    let (until, fence_until) = watch::channel(lease_until.min(config.node_until.get()));
    locked(&held).insert(
        task.task_id.clone(),
        Held {
            attempt: task.attempt,
            lease,
            lease_until,
            until,
            stop: stop.clone(),
            lost: lost.clone(),
        },
    );
    tracing::info!(job_id = %task.job_id, attempt = task.attempt, executor = %task.executor, "running task");
    // The secrets' values go into the spec here and nowhere else; whatever the task reports is
    // masked of them.
    let masker = Arc::new(Masker::new(task.secrets.values().map(String::as_str)));
    let spec = if task.refused.is_empty() {
        let values: BTreeMap<String, String> = task.secrets.clone().into_iter().collect();
        orchion_spec::resolve_secrets(&task.executor, &task.spec, &values)
    } else {
        Err(task.refused.clone())
    };
    let (output, lines) = mpsc::channel(1024);
    let shipper = tokio::spawn(ship_logs(
        client.clone(),
        config.credentials.clone(),
        Attempt {
            task_id: task.task_id.clone(),
            number: task.attempt,
            masker: masker.clone(),
        },
        lines,
        stop.clone(),
        lost.clone(),
    ));
    let mut env: BTreeMap<String, String> = [
        ("ORCHION_JOB_ID", task.job_id.clone()),
        ("ORCHION_TASK_ID", task.task_id.clone()),
        ("ORCHION_ATTEMPT", task.attempt.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // The task's own span when traces are exported, else the trace it was created in.
    if let Some(parent) = orchion_otel::traceparent()
        .or_else(|| (!task.traceparent.is_empty()).then(|| task.traceparent.clone()))
    {
        env.insert("TRACEPARENT".into(), parent);
    }
    let context = Context {
        output,
        cancel: stop.clone(),
        deadline: (task.start_to_close_ms > 0)
            .then(|| Duration::from_millis(task.start_to_close_ms)),
        inherited: config.inherited.clone(),
        env,
        egress: orchion_executor::Egress::allowing(&task.egress_allow),
        kill_grace: KILL_GRACE,
        fence: Some(fence_until),
        leaving: agent_stop.clone(),
    };
    let runnable = match (config.executors.get(&task.executor), spec) {
        (Some(executor), Ok(spec)) => Ok((executor, spec)),
        (Some(_), Err(error)) => Err(error),
        (None, _) => Err(format!(
            "this agent does not offer executor `{}`",
            task.executor
        )),
    };
    let outcome = match runnable {
        Ok((executor, spec)) => executor.run(&spec, context).await,
        Err(error) => {
            // Its output sender goes with it, so the log shipper ends.
            drop(context);
            Outcome::Failed {
                exit_code: None,
                error,
                output: None,
            }
        }
    };
    let outcome = masked(outcome, &masker);
    let _ = shipper.await;
    locked(&held).remove(&task.task_id);
    drop(slot);
    if lost.load(Ordering::SeqCst) || agent_stop.is_cancelled() {
        return;
    }
    reporter.report(&task, outcome).await;
}

/// The attempt whose lines are shipped, and the values masked out of them.
struct Attempt {
    task_id: String,
    number: u32,
    masker: Arc<Masker>,
}

/// Sends output lines in batches until the execution drops its sender. A refusal
/// (FAILED_PRECONDITION) means the lease is gone: the work is stopped.
async fn ship_logs(
    mut client: WorkServiceClient<Servers>,
    credentials: Credentials,
    attempt: Attempt,
    mut lines: mpsc::Receiver<OutputLine>,
    stop: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    let mut batch: Vec<pb::LogLine> = Vec::new();
    let mut open = true;
    while open {
        let flush_at = tokio::time::sleep(LOG_FLUSH);
        tokio::pin!(flush_at);
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(line) => {
                        batch.push(pb::LogLine {
                            stream: line.stream.to_owned(),
                            line: attempt.masker.text(line.line),
                            at: Some(prost_types::Timestamp {
                                seconds: line.at.unix_timestamp(),
                                nanos: i32::try_from(line.at.nanosecond()).unwrap_or(0),
                            }),
                        });
                        if batch.len() >= LOG_BATCH {
                            break;
                        }
                    }
                    None => {
                        open = false;
                        break;
                    }
                },
                () = &mut flush_at => break,
            }
        }
        if batch.is_empty() || lost.load(Ordering::SeqCst) {
            batch.clear();
            continue;
        }
        let request = authorized(
            pb::AppendLogsRequest {
                node_id: credentials.node_id.clone(),
                task_id: attempt.task_id.clone(),
                attempt: attempt.number,
                lines: std::mem::take(&mut batch),
            },
            &credentials.credential,
        );
        if let Err(status) = client.append_logs(request).await {
            if status.code() == Code::FailedPrecondition {
                lost.store(true, Ordering::SeqCst);
                stop.cancel();
            } else {
                tracing::warn!(code = ?status.code(), error = status.message(), "sending log lines failed; they are dropped");
            }
        }
    }
}

/// `outcome` with the task's secret values masked in its output, outputs and error.
fn masked(outcome: Outcome, masker: &Masker) -> Outcome {
    if masker.is_empty() {
        return outcome;
    }
    match outcome {
        Outcome::Succeeded { output, outputs } => Outcome::Succeeded {
            output: output.map(|o| masker.text(o)),
            outputs: outputs.map(|o| masker.json(o)),
        },
        Outcome::Failed {
            exit_code,
            error,
            output,
        } => Outcome::Failed {
            exit_code,
            error: masker.text(error),
            output: output.map(|o| masker.text(o)),
        },
        other => other,
    }
}

/// A finished attempt waiting to be reported.
struct Finished {
    job_id: String,
    result: pb::TaskResult,
    /// Told once the result is delivered, refused, or given up on.
    done: oneshot::Sender<()>,
}

/// Reports results in batches: whatever finished while the previous call was in flight goes in
/// the next call, so a busy agent makes one call for many results and an idle one reports each
/// at once.
#[derive(Clone)]
struct Reporter {
    tx: mpsc::UnboundedSender<Finished>,
}

impl Reporter {
    /// Starts the sending task; it ends when every clone of the reporter is dropped.
    fn spawn(client: WorkServiceClient<Servers>, credentials: Credentials) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
        tokio::spawn(async move {
            let mut client = client;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < REPORT_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                deliver(&mut client, &credentials, batch).await;
            }
        });
        Self { tx }
    }

    /// Reports how `task` ended, and returns once the server has it (or refused it, or the
    /// agent gave up).
    async fn report(&self, task: &pb::TaskAssignment, outcome: Outcome) {
        let (kind, exit_code, error, output, outputs) = match outcome {
            Outcome::Succeeded { output, outputs } => (
                pb::TaskOutcome::Succeeded,
                None,
                String::new(),
                output,
                outputs,
            ),
            Outcome::Failed {
                exit_code,
                error,
                output,
            } => (pb::TaskOutcome::Failed, exit_code, error, output, None),
            Outcome::Cancelled => (pb::TaskOutcome::Cancelled, None, String::new(), None, None),
            Outcome::TimedOut => (pb::TaskOutcome::TimedOut, None, String::new(), None, None),
        };
        let (done, delivered) = oneshot::channel();
        let finished = Finished {
            job_id: task.job_id.clone(),
            result: pb::TaskResult {
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                outcome: kind.into(),
                exit_code,
                error,
                output,
                outputs,
            },
            done,
        };
        if self.tx.send(finished).is_ok() {
            let _ = delivered.await;
        }
    }
}

/// Sends one batch of results, retrying the whole call while the server is unreachable. A
/// result the server refuses is final (the attempt is no longer ours); one the agent gives up on
/// is retried by the server once its lease runs out.
async fn deliver(
    client: &mut WorkServiceClient<Servers>,
    credentials: &Credentials,
    batch: Vec<Finished>,
) {
    let request = pb::CompleteTasksRequest {
        node_id: credentials.node_id.clone(),
        results: batch.iter().map(|f| f.result.clone()).collect(),
    };
    let deadline = tokio::time::Instant::now() + REPORT_PATIENCE;
    let mut waits = crate::backoff(REPORT_RETRY_FIRST, REPORT_RETRY_MAX);
    loop {
        match client
            .complete_tasks(authorized(request.clone(), &credentials.credential))
            .await
        {
            Ok(response) => {
                for (finished, ack) in batch.iter().zip(response.into_inner().results) {
                    if ack.refused.is_empty() {
                        tracing::info!(job_id = %finished.job_id, attempt = ack.attempt, status = %ack.job_status, "task reported");
                    } else {
                        tracing::warn!(job_id = %finished.job_id, error = %ack.refused, "the server refused the result: the attempt is no longer ours");
                    }
                }
                break;
            }
            Err(status)
                if status.code() != Code::InvalidArgument
                    && tokio::time::Instant::now() < deadline =>
            {
                let wait = crate::next_wait(&mut waits, REPORT_RETRY_MAX);
                tracing::warn!(code = ?status.code(), error = status.message(), results = batch.len(), retry_in = ?wait, "reporting results failed");
                tokio::time::sleep(wait).await;
            }
            Err(status) => {
                tracing::error!(code = ?status.code(), error = status.message(), results = batch.len(), "giving up reporting results; their leases will expire and the jobs be retried");
                break;
            }
        }
    }
    for finished in batch {
        let _ = finished.done.send(());
    }
}

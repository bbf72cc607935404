//! The work queue: agents claim tasks through it, report through it, and it reaps attempts whose
//! lease ran out or whose node was lost.
//!
//! Waiting agents are woken at once when work may have appeared — a job enqueued or retried, a
//! task finished (freeing capacity or a concurrency slot) — through one `Notify`. A delayed task
//! is picked up when its time comes: a waiting claim sleeps no longer than until the earliest
//! `run_after`.
//!
//! Invariants: every report is authenticated with the node's credential and fenced by the store;
//! a node that is not alive, or is draining, is given no work.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use orchion_domain::{
    AttemptOutcome, AuditEntry, Job, Liveness, NewJob, NodeId, NodeStatus, RunId, TaskId,
};
use orchion_store::{
    AttemptReport, Backend, ClaimRequest, ClaimedTask, Completed, Created, Heard, IdempotencyKey,
    JobIntake, LeaseState, NewLogLine, Signal, Store, StoreError,
};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::background::{Cause, Reconciler};
use crate::{NodeRegistry, RegistryError, batch::Batcher};

/// Executors whose work runs outside the agent (a Kubernetes Job): when their agent leaves,
/// its attempts are released rather than lost, and the next claim for the executor adopts
/// them — the same attempt, following the same work — so a server's rolling restart neither
/// starts that work again nor spends an attempt of its retries.
pub const ADOPTABLE_EXECUTORS: &[&str] = &["kubernetes"];

/// The most writes one transaction takes.
const BATCH: usize = 256;

/// The longest a claim waits.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(60);
/// How often leases are checked.
pub const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// A waiting claim looks again at least this often, whatever woke it or not: a safety net.
/// Work enqueued through this replica wakes claims at once, and through another replica (on
/// PostgreSQL) by its `Work` signal.
const RECHECK: Duration = Duration::from_secs(5);

/// What can go wrong in a work call.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error(transparent)]
    Node(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How an attempt ended, as its node reports it.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub task: TaskId,
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    pub output: Option<String>,
    /// A JSON object, for later workflow steps.
    pub outputs: Option<String>,
}

/// Hands out work and takes results.
pub struct WorkQueue {
    store: Arc<dyn Store>,
    nodes: Arc<NodeRegistry>,
    wake: Notify,
    /// Group commit for new jobs and for results.
    intake: Batcher<JobIntake, Created<Job>>,
    results: Batcher<AttemptReport, Completed>,
    /// Runs one of whose workflow steps just finished, each once: the workflow engine moves
    /// them on ([`WorkQueue::take_finished_runs`]).
    finished_runs: std::sync::Mutex<HashMap<RunId, Vec<TaskId>>>,
    /// The reaper lost attempts since the engine last asked: some runs may have moved.
    reaped: std::sync::atomic::AtomicBool,
    /// Rung when a run joins `finished_runs`, or the reaper lost attempts.
    steps_finished: Notify,
    /// The batchers' writer tasks (and the signal sender), joined at shutdown.
    writers: TaskTracker,
    /// Tells the other replicas when work changed; `None` without replicas (SQLite).
    outbox: Option<mpsc::UnboundedSender<Signal>>,
    /// Cancelled at shutdown: waiting claims return at once, and the batchers stop.
    closing: CancellationToken,
    /// The task whose log this replica just appended to, for those following it.
    logs_appended: broadcast::Sender<TaskId>,
}

impl WorkQueue {
    /// A queue over `store`. Starts its writer tasks, so call it inside a Tokio runtime.
    pub fn new(store: Arc<dyn Store>, nodes: Arc<NodeRegistry>) -> Self {
        let (writers, closing) = (TaskTracker::new(), CancellationToken::new());
        let intake = {
            let store = store.clone();
            Batcher::spawn(BATCH, &writers, closing.clone(), move |jobs| {
                let store = store.clone();
                async move {
                    let started = std::time::Instant::now();
                    let created = store.create_jobs(jobs).await;
                    orchion_metrics::metrics().store_op("create_jobs", started);
                    created
                }
            })
        };
        let results = {
            let store = store.clone();
            Batcher::spawn(BATCH, &writers, closing.clone(), move |reports| {
                let store = store.clone();
                async move {
                    let started = std::time::Instant::now();
                    let completed = store.complete_attempts(reports).await;
                    orchion_metrics::metrics().store_op("complete_attempts", started);
                    completed
                }
            })
        };
        let outbox = (store.backend() == Backend::Postgres).then(|| {
            let (outbox, signals) = mpsc::unbounded_channel();
            writers.spawn(send_signals(store.clone(), signals, closing.clone()));
            outbox
        });
        Self {
            store,
            nodes,
            intake,
            results,
            outbox,
            finished_runs: std::sync::Mutex::new(HashMap::new()),
            reaped: std::sync::atomic::AtomicBool::new(false),
            steps_finished: Notify::new(),
            wake: Notify::new(),
            writers,
            closing,
            logs_appended: broadcast::channel(1024).0,
        }
    }

    /// The tasks this replica appends log lines to, from now on (lines other replicas append
    /// are not told of).
    pub fn logs_appended(&self) -> broadcast::Receiver<TaskId> {
        self.logs_appended.subscribe()
    }

    /// The runs one of whose workflow steps finished since the last call, each once, with
    /// those steps' tasks.
    pub fn take_finished_runs(&self) -> HashMap<RunId, Vec<TaskId>> {
        std::mem::take(
            &mut *self
                .finished_runs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Whether the reaper lost attempts since the last call (their runs are not named).
    pub fn take_reaped(&self) -> bool {
        self.reaped.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Rung (`notify_one`) when a run joins [`WorkQueue::take_finished_runs`], or the reaper
    /// lost attempts.
    pub fn steps_finished(&self) -> &Notify {
        &self.steps_finished
    }

    /// Wakes every waiting claim, here and on the other replicas: work may have appeared.
    pub fn work_changed(&self) {
        self.wake.notify_waiters();
        self.tell_others(Signal::Work);
    }

    /// Tells the other replicas (if any) of `signal`, after the change was committed.
    pub(crate) fn tell_others(&self, signal: Signal) {
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(signal);
        }
    }

    /// Something another replica did: work it changed wakes the claims waiting here.
    pub fn heard(&self, heard: Heard) {
        match heard {
            Heard::Signal(Signal::Work) | Heard::Missed => self.wake.notify_waiters(),
            Heard::Signal(
                Signal::Events | Signal::Schedules | Signal::Tokens | Signal::Secrets,
            ) => {}
        }
    }

    /// Cancels a job: at once when queued; a running attempt hears of it at its next lease
    /// extension.
    pub async fn cancel(&self, id: RunId) -> Result<Job, StoreError> {
        self.store.cancel_job(id).await
    }

    /// Queues a failed or cancelled job again, and wakes waiting agents.
    pub async fn retry(&self, id: RunId) -> Result<Job, StoreError> {
        let job = self.store.retry_job(id).await?;
        self.work_changed();
        Ok(job)
    }

    /// Enqueues a job (with others waiting, in one transaction) and wakes waiting agents.
    pub async fn enqueue(
        &self,
        job: NewJob,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<Job>, StoreError> {
        self.enqueue_audited(job, idempotency, None).await
    }

    /// Enqueues a job with the audit entry of the request that made it, appended in the job's
    /// own transaction when the job is created now (`created`); nothing is appended otherwise.
    pub async fn enqueue_audited(
        &self,
        job: NewJob,
        idempotency: Option<IdempotencyKey>,
        audit: Option<std::sync::Arc<AuditEntry>>,
    ) -> Result<Created<Job>, StoreError> {
        let created = self
            .intake
            .submit(JobIntake {
                job,
                idempotency,
                audit,
            })
            .await?;
        if created.created {
            self.work_changed();
        }
        Ok(created)
    }

    /// Enqueues several jobs, queued together so they share transactions, and wakes waiting
    /// agents once. Each job is accepted or refused on its own; the results are in order.
    pub async fn enqueue_all(
        &self,
        jobs: Vec<(NewJob, Option<IdempotencyKey>)>,
    ) -> Vec<Result<Created<Job>, StoreError>> {
        let created = self
            .intake
            .submit_all(
                jobs.into_iter()
                    .map(|(job, idempotency)| JobIntake {
                        job,
                        idempotency,
                        audit: None,
                    })
                    .collect(),
            )
            .await;
        if created.iter().any(|c| c.as_ref().is_ok_and(|c| c.created)) {
            self.work_changed();
        }
        created
    }

    /// Tasks for `node`, waiting up to `wait` for some to appear.
    pub async fn claim(
        &self,
        node_id: NodeId,
        credential: &str,
        executors: Vec<String>,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ClaimedTask>, WorkError> {
        let deadline = Instant::now() + wait.min(MAX_CLAIM_WAIT);
        loop {
            // Registered before looking, so a wake-up between the look and the wait is not lost.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();

            let node = self.nodes.authenticate(node_id, credential).await?;
            if node.liveness == Liveness::Alive && !node.draining {
                let started = std::time::Instant::now();
                let request = ClaimRequest {
                    node_id,
                    executors: executors.clone(),
                    labels: node.labels.clone(),
                    capacity: node.capacity,
                    max,
                    now: orchion_store::now(),
                };
                for executor in ADOPTABLE_EXECUTORS {
                    if executors.iter().any(|e| e == executor) {
                        let adopted = self.store.adopt_released(&request, executor).await?;
                        if !adopted.is_empty() {
                            tracing::info!(node_id = %node_id, tasks = adopted.len(), executor, "released attempts adopted");
                            return Ok(adopted);
                        }
                    }
                }
                let claimed = self.store.claim_tasks(&request).await?;
                let metrics = orchion_metrics::metrics();
                metrics.store_op("claim_tasks", started);
                for task in &claimed {
                    metrics
                        .tasks_claimed
                        .with_label_values(&[task.executor.as_str()])
                        .inc();
                }
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let mut nap = left.min(RECHECK);
            let now = orchion_store::now();
            if let Some(due) = self.store.next_run_after(now).await? {
                let until = (due - now).max(time::Duration::ZERO);
                nap = nap.min(Duration::try_from(until).unwrap_or(nap));
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(nap) => {}
                () = self.closing.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Extends the leases `node` holds.
    pub async fn extend(
        &self,
        node: NodeId,
        credential: &str,
        leases: &[(TaskId, u32)],
    ) -> Result<Vec<LeaseState>, WorkError> {
        self.nodes.authenticate(node, credential).await?;
        Ok(self.store.extend_leases(node, leases).await?)
    }

    /// Appends log lines of an attempt `node` holds.
    pub async fn append_logs(
        &self,
        node: NodeId,
        credential: &str,
        task: TaskId,
        attempt: u32,
        lines: &[NewLogLine],
    ) -> Result<(), WorkError> {
        self.nodes.authenticate(node, credential).await?;
        self.store.append_logs(node, task, attempt, lines).await?;
        // Nobody following is fine.
        let _ = self.logs_appended.send(task);
        Ok(())
    }

    /// Records how attempts ended (sharing transactions with other reports), and wakes waiting
    /// claims, since capacity was freed. Each result is judged on its own: a stale one gets
    /// [`StoreError::Stale`] and does not affect the others.
    pub async fn complete(
        &self,
        node: NodeId,
        credential: &str,
        results: Vec<AttemptResult>,
    ) -> Result<Vec<Result<Completed, StoreError>>, WorkError> {
        self.nodes.authenticate(node, credential).await?;
        let outcomes: Vec<&'static str> = results
            .iter()
            .map(|r| orchion_domain::AttemptStatus::of(&r.outcome).as_str())
            .collect();
        let tasks: Vec<TaskId> = results.iter().map(|r| r.task).collect();
        let reports = results
            .into_iter()
            .map(|r| AttemptReport {
                node,
                task: r.task,
                attempt: r.attempt,
                outcome: r.outcome,
                output: r.output,
                outputs: r.outputs,
            })
            .collect();
        let statuses = self.results.submit_all(reports).await;
        let attempts = &orchion_metrics::metrics().attempts;
        for (outcome, status) in outcomes.iter().zip(&statuses) {
            if status.is_ok() {
                attempts.with_label_values(&[outcome]).inc();
            }
        }
        let mut finished = statuses
            .iter()
            .zip(tasks)
            .filter_map(|(done, task)| match done {
                Ok(done) if done.workflow && done.status.is_terminal() => Some((done.run_id, task)),
                _ => None,
            })
            .peekable();
        if finished.peek().is_some() {
            let mut runs = self
                .finished_runs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (run, task) in finished {
                runs.entry(run).or_default().push(task);
            }
            drop(runs);
            self.steps_finished.notify_one();
        }
        self.work_changed();
        Ok(statuses)
    }

    /// One reaper pass: attempts whose lease expired, and attempts on nodes that are no longer
    /// alive, are lost (and retried by policy). Idempotent; tests drive it directly.
    pub async fn tick(&self) -> Result<usize, StoreError> {
        let lost = &orchion_metrics::metrics().attempts_lost;
        let expired = self.store.expire_leases(orchion_store::now()).await?;
        lost.with_label_values(&["lease_expired"])
            .inc_by(u64::try_from(expired).unwrap_or(0));
        let mut changed = expired;
        // By the store's record only: a node this replica has not heard of is not lost.
        for (node, status) in self.store.lost_running_nodes().await? {
            let why = match status {
                Some(NodeStatus::Down) => {
                    format!(
                        "the attempt was lost: its node {node} is down (its agent left, or was silent too long)"
                    )
                }
                Some(status) => format!(
                    "the attempt was lost: its node {node} is {status} (no heartbeat reached any \
                     server for more than {:?})",
                    self.nodes.settings().policy.timeout
                ),
                None => format!("the attempt was lost: its node {node} was deleted"),
            };
            let gone = self.store.lose_node_attempts(node, &why).await?;
            lost.with_label_values(&["node_lost"])
                .inc_by(u64::try_from(gone).unwrap_or(0));
            changed += gone;
        }
        if changed > 0 {
            self.work_changed();
            self.reaped
                .store(true, std::sync::atomic::Ordering::Release);
            self.steps_finished.notify_one();
        }
        Ok(changed)
    }
}

/// The lease reaper: every [`REAP_INTERVAL`], attempts whose lease expired or whose node is no
/// longer alive are lost, and retried by policy. When it stops, every waiting claim returns, so
/// the gRPC server can finish.
impl Reconciler for WorkQueue {
    fn name(&self) -> &'static str {
        "reaper"
    }

    fn period(&self) -> Duration {
        REAP_INTERVAL
    }

    async fn reconcile(&self, _: Cause) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let reaped = self.tick().await?;
        if reaped > 0 {
            tracing::info!(tasks = reaped, "lost attempts reaped");
        }
        Ok(reaped)
    }

    async fn stopped(&self) {
        self.closing.cancel();
        self.writers.close();
        self.writers.wait().await;
    }
}

/// Sends the signals queued in `signals` to the other replicas, those queued meanwhile together,
/// until `stop`.
async fn send_signals(
    store: Arc<dyn Store>,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            first = signals.recv() => first,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else {
            return;
        };
        let mut batch = vec![first];
        while let Ok(next) = signals.try_recv() {
            if !batch.contains(&next) {
                batch.push(next);
            }
        }
        if let Err(e) = store.signal(&batch).await {
            // The others still look on their own period; only later.
            tracing::warn!(error = %e, "could not tell the other replicas that work changed");
        }
    }
}

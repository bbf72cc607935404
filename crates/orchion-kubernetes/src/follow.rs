//! Following one Job from creation to its end.
//!
//! Three sources, one loop: the Job's watch (kube-runtime's watcher, which resumes from the last
//! resource version when the connection drops and relists when that version is gone), a poll of
//! the attempt's pods (for what only the pod says: image pull trouble, the container's exit
//! code and reason), and the task's cancellation. The pod's log is streamed by its own task,
//! which resumes after a dropped connection from the last line's timestamp.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{ContainerState, Pod},
    },
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, LogParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use orchion_executor::{Context, MAX_OUTPUT_TAIL, Outcome, OutputLine, cut_line};
use tokio::time::Instant;

use crate::{
    Settings, describe,
    manifest::{Attempt, CONTAINER},
};

/// After the Job ends, how long its log may take to arrive in full.
const LOG_DRAIN: Duration = Duration::from_secs(5);
/// Past the deadline Kubernetes enforces (`activeDeadlineSeconds`), how long before Orchion
/// deletes the Job itself.
const DEADLINE_GRACE: Duration = Duration::from_secs(30);
/// Waiting reasons that will not go away by themselves.
const HOPELESS: &[&str] = &["InvalidImageName", "ErrImageNeverPull"];
/// Waiting reasons that may clear (a registry comes back, a Secret is created), given time.
const TROUBLED: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
];

/// How a Job ended, from its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobEnd {
    Succeeded,
    Failed { reason: String, message: String },
}

/// The end of a Job, if it has ended.
pub(crate) fn job_end(job: &Job) -> Option<JobEnd> {
    let status = job.status.as_ref()?;
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" {
            continue;
        }
        match condition.type_.as_str() {
            "Complete" | "SuccessCriteriaMet" => return Some(JobEnd::Succeeded),
            "Failed" | "FailureTarget" => {
                return Some(JobEnd::Failed {
                    reason: condition.reason.clone().unwrap_or_default(),
                    message: condition.message.clone().unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    if status.succeeded.unwrap_or(0) > 0 {
        return Some(JobEnd::Succeeded);
    }
    None
}

/// What the `main` container of a pod is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Container {
    /// Not created yet; the pod's phase and, when the scheduler says one, why.
    Pending {
        note: String,
    },
    Waiting {
        reason: String,
        message: String,
    },
    Running,
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
    },
}

pub(crate) fn container_of(pod: &Pod) -> Container {
    let status = pod.status.as_ref();
    let state = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.state.as_ref());
    match state {
        Some(ContainerState {
            terminated: Some(t),
            ..
        }) => Container::Terminated {
            exit_code: t.exit_code,
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone().unwrap_or_default(),
        },
        Some(ContainerState {
            running: Some(_), ..
        }) => Container::Running,
        Some(ContainerState {
            waiting: Some(w), ..
        }) if w.reason.is_some() => Container::Waiting {
            reason: w.reason.clone().unwrap_or_default(),
            message: w.message.clone().unwrap_or_default(),
        },
        _ => {
            let phase = status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into());
            let unscheduled = status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|all| {
                    all.iter()
                        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                })
                .map(|c| {
                    format!(
                        ": {} {}",
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default()
                    )
                });
            Container::Pending {
                note: format!("{phase}{}", unscheduled.unwrap_or_default()),
            }
        }
    }
}

/// The last [`MAX_OUTPUT_TAIL`] bytes of the log, which become the task's output.
#[derive(Debug, Default)]
struct Tail(String);

impl Tail {
    fn push(&mut self, line: &str) {
        self.0.push_str(line);
        self.0.push('\n');
        if self.0.len() > MAX_OUTPUT_TAIL {
            let mut cut = self.0.len() - MAX_OUTPUT_TAIL;
            while !self.0.is_char_boundary(cut) {
                cut += 1;
            }
            self.0.drain(..cut);
        }
    }
}

/// One attempt's Job, followed to its end.
pub(crate) struct Follow {
    client: kube::Client,
    image_pull_timeout: Duration,
    poll_interval: Duration,
    attempt: Attempt,
    context: Context,
    tail: Arc<Mutex<Tail>>,
}

/// What the pod poll keeps between looks.
#[derive(Default)]
struct PodWatch {
    /// The last state reported as a system line, so each change is said once.
    said: String,
    /// Since when the container has been unable to start for a reason that may clear.
    troubled_since: Option<Instant>,
    logs: Option<tokio::task::JoinHandle<()>>,
}

impl Follow {
    pub(crate) fn new(
        client: kube::Client,
        settings: &Settings,
        attempt: Attempt,
        context: Context,
    ) -> Self {
        Self {
            client,
            image_pull_timeout: settings.image_pull_timeout,
            poll_interval: settings.poll_interval,
            attempt,
            context,
            tail: Arc::default(),
        }
    }

    /// Creates `job` and follows it; the outcome carries the log's tail as output. A retry
    /// whose predecessor's Job is still there and has not failed adopts that Job instead: the
    /// predecessor was lost with its agent (a server replica that restarted, an agent that
    /// died), not by its work, and the work goes on rather than starting again.
    pub(crate) async fn run(mut self, job: Job) -> Outcome {
        let mut name = job.metadata.name.clone().unwrap_or_default();
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(previous) = self.adoptable(&jobs).await {
            self.say(format!(
                "adopting Job {namespace}/{} of attempt {}, which was lost with its agent and has not failed",
                previous.job_name(),
                previous.attempt
            ))
            .await;
            name = previous.job_name();
            self.attempt = previous;
        } else {
            match self.create(&jobs, &job, &namespace, &name).await {
                Ok(()) => {}
                Err(failed) => return failed,
            }
        }
        self.finish(&jobs, &pods, &name).await
    }

    /// The previous attempt, when its Job is still there and has not failed.
    async fn adoptable(&self, jobs: &Api<Job>) -> Option<Attempt> {
        let number = self.attempt.attempt.checked_sub(1).filter(|n| *n > 0)?;
        let previous = Attempt {
            attempt: number,
            ..self.attempt.clone()
        };
        let found = jobs.get_opt(&previous.job_name()).await.ok()??;
        match job_end(&found) {
            Some(JobEnd::Failed { .. }) => None,
            _ => Some(previous),
        }
    }

    /// Creates `job`; an existing one of the same attempt (made before this agent restarted)
    /// is followed.
    async fn create(
        &self,
        jobs: &Api<Job>,
        job: &Job,
        namespace: &str,
        name: &str,
    ) -> Result<(), Outcome> {
        match jobs.create(&PostParams::default(), job).await {
            Ok(_) => {
                self.say(format!("created Job {namespace}/{name}")).await;
            }
            // The same attempt created it before this agent restarted: follow that one.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.say(format!(
                    "Job {namespace}/{name} exists already; following it"
                ))
                .await;
            }
            Err(e) => {
                return Err(Outcome::Failed {
                    exit_code: None,
                    error: format!("cannot create Job {namespace}/{name}: {}", describe(&e)),
                    output: None,
                });
            }
        }
        Ok(())
    }

    /// Follows the Job `name` to its end.
    async fn finish(&self, jobs: &Api<Job>, pods: &Api<Pod>, name: &str) -> Outcome {
        let mut pod_watch = PodWatch::default();
        let outcome = self.follow(jobs, pods, name, &mut pod_watch).await;
        if let Some(logs) = pod_watch.logs.take() {
            let abort = logs.abort_handle();
            if tokio::time::timeout(LOG_DRAIN, logs).await.is_err() {
                abort.abort();
            }
        }
        let tail = std::mem::take(&mut self.tail.lock().unwrap_or_else(|p| p.into_inner()).0);
        let tail = (!tail.is_empty()).then_some(tail);
        match outcome {
            Outcome::Succeeded { outputs, .. } => Outcome::Succeeded {
                output: tail,
                outputs,
            },
            Outcome::Failed {
                exit_code, error, ..
            } => Outcome::Failed {
                exit_code,
                error,
                output: tail,
            },
            other => other,
        }
    }

    async fn follow(
        &self,
        jobs: &Api<Job>,
        pods: &Api<Pod>,
        name: &str,
        pod_watch: &mut PodWatch,
    ) -> Outcome {
        let failed = |error: String| Outcome::Failed {
            exit_code: None,
            error,
            output: None,
        };
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher(jobs.clone(), config).default_backoff().boxed();
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let backstop = async {
            match self.context.deadline {
                Some(deadline) => tokio::time::sleep(deadline + DEADLINE_GRACE).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(backstop);
        let mut listed_it = false;
        let mut watch_failing = false;
        loop {
            tokio::select! {
                biased;
                () = self.context.cancel.cancelled() => {
                    if self.context.leaving.is_cancelled() {
                        // The agent is going (its server replica stops): the Job runs on, and
                        // the attempt that follows this lost one adopts it.
                        self.say(format!("the agent is leaving; Job {name} runs on for the next attempt to adopt")).await;
                        return Outcome::Cancelled;
                    }
                    self.delete(jobs, name, "the task was cancelled").await;
                    return Outcome::Cancelled;
                }
                () = &mut backstop => {
                    self.delete(jobs, name, "the task's deadline passed").await;
                    return Outcome::TimedOut;
                }
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job))) => {
                        listed_it = true;
                        if watch_failing {
                            watch_failing = false;
                            self.say("the watch on the Job is back".into()).await;
                        }
                        if let Some(end) = job_end(&job) {
                            return self.conclude(end, pods, pod_watch).await;
                        }
                    }
                    Some(Ok(watcher::Event::Init)) => listed_it = false,
                    Some(Ok(watcher::Event::InitDone)) if !listed_it => {
                        return failed(format!("Job {name} is gone: it was deleted outside Orchion while it ran"));
                    }
                    Some(Ok(watcher::Event::InitDone)) => {}
                    Some(Ok(watcher::Event::Delete(_))) => {
                        return failed(format!("Job {name} was deleted outside Orchion while it ran"));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(job = name, error = %e, "watching the Job failed; retrying");
                        if !watch_failing {
                            watch_failing = true;
                            self.say(format!("watching the Job failed ({e}); retrying")).await;
                        }
                    }
                    None => return failed("the watch on the Job ended".into()),
                },
                _ = poll.tick() => {
                    if let Some(outcome) = self.look_at_pods(pods, pod_watch).await {
                        self.delete(jobs, name, "its pod cannot start").await;
                        return outcome;
                    }
                }
            }
        }
    }

    /// Reports changes of the pod, starts its log, and fails the attempt when the pod cannot
    /// start.
    async fn look_at_pods(&self, pods: &Api<Pod>, pod_watch: &mut PodWatch) -> Option<Outcome> {
        let listed = pods
            .list(&ListParams::default().labels(&self.attempt.selector()))
            .await;
        let pod = match listed {
            Ok(list) => list
                .items
                .into_iter()
                .max_by_key(|p| p.metadata.creation_timestamp.clone())?,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the attempt's pods");
                return None;
            }
        };
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let container = container_of(&pod);
        let said = match &container {
            Container::Pending { note } => format!("pod {pod_name}: {note}"),
            Container::Waiting { reason, message } => {
                format!("pod {pod_name}: waiting: {reason} {message}")
            }
            Container::Running => format!("pod {pod_name}: running"),
            Container::Terminated { .. } => String::new(),
        };
        if !said.is_empty() && said != pod_watch.said {
            self.say(said.trim_end().to_owned()).await;
            pod_watch.said = said;
        }
        match &container {
            Container::Waiting { reason, message } if HOPELESS.contains(&reason.as_str()) => {
                return Some(Outcome::Failed {
                    exit_code: None,
                    error: format!("the pod cannot start: {reason}: {message}"),
                    output: None,
                });
            }
            Container::Waiting { reason, message } if TROUBLED.contains(&reason.as_str()) => {
                let since = *pod_watch.troubled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.image_pull_timeout {
                    return Some(Outcome::Failed {
                        exit_code: None,
                        error: format!(
                            "the pod could not start within {}: {reason}: {message}",
                            humantime::format_duration(self.image_pull_timeout)
                        ),
                        output: None,
                    });
                }
            }
            Container::Running | Container::Terminated { .. } => {
                pod_watch.troubled_since = None;
                if pod_watch.logs.is_none() {
                    pod_watch.logs = Some(self.stream_logs(pods.clone(), pod_name));
                }
            }
            _ => pod_watch.troubled_since = None,
        }
        None
    }

    /// The outcome of a Job that ended, with what its pod says.
    async fn conclude(&self, end: JobEnd, pods: &Api<Pod>, pod_watch: &mut PodWatch) -> Outcome {
        let pod = pods
            .list(&ListParams::default().labels(&self.attempt.selector()))
            .await
            .ok()
            .and_then(|list| {
                list.items
                    .into_iter()
                    .max_by_key(|p| p.metadata.creation_timestamp.clone())
            });
        if let (Some(pod), None) = (&pod, &pod_watch.logs) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            pod_watch.logs = Some(self.stream_logs(pods.clone(), name));
        }
        match end {
            JobEnd::Succeeded => Outcome::Succeeded {
                output: None,
                outputs: None,
            },
            JobEnd::Failed { reason, message } if reason == "DeadlineExceeded" => {
                self.say(format!("the Job passed its deadline: {message}"))
                    .await;
                Outcome::TimedOut
            }
            JobEnd::Failed { reason, message } => match pod.as_ref().map(container_of) {
                Some(Container::Terminated {
                    exit_code,
                    reason: why,
                    message: said,
                }) => {
                    let error = if why == "OOMKilled" {
                        format!(
                            "the container was killed for using more memory than its limit (OOMKilled, exit code {exit_code})"
                        )
                    } else {
                        let said = if said.is_empty() {
                            String::new()
                        } else {
                            format!(": {said}")
                        };
                        format!("the container exited with code {exit_code} ({why}){said}")
                    };
                    Outcome::Failed {
                        exit_code: Some(exit_code),
                        error,
                        output: None,
                    }
                }
                _ => Outcome::Failed {
                    exit_code: None,
                    error: format!("the Job failed: {reason}: {message}"),
                    output: None,
                },
            },
        }
    }

    /// Deletes the Job and, through foreground propagation, its pods.
    async fn delete(&self, jobs: &Api<Job>, name: &str, why: &str) {
        match jobs.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => self.say(format!("deleted Job {name}: {why}")).await,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                tracing::warn!(job = name, error = %describe(&e), "cannot delete the Job");
                self.say(format!("cannot delete Job {name}: {}", describe(&e)))
                    .await;
            }
        }
    }

    /// Streams the pod's log into the task's output until the container ends.
    fn stream_logs(&self, pods: Api<Pod>, pod: String) -> tokio::task::JoinHandle<()> {
        let mut sink = LogSink {
            output: self.context.output.clone(),
            tail: self.tail.clone(),
            last: None,
            taken: 0,
        };
        tokio::spawn(async move {
            // Once the container has ended, the log is read (without follow) until a read
            // brings nothing new: a dropped connection may have cut the last one short.
            let mut ended = false;
            for _ in 0..1000 {
                let params = LogParams {
                    container: Some(CONTAINER.into()),
                    follow: !ended,
                    timestamps: true,
                    // kube rounds to the second; rounded down, nothing is skipped, and what
                    // is read twice the sink drops.
                    since_time: sink.last.and_then(|at| {
                        at.round(
                            k8s_openapi::jiff::TimestampRound::new()
                                .smallest(k8s_openapi::jiff::Unit::Second)
                                .mode(k8s_openapi::jiff::RoundMode::Trunc),
                        )
                        .ok()
                    }),
                    ..Default::default()
                };
                let before = sink.taken;
                match pods.log_stream(&pod, &params).await {
                    Ok(reader) => {
                        let mut lines = reader.lines();
                        while let Ok(Some(raw)) = lines.try_next().await {
                            if !sink.take(&raw).await {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(pod, error = %e, "cannot read the pod's log"),
                }
                if ended {
                    if sink.taken == before {
                        return;
                    }
                    continue;
                }
                // The log ended: the container ended, or the connection dropped.
                match pods.get(&pod).await {
                    Ok(p) if matches!(container_of(&p), Container::Terminated { .. }) => {
                        ended = true;
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => return,
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    }

    /// A system line in the task's log.
    async fn say(&self, line: String) {
        let _ = self
            .context
            .output
            .send(OutputLine {
                stream: "system",
                line,
                at: time::OffsetDateTime::now_utc(),
            })
            .await;
    }
}

/// Where a pod's log lines go: the task's output and the tail, each line once even when the
/// stream is read again from a timestamp.
struct LogSink {
    output: tokio::sync::mpsc::Sender<OutputLine>,
    tail: Arc<Mutex<Tail>>,
    last: Option<Timestamp>,
    /// Lines taken so far.
    taken: usize,
}

impl LogSink {
    /// Takes one raw line; `false` when the task no longer listens.
    async fn take(&mut self, raw: &str) -> bool {
        let (at, text) = split_timestamp(raw);
        if let (Some(at), Some(seen)) = (at, self.last)
            && at <= seen
        {
            return true;
        }
        self.last = at.or(self.last);
        self.taken += 1;
        let line = cut_line(text.to_owned());
        self.tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(&line);
        let line = OutputLine {
            stream: "stdout",
            line,
            at: time::OffsetDateTime::now_utc(),
        };
        self.output.send(line).await.is_ok()
    }
}

/// A log line as the kubelet sends it with `timestamps=true`: `<RFC 3339 time> <text>`.
fn split_timestamp(raw: &str) -> (Option<Timestamp>, &str) {
    match raw.split_once(' ') {
        Some((at, text)) => match at.parse::<Timestamp>() {
            Ok(at) => (Some(at), text),
            Err(_) => (None, raw),
        },
        None => match raw.parse::<Timestamp>() {
            Ok(at) => (Some(at), ""),
            Err(_) => (None, raw),
        },
    }
}
